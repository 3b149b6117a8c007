"""The run ledger: the source of truth for a run, its frozen plan and every step's outcome.

SQLite by default, any SQLAlchemy URL (PostgreSQL) for shared use. Writes go
through one writer thread that commits in small batches (group commit), so
thousands of device steps do not each pay a transaction. A result counts as
recorded once committed; `flush()` waits for that. Upserts never turn a
succeeded step back into anything else, so a stale or repeated writer cannot
undo finished work. A simulated device change (`stage_sim_effect`) rides with
its step's outcome through the same writer, in the same transaction.

Exactly once, under faults: the process executing a run (or a location, on a
worker) holds a lease with a fencing token (`acquire_lease`), renewed by a small
thread; every step and location write carries the token, and the transaction
that writes it refuses it when the token is no longer the current one. Before a
changing step touches a device its intent is committed (`record_intent`: through
the writer, so the intents of devices changed at the same moment share a commit,
and the caller waits for it); the transaction that records the step's outcome
settles it. A database that cannot
be written (full disk, read-only, corrupted, unreachable) raises `LedgerError`
with one line saying what is wrong; nothing committed before is lost.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.schema import Table

from bigbang.errors import ConfigError, LeaseHeld, LeaseLost, LedgerError
from bigbang.status import LocationStatus, RunStatus, StepStatus
from bigbang.store.schema import (
    events,
    intents,
    leases,
    locations,
    metadata,
    open_intents_index,
    problems,
    run_plans,
    run_schedules,
    runs,
    signoffs,
    sim_effects,
    steps,
)

FINAL = tuple(s.value for s in StepStatus if s.final)
_FINISHED = frozenset(s.value for s in StepStatus if s.finished)
RUNNING_DELAY = 0.5  # seconds a step runs before its running state is written (see _write_loop)
QUEUE_LIMIT = 20000  # queued writes a producer may run ahead of the writer by (bounds memory if the database is slow)
CHECKED_IN = "location.checked_in"
RUN_SCOPE = "run"
SERVERS_SCOPE = "servers"  # the prechecks and server waves: the steps of scope "servers" (one at a time)
LEASE_SECONDS_ENV = "BIGBANG_LEASE_SECONDS"
Fence = tuple[str, str, int]  # (run id, lease scope, fencing token)

# The statements of the hot path, built once: SQLAlchemy then only binds values (building a statement per call
# cost more than running it).
_LEASE_TOKENS = select(leases.c.scope, leases.c.token, leases.c.owner).where(and_(
    leases.c.run_id == bindparam("run_id"), leases.c.scope.in_(bindparam("scopes", expanding=True)))
).order_by(leases.c.scope).with_for_update(read=True)
_SIM_EFFECT = select(sim_effects.c.step_id).where(and_(
    sim_effects.c.run_id == bindparam("run_id"), sim_effects.c.step_id == bindparam("step_id")))
_SIM_EFFECTS_AMONG = select(sim_effects.c.step_id).where(and_(
    sim_effects.c.run_id == bindparam("run_id"), sim_effects.c.step_id.in_(bindparam("step_ids", expanding=True))))
_CLOCK_END = select(func.max(steps.c.clock_end),
                    func.sum(case((steps.c.status == StepStatus.SUCCEEDED.value, 1), else_=0))).where(and_(
    steps.c.run_id == bindparam("run_id"), steps.c.step_id.in_(bindparam("step_ids", expanding=True))))

# The reads each location makes (its verdict, its steps, the run's halt, its sign-off, the lease): built with
# bound parameters, SQLAlchemy finds them in its cache instead of building and keying them again (~0.3 ms a read).
_HALTED = select(runs.c.halted_reason, runs.c.halted_clock).where(runs.c.run_id == bindparam("run_id"))
_LOCATION = select(locations).where(and_(
    locations.c.run_id == bindparam("run_id"), locations.c.location_id == bindparam("location_id")))
_SIGNOFF = select(signoffs).where(and_(
    signoffs.c.run_id == bindparam("run_id"), signoffs.c.location_id == bindparam("location_id")))
_LEASE = select(leases).where(and_(leases.c.run_id == bindparam("run_id"), leases.c.scope == bindparam("scope")))
_OPEN_INTENTS = select(intents.c.step_id, intents.c.attempt).where(and_(
    intents.c.run_id == bindparam("run_id"), intents.c.settled_at.is_(None)))
_STEPS_OF_SCOPE = select(steps).where(and_(steps.c.run_id == bindparam("run_id"), steps.c.scope == bindparam("scope")))
_STEPS_AMONG = select(steps).where(and_(
    steps.c.run_id == bindparam("run_id"), steps.c.step_id.in_(bindparam("step_ids", expanding=True))))

_SETTLE_INTENT = text("UPDATE intents SET settled_at = :settled_at, outcome = :outcome "
                      "WHERE run_id = :run_id AND step_id = :step_id AND settled_at IS NULL")



def _upsert(table: Table, update: tuple[str, ...] = (), where: str = "") -> TextClause:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE/NOTHING, the same text in SQLite and PostgreSQL.

    Written out rather than built with the dialects' `on_conflict_do_update`: SQLAlchemy cannot cache
    those and compiled them again for every batch (most of the writer's time)."""
    names = [c.name for c in table.columns]
    key = ", ".join(c.name for c in table.primary_key.columns)
    action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
              + (f" WHERE {where}" if where else "")) if update else "DO NOTHING"
    sql = (f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
           f"ON CONFLICT ({key}) {action}")
    return text(sql).bindparams(*(bindparam(c.name, type_=c.type) for c in table.columns))


_DRIVER_SQL: dict[tuple[int, str], str] = {}


def _driver_sql(clause: TextClause, dialect_name: str) -> str:
    """A text statement (`_upsert`, `_SETTLE_INTENT`) in the driver's own parameter style (sqlite3 takes
    `:name`, psycopg `%(name)s`)."""
    key = (id(clause), dialect_name)
    sql = _DRIVER_SQL.get(key)
    if sql is None:
        sql = clause.text if dialect_name == "sqlite" else re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", clause.text)
        _DRIVER_SQL[key] = sql
    return sql


def _all_but_key(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if not c.primary_key)


_UPSERT_STEPS = _upsert(steps, _all_but_key(steps), where="steps.status <> 'succeeded'")
_UPSERT_INTENTS = _upsert(intents, _all_but_key(intents))
_UPSERT_LOCATIONS = _upsert(locations, _all_but_key(locations),
                            where=f"locations.status <> '{LocationStatus.SUCCEEDED.value}'")
_INSERT_SIM_EFFECTS = _upsert(sim_effects)
# Compiled once (`on_conflict_do_nothing` statements are compiled again on every call: 1 ms a sign-off).
_SIGN_OFF = text(_upsert(signoffs).text + " RETURNING location_id")


_facts_json = json.JSONEncoder(sort_keys=True, default=str).encode  # one encoder: `dumps` with options builds one per call


class _Commit:
    """A caller waiting for the writer to commit what it queued (intents, a call), and how that ended.

    A bare lock, held until the writer is done: one per changing device, so an `Event` (a Condition, a
    waiter lock and a deque each) cost more than the wait itself."""

    __slots__ = ("_pending", "_released", "error", "result")

    def __init__(self) -> None:
        self._pending = threading.Lock()
        self._pending.acquire()
        self._released = False
        self.error: BaseException | None = None
        self.result: Any = None

    def set(self) -> None:
        """The writer is done with it (once; the writer thread only)."""
        if not self._released:
            self._released = True
            self._pending.release()

    def wait(self, timeout: float) -> bool:
        """True once the writer is done; False after `timeout` seconds (call again to go on waiting)."""
        if self._pending.acquire(timeout=timeout):
            self._pending.release()  # a later wait returns at once
            return True
        return False


def location_scope(location_id: str) -> str:
    return f"location:{location_id}"


def lease_scope(step_scope: str) -> str:
    """The lease that covers writes of a step scope ("servers", or a location id) besides the run's."""
    return SERVERS_SCOPE if step_scope == SERVERS_SCOPE else location_scope(step_scope)


def lease_seconds() -> float:
    """How long a lease lasts without renewal: how long a resume waits for a holder that died elsewhere."""
    text = os.environ.get(LEASE_SECONDS_ENV, "20")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{LEASE_SECONDS_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{LEASE_SECONDS_ENV} must be above 0")
    return value


def default_state_dir() -> Path:
    return Path(os.environ.get("BIGBANG_HOME", ".bigbang"))


def default_ledger_url() -> str:
    return os.environ.get("BIGBANG_LEDGER_URL") or f"sqlite:///{default_state_dir() / 'ledger.db'}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class StepRecord:
    step_id: str
    scope: str
    target: str
    kind: str
    status: StepStatus
    attempts: int = 0
    changed: bool = False
    message: str = ""
    facts: dict[str, Any] | None = None
    started_at: float | None = None  # wall time
    finished_at: float | None = None
    clock_start: float | None = None  # on the run's clock (bigbang.clock)
    clock_end: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def finished(self) -> bool:
        return self.status in _FINISHED


@dataclass(frozen=True)
class Lease:
    """Who executes a run or a location; `token` is the fencing token its writes carry."""

    run_id: str
    scope: str
    owner: str | None
    token: int
    acquired_at: float
    expires_at: float

    def describe(self) -> str:
        what = f"run {self.run_id}" if self.scope == RUN_SCOPE else \
            f"{self.scope.replace(':', ' ', 1)} of run {self.run_id}"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"{what} is being executed by {self.owner} since {since}"


@dataclass(frozen=True)
class FrozenPlan:
    """A run's plan as frozen in the store: the plan and the validated inventory it came from."""

    version: int
    plan: dict[str, Any]
    inventory: dict[str, Any]
    plan_digest: str
    inventory_digest: str
    note: str


class Ledger:
    """Reads and writes one ledger database; safe to share between threads."""

    def __init__(self, url: str | None = None):
        self.url = url or default_ledger_url()
        self.engine = _engine(self.url)
        self.worker = worker_name()
        # SimpleQueue: put and get in C, one per step record on the hot path (queue.Queue's are Python)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._room = threading.Event()  # set while the queue is below QUEUE_LIMIT
        self._room.set()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._lock = threading.RLock()  # re-entrant: a signal handler may flush while its thread is in _put
        self._held: dict[tuple[str, str], tuple[int, float]] = {}  # (run, scope) -> (token, ttl) of our leases
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()
        # Simulated device changes (rehearsals): staged by the connector until the runner records the step's
        # outcome, then queued with it; `_sim_known` holds the ones this ledger queued or found committed.
        self._sim_staged: dict[tuple[str, str], float] = {}
        self._sim_known: set[tuple[str, str]] = set()
        self._sim_lock = threading.Lock()
        # Steps whose intent this ledger committed after looking for their committed change (none found): a
        # change now can only come from this ledger, as only the lease holder runs the step.
        self._sim_checked: set[tuple[str, str]] = set()
        self._sim_used = False  # whether this ledger stages simulated changes at all (rehearsals)
        # (run, step ids) -> their latest end, once every one of them succeeded (a succeeded step never changes)
        self._settled_ends: dict[tuple[str, tuple[str, ...]], float] = {}
        self._ensure_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _ensure_schema(self) -> None:
        for attempt in range(10):
            try:
                metadata.create_all(self.engine)
                open_intents_index.create(self.engine, checkfirst=True)  # a ledger made before it existed
                return
            except (IntegrityError, OperationalError) as exc:
                # Processes creating the schema at once: another made a table between this one's look and its
                # CREATE (CI once saw a third process win the second round too). Look again.
                if ("exists" not in str(exc).lower() and "locked" not in str(exc).lower()) or attempt == 9:
                    raise LedgerError(f"cannot create the ledger schema at {self.safe_url}: {exc}") from exc
                time.sleep(0.02 * (attempt + 1))
            except SQLAlchemyError as exc:
                raise LedgerError(f"cannot open the ledger at {self.safe_url}: {exc.__class__.__name__}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------ runs
    def create_run(self, run_id: str, *, rollout: str, inventory: str, mode: str, options: dict[str, Any],
                   clock: str, plan: dict[str, Any] | str, inventory_data: dict[str, Any] | str, plan_digest: str,
                   inventory_digest: str, schedule: dict[str, Any] | None = None) -> None:
        """Create the run with its frozen plan (version 1) in one transaction: a run never exists without it.
        The plan and the inventory are values or their JSON text (bigbang.plan.frozen_json)."""
        t = now()
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                run_id=run_id, rollout=rollout, inventory=inventory, inventory_digest=inventory_digest,
                plan_digest=plan_digest, mode=mode, options=json.dumps(options, sort_keys=True),
                status=RunStatus.RUNNING, created_at=t, updated_at=t, clock=clock, clock_origin=t,
                pace_clock=0.0, plan_version=1,
            ))
            self._insert_plan(conn, run_id, 1, plan, inventory_data, plan_digest, inventory_digest, "")
            if schedule is not None:
                conn.execute(run_schedules.insert().values(run_id=run_id, schedule=json.dumps(schedule, sort_keys=True),
                                                           saved_at=t))
            conn.execute(events.insert().values(run_id=run_id, at=t, kind="run.created", subject=run_id,
                                                message=f"{mode} of {inventory}"))

    def new_plan_version(self, run_id: str, plan: dict[str, Any], inventory_data: dict[str, Any],
                         plan_digest: str, inventory_digest: str, note: str) -> int:
        """Freeze a changed plan as the run's next version (resume with --accept-inventory-changes)."""
        with self.engine.begin() as conn:
            version = 1 + (conn.execute(select(func.max(run_plans.c.version))
                                        .where(run_plans.c.run_id == run_id)).scalar() or 0)
            self._insert_plan(conn, run_id, version, plan, inventory_data, plan_digest, inventory_digest, note)
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                plan_version=version, plan_digest=plan_digest, inventory_digest=inventory_digest, updated_at=now()))
            conn.execute(events.insert().values(run_id=run_id, at=now(), kind="run.plan_changed", subject=run_id,
                                                message=f"plan version {version}: {note}"))
        return version

    @staticmethod
    def _insert_plan(conn: Any, run_id: str, version: int, plan: dict[str, Any] | str,
                     inventory_data: dict[str, Any] | str, plan_digest: str, inventory_digest: str, note: str) -> None:
        conn.execute(run_plans.insert().values(
            run_id=run_id, version=version, plan_digest=plan_digest, inventory_digest=inventory_digest,
            plan=plan if isinstance(plan, str) else json.dumps(plan, sort_keys=True, default=str),
            inventory=inventory_data if isinstance(inventory_data, str) else json.dumps(inventory_data, default=str),
            created_at=now(), note=note))

    def frozen_plan(self, run_id: str, version: int | None = None) -> FrozenPlan | None:
        """The run's plan as frozen (its latest version unless `version` is given)."""
        query = select(run_plans).where(run_plans.c.run_id == run_id)
        query = (query.where(run_plans.c.version == version) if version is not None
                 else query.order_by(run_plans.c.version.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        plan = json.loads(row["plan"])
        plan.setdefault("inventory_digest", row["inventory_digest"])  # its text leaves out what this column holds
        return FrozenPlan(row["version"], plan, json.loads(row["inventory"]), row["plan_digest"],
                          row["inventory_digest"], row["note"])

    def set_run_schedule(self, run_id: str, schedule: dict[str, Any]) -> None:
        """The run's schedule replaced (a re-plan during the weekend; the plan's next version has its slots)."""
        with self.engine.begin() as conn:
            conn.execute(run_schedules.delete().where(run_schedules.c.run_id == run_id))
            conn.execute(run_schedules.insert().values(run_id=run_id, schedule=json.dumps(schedule, sort_keys=True),
                                                       saved_at=now()))

    def run_schedule(self, run_id: str) -> dict[str, Any] | None:
        """The schedule (`bigbang schedule`) the run started with, if it followed one."""
        with self.engine.connect() as conn:
            text = conn.execute(select(run_schedules.c.schedule).where(run_schedules.c.run_id == run_id)).scalar()
        return json.loads(text) if text else None

    def pace(self, run_id: str, real: float) -> tuple[float, float]:
        """(real time, clock time) that playback counts from: set once by the first unit that starts."""
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(and_(runs.c.run_id == run_id, runs.c.pace_real.is_(None)))
                         .values(pace_real=real))
            row = conn.execute(select(runs.c.pace_real, runs.c.pace_clock).where(runs.c.run_id == run_id)).first()
        if row is None:
            raise LedgerError(f"no run {run_id} in the ledger {self.safe_url}")
        return float(row[0]), float(row[1])

    def clock_end(self, run_id: str, step_ids: Iterable[str]) -> float | None:
        """The latest end on the run's clock among these steps; None if none has ended."""
        ids = tuple(step_ids)
        if not ids:
            return None
        settled = self._settled_ends.get((run_id, ids))
        if settled is not None:
            return settled
        with self.engine.connect() as conn:
            value, succeeded = conn.execute(_CLOCK_END, {"run_id": run_id, "step_ids": list(ids)}).one()
        if value is None:
            return None
        if succeeded == len(set(ids)):  # all succeeded: their ends are final (each location asks this)
            self._settled_ends[(run_id, ids)] = float(value)
        return float(value)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        out["options"] = json.loads(out["options"] or "{}")
        return out

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.created_at.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def set_run_status(self, run_id: str, status: RunStatus, *, halted_reason: str | None = None,
                       finished_at: float | None = None) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": now()}
        if RunStatus(status).finished:
            values["finished_at"] = finished_at or now()
        if halted_reason is not None:
            values["halted_reason"] = halted_reason
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))

    def written_since(self, run_id: str, moment: float) -> bool:
        """Whether any step or location of the run was started or finished after `moment` (wall time)."""
        with self.engine.connect() as conn:
            for table in (steps, locations):
                latest = conn.execute(select(func.max(table.c.started_at), func.max(table.c.finished_at))
                                      .where(table.c.run_id == run_id)).first()
                if latest is not None and any(t is not None and t > moment for t in latest):
                    return True
        return False

    def reopen_run(self, run_id: str, options: dict[str, Any], note: str = "") -> None:
        """A resumed run runs again, with another chance past an earlier halt. Playback counts again from
        where the run's clock got to (set when the first unit starts)."""
        with self.engine.begin() as conn:
            reached = conn.execute(select(func.max(steps.c.clock_end)).where(steps.c.run_id == run_id)).scalar()
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                status=RunStatus.RUNNING, halted_reason=None, halted_clock=None, finished_at=None, updated_at=now(),
                options=json.dumps(options, sort_keys=True), pace_real=None, pace_clock=float(reached or 0.0)))
            conn.execute(events.insert().values(run_id=run_id, at=now(), kind="run.resumed", subject=run_id,
                                                message=note))

    def halt_run(self, run_id: str, reason: str, at: float) -> bool:
        """Mark the run halted once, at `at` on the run's clock; True if this call did it."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs).where(and_(runs.c.run_id == run_id, runs.c.halted_reason.is_(None)))
                .values(halted_reason=reason, halted_clock=at, updated_at=now())
                .returning(runs.c.run_id)
            )
            done = result.first() is not None
            if done:
                conn.execute(events.insert().values(run_id=run_id, at=now(), kind="run.halted",
                                                    subject=run_id, message=reason))
            return done

    def halted_reason(self, run_id: str, by: float | None = None) -> str | None:
        """Why the rollout halted; with `by`, only if it halted at or before that moment on the run's clock."""
        with self.engine.connect() as conn:
            row = conn.execute(_HALTED, {"run_id": run_id}).first()
        if row is None or row[0] is None:
            return None
        if by is not None and row[1] is not None and row[1] > by:
            return None
        return str(row[0])

    def checked_in(self, run_id: str, location_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(events.c.id).where(and_(
                events.c.run_id == run_id, events.c.kind == CHECKED_IN, events.c.subject == location_id,
            )).limit(1)).first() is not None

    def check_in(self, run_id: str, location_id: str, message: str) -> bool:
        """Record a technician's arrival at a location once; False if it was checked in before."""
        with self.engine.begin() as conn:
            if conn.execute(select(events.c.id).where(and_(
                    events.c.run_id == run_id, events.c.kind == CHECKED_IN, events.c.subject == location_id,
            )).limit(1)).first() is not None:
                return False
            conn.execute(events.insert().values(run_id=run_id, at=now(), kind=CHECKED_IN, subject=location_id,
                                                message=message))
        return True

    def add_event(self, run_id: str, kind: str, subject: str = "", message: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(events.insert().values(run_id=run_id, at=now(), kind=kind, subject=subject, message=message))

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(events).where(events.c.run_id == run_id).order_by(events.c.id)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------ leases (who executes a run)
    def lease(self, run_id: str, scope: str = RUN_SCOPE) -> Lease | None:
        with self.engine.connect() as conn:
            row = conn.execute(_LEASE, {"run_id": run_id, "scope": scope}).mappings().first()
        return Lease(**dict(row)) if row else None

    def acquire_lease(self, run_id: str, scope: str = RUN_SCOPE, *, ttl: float | None = None,
                      wait: float = 0.0) -> Lease:
        """Take the lease on a run or location, with the next fencing token; `LeaseHeld` if a live process
        holds it (after waiting up to `wait` seconds for it to expire). A lease is free when released,
        expired, ours, or held by a process of this host that no longer exists."""
        ttl = ttl if ttl is not None else lease_seconds()
        give_up = time.monotonic() + wait
        while True:
            current = self.lease(run_id, scope)
            t = now()
            try:
                with self.engine.begin() as conn:
                    if current is None:
                        conn.execute(leases.insert().values(run_id=run_id, scope=scope, owner=self.worker, token=1,
                                                            acquired_at=t, expires_at=t + ttl))
                        token = 1
                    elif self._free(current, t):
                        token = current.token + 1
                        taken = conn.execute(update(leases).where(and_(
                            leases.c.run_id == run_id, leases.c.scope == scope, leases.c.token == current.token,
                        )).values(owner=self.worker, token=token, acquired_at=t, expires_at=t + ttl))
                        if taken.rowcount != 1:
                            continue  # another process took it between our read and our write: look again
                        if current.owner not in (None, self.worker):
                            conn.execute(events.insert().values(
                                run_id=run_id, at=t, kind="lease.taken_over", subject=scope,
                                message=f"{self.worker} took over from {current.owner} (token {token})"))
                    elif time.monotonic() < give_up:
                        time.sleep(min(1.0, ttl / 4))
                        continue
                    else:
                        raise LeaseHeld(current.describe() + "; wait or stop it")
            except IntegrityError:
                continue  # two first acquisitions at once: the other won the insert; look again
            with self._lock:
                self._held[(run_id, scope)] = (token, ttl)
                if self._renewer is None or not self._renewer.is_alive():
                    self._stop_renewing.clear()
                    self._renewer = threading.Thread(target=self._renew_loop, name="bigbang-lease-renewer",
                                                     daemon=True)
                    self._renewer.start()
            return Lease(run_id, scope, self.worker, token, t, t + ttl)

    def release_lease(self, run_id: str, scope: str = RUN_SCOPE) -> None:
        """Give the lease up (the next holder need not wait for it to expire)."""
        with self._lock:
            held = self._held.pop((run_id, scope), None)
        if held is None:
            return
        with self.engine.begin() as conn:
            conn.execute(update(leases).where(and_(
                leases.c.run_id == run_id, leases.c.scope == scope, leases.c.token == held[0],
            )).values(owner=None, expires_at=now()))

    def holds(self, run_id: str, scope: str = RUN_SCOPE) -> bool:
        with self._lock:
            return (run_id, scope) in self._held

    def fence_for(self, run_id: str, scope: str) -> Fence | None:
        """The lease a write for `scope` (a location id, or "servers") is made under: the location's (the
        servers'), else the run's; None for a writer that holds no lease on the run (tools, tests). Once per
        step record: no lock (a dict read is atomic; `_held` changes only under `_lock`)."""
        for held_scope in (lease_scope(scope), RUN_SCOPE):
            held = self._held.get((run_id, held_scope))
            if held is not None:
                return (run_id, held_scope, held[0])
        return None

    def _free(self, lease: Lease, t: float) -> bool:
        if lease.owner is None or lease.owner == self.worker or lease.expires_at <= t:
            return True
        host, _, pid = lease.owner.rpartition(":")
        return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))

    def _renew_loop(self) -> None:
        while True:
            with self._lock:
                held = dict(self._held)
            interval = min((ttl for _, ttl in held.values()), default=lease_seconds()) / 3
            if self._stop_renewing.wait(interval):
                return
            for (run_id, scope), (token, ttl) in held.items():
                try:
                    with self.engine.begin() as conn:
                        conn.execute(update(leases).where(and_(
                            leases.c.run_id == run_id, leases.c.scope == scope, leases.c.token == token,
                        )).values(expires_at=now() + ttl))
                except Exception:  # noqa: BLE001 - a lost lease is refused at the next write; keep trying
                    pass

    def _check_fences(self, conn: Any, fences: Iterable[Fence]) -> None:
        """Refuse the transaction unless every token is still its lease's current one. Runs after the
        transaction's writes: SQLite then holds its write lock, and on PostgreSQL FOR SHARE makes a
        concurrent takeover wait until this transaction ends."""
        held: dict[str, set[tuple[str, int]]] = {}
        for run_id, scope, token in fences:
            held.setdefault(run_id, set()).add((scope, token))
        for run_id in sorted(held):  # one query per run (a batch holds the steps of ~40 locations: ~40 leases)
            current = {scope: (token, owner) for scope, token, owner in conn.execute(
                _LEASE_TOKENS, {"run_id": run_id, "scopes": sorted({scope for scope, _ in held[run_id]})})}
            for scope, token in sorted(held[run_id]):
                row = current.get(scope)
                if row is None or row[0] != token or row[1] is None:  # taken over, or given up
                    what = (f"run {run_id}" if scope == RUN_SCOPE
                            else f"{scope.replace(':', ' ', 1)} of run {run_id}")
                    by = f"by {row[1]} " if row is not None and row[1] else ""
                    raise LeaseLost(f"{what} was taken over {by}(lease token {row[0] if row else None}, this "
                                    f"process held {token}): this process stops writing to it")

    # ------------------------------------------------------------ intents (before a changing step)
    def record_intent(self, run_id: str, step_id: str, scope: str, attempt: int) -> None:
        """Commit that a changing step is about to touch its device; refused without the current lease."""
        self.record_intents(run_id, scope, [(step_id, attempt)])

    def record_intents(self, run_id: str, scope: str, attempts: Iterable[tuple[str, int]]) -> None:
        """Commit that these changing steps (step id, attempt) of one scope may touch their devices from now
        on; refused without the current lease. Returns once committed.

        Intents go through the writer like everything else, so the intents of all the devices that are
        about to be changed at one moment share one transaction (group commit). An intent whose step never
        started is harmless: a resume asks the device, finds the change not made, and runs the step."""
        self._raise_writer_error()  # a ledger that cannot record the outcome must not let the change start
        fence = self.fence_for(run_id, scope)
        token, t = (fence[2] if fence else None), now()
        rows = [dict(run_id=run_id, step_id=step_id, attempt=attempt, token=token, owner=self.worker,
                     recorded_at=t, settled_at=None, outcome=None) for step_id, attempt in attempts]
        if not rows:
            return
        commit = _Commit()
        self._put(("intent", (rows, fence, commit)))
        while not commit.wait(5.0):
            writer = self._writer
            if writer is None or not writer.is_alive():
                raise LedgerError(f"the ledger writer stopped before an intent was committed ({self.safe_url})")
        _raise_as_ledger_error(commit.error)

    def open_intents(self, run_id: str) -> dict[str, int]:
        """step id -> attempt of every intent without a recorded outcome (its process died in between)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_OPEN_INTENTS, {"run_id": run_id}).all()
        return {step_id: attempt for step_id, attempt in rows}

    # ------------------------------------------------------------ steps (queued writes)
    def record_step(self, run_id: str, record: StepRecord) -> None:
        """Queue a step's record; its outcome carries the simulated change staged for it, if any, into the
        same transaction."""
        effect = None
        if record.final:
            with self._sim_lock:
                effect = self._sim_staged.pop((run_id, record.step_id), None)
                if effect is not None:
                    self._sim_known.add((run_id, record.step_id))
        self._put(("step", (run_id, record, self.fence_for(run_id, record.scope), effect)))

    def record_location(self, run_id: str, location_id: str, status: LocationStatus, *, reason: str = "",
                        devices: int = 0, devices_failed: int = 0, devices_skipped: int = 0,
                        started_at: float | None = None, finished_at: float | None = None,
                        clock_start: float | None = None, clock_end: float | None = None) -> None:
        self._put(("location", (dict(
            run_id=run_id, location_id=location_id, status=status, reason=reason, devices=devices,
            devices_failed=devices_failed, devices_skipped=devices_skipped, started_at=started_at,
            finished_at=finished_at, clock_start=clock_start, clock_end=clock_end, worker=self.worker,
        ), self.fence_for(run_id, location_id))))

    def flush(self, timeout: float = 120.0, *, running: bool = True) -> None:
        """Return once everything queued so far is committed. `running=False` leaves the running states the
        writer holds back (younger than RUNNING_DELAY) to be written when due or superseded: what a unit
        needs at its end (its outcomes committed), without writing every other unit's steps twice."""
        if self._writer is None:
            self._raise_writer_error()
            return
        done = threading.Event()
        self._put(("flush" if running else "flush-outcomes", done))
        if not done.wait(timeout):
            raise LedgerError(f"the ledger writer did not commit within {timeout:.0f} s ({self.safe_url})")
        self._raise_writer_error()

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
            self._queue.put(("stop", None))
            self._writer.join(timeout=30)
            self._writer = None
        for run_id, scope in list(self._held):
            self.release_lease(run_id, scope)
        self._stop_renewing.set()
        self.engine.dispose()

    def _transact(self, work: Callable[[Any], Any], timeout: float = 120.0) -> Any:
        """`work(connection)` in a transaction of its own, made by the writer thread after what was queued
        before it: this process's writes then never wait on each other's locks (SQLite's busy wait cost a
        sign-off ~7 ms while the writer committed steps)."""
        if threading.current_thread() is self._writer:
            with self.engine.begin() as conn:
                return work(conn)
        commit = _Commit()
        self._put(("call", (work, commit)))
        if not commit.wait(timeout):
            raise LedgerError(f"the ledger writer did not commit within {timeout:.0f} s ({self.safe_url})")
        _raise_as_ledger_error(commit.error)
        return commit.result

    def _run_call(self, work: Callable[[Any], Any], commit: _Commit) -> None:
        for attempt in range(8):
            try:
                with self.engine.begin() as conn:
                    commit.result = work(conn)
                break
            except OperationalError as exc:  # another process holds the database: back off, try again
                if attempt == 7:
                    commit.error = exc
                time.sleep(0.02 * 2**attempt)
            except BaseException as exc:  # noqa: BLE001 - the caller's to handle, not the writer's
                commit.error = exc
                break
        commit.set()

    def _put(self, item: tuple[str, Any]) -> None:
        self._raise_writer_error()
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="bigbang-ledger-writer",
                                                    daemon=True)
                    self._writer.start()
        if self._queue.qsize() >= QUEUE_LIMIT and threading.current_thread() is not self._writer:
            self._room.clear()
            while self._queue.qsize() >= QUEUE_LIMIT // 2:  # the writer sets `_room` once it has caught up
                self._room.wait(0.1)
                self._raise_writer_error()
        self._queue.put(item)

    def _raise_writer_error(self) -> None:
        _raise_as_ledger_error(self._writer_error)

    def _write_loop(self) -> None:
        # Running records held back (writer thread only), oldest first: a step's running state is written
        # once it has run RUNNING_DELAY seconds, or with its outcome's batch superseded by it. Most rehearsal
        # steps finish sooner, and their row is then written once instead of twice; a live step (minutes)
        # shows as running RUNNING_DELAY later. A flush writes them all.
        held: dict[tuple[str, str], tuple[float, Any]] = {}
        while True:
            try:
                if held:
                    first_held = next(iter(held.values()))[0]
                    batch = [self._queue.get(timeout=max(0.0, first_held + RUNNING_DELAY - time.monotonic()))]
                else:
                    batch = [self._queue.get()]
            except queue.Empty:
                batch = []
            try:
                while len(batch) < 2000:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if not self._room.is_set() and self._queue.qsize() < QUEUE_LIMIT // 2:
                self._room.set()
            intent_rows = [item for kind, item in batch if kind == "intent"]
            step_rows = self._hold_running(held, [item for kind, item in batch if kind == "step"],
                                           everything=any(kind in ("flush", "stop") for kind, _ in batch))
            location_rows = [item for kind, item in batch if kind == "location"]
            effect_rows = [dict(run_id=run_id, step_id=r.step_id, applied_at=at, worker=self.worker)
                           for run_id, r, _, at in step_rows if at is not None]
            fences = ([fence for _, fence, _ in intent_rows if fence] + [item[2] for item in step_rows if item[2]]
                      + [fence for _, fence in location_rows if fence])
            error: BaseException | None = None
            checked: tuple[set[tuple[str, str]], set[tuple[str, str]]] | None = None
            if intent_rows or step_rows or location_rows:
                committed = False
                for attempt in range(5):
                    try:
                        with self.engine.begin() as conn:
                            if intent_rows:  # before any outcome: a step's outcome is queued after its intent
                                rows = [row for batch_rows, _, _ in intent_rows for row in batch_rows]
                                self._upsert_intents(conn, rows)
                                checked = self._look_for_sim_effects(conn, rows)
                            if step_rows:
                                self._upsert_steps(conn, step_rows)
                            if effect_rows:  # with the outcomes they belong to: neither is ever seen alone
                                self._bulk(conn, _INSERT_SIM_EFFECTS, effect_rows)
                            if location_rows:
                                self._upsert_locations(conn, [row for row, _ in location_rows])
                            self._check_fences(conn, fences)  # a stale holder's writes roll back here
                        committed = True
                        if checked is not None:
                            with self._sim_lock:
                                self._sim_checked.update(checked[0])
                                self._sim_known.update(checked[1])
                        break
                    except OperationalError as exc:  # database busy: back off and retry the batch
                        if attempt == 4:
                            error = self._writer_error = exc
                        time.sleep(0.05 * 2**attempt)
                    except BaseException as exc:  # noqa: BLE001 - surfaced to the caller by flush()
                        error = self._writer_error = exc
                        break
                if not committed and effect_rows:
                    with self._sim_lock:  # not committed: the devices do not show these changes
                        self._sim_known.difference_update((e["run_id"], e["step_id"]) for e in effect_rows)
                if not committed and error is None:
                    error = self._writer_error or LedgerError("the ledger writer could not commit")
            for _, _, commit in intent_rows:  # the changes may start now (or must not, with the error)
                commit.error = error
                commit.set()
            for kind, item in batch:
                if kind == "call":  # after the batch's commit: it follows what was queued before it
                    self._run_call(*item)
                elif kind in ("flush", "flush-outcomes"):
                    item.set()
                elif kind == "stop":
                    return

    @staticmethod
    def _hold_running(held: dict[tuple[str, str], tuple[float, Any]], items: list[Any], everything: bool) -> list[Any]:
        """The step records to write in this batch: held running records that are due (all of them for a
        flush), then the batch's own, minus new running records (held) and records superseded in the batch."""
        mine: list[Any] = []
        t = time.monotonic()
        for item in items:
            key = (item[0], item[1].step_id)
            held.pop(key, None)  # a later record supersedes it (re-held below if it is running again)
            if item[1].status == StepStatus.RUNNING:
                held[key] = (t, item)
            else:
                mine.append(item)
        due: list[Any] = []
        for key, (since, item) in list(held.items()):
            if not everything and since + RUNNING_DELAY > t:
                break  # oldest first: the rest are younger
            due.append(item)
            del held[key]
        return due + mine

    def _look_for_sim_effects(self, conn: Any, rows: list[dict[str, Any]]
                              ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]] | None:
        """In a rehearsal, which of these steps' simulated changes are committed already, one query for the
        batch (else `stage_sim_effect` asks per step): (steps looked for, changes found)."""
        if not self._sim_used:
            return None
        looked: set[tuple[str, str]] = set()
        found: set[tuple[str, str]] = set()
        for run_id in sorted({row["run_id"] for row in rows}):
            ids = [row["step_id"] for row in rows if row["run_id"] == run_id]
            looked.update((run_id, step_id) for step_id in ids)
            found.update((run_id, step_id) for (step_id,) in conn.execute(
                _SIM_EFFECTS_AMONG, {"run_id": run_id, "step_ids": ids}))
        return looked - found, found

    def _bulk(self, conn: Any, clause: TextClause, rows: list[dict[str, Any]]) -> None:
        """executemany of a text statement on the driver's cursor, in `conn`'s transaction: SQLAlchemy's
        own executemany binds every row in Python, most of the writer's time at ~30,000 rows a run. Errors
        come out as they do from SQLAlchemy (a fault that retrying will not cure as a LedgerError)."""
        if not rows:
            return
        dialect = conn.dialect
        sql = _driver_sql(clause, dialect.name)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.executemany(sql, rows)
        except dialect.loaded_dbapi.Error as exc:
            fatal = _fatal(exc, self.safe_url)
            if fatal is not None:
                raise fatal from exc
            raise DBAPIError.instance(sql, rows[0], exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        finally:
            cursor.close()

    def _upsert_intents(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        latest = {(row["run_id"], row["step_id"]): row for row in rows}
        self._bulk(conn, _UPSERT_INTENTS, [latest[key] for key in sorted(latest)])  # one lock order for all

    def _upsert_steps(self, conn, items: list[tuple[str, StepRecord, Fence | None, float | None]]) -> None:
        # The last write for a step in one batch wins; earlier ones are superseded.
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for run_id, r, _, _ in items:
            if latest.get((run_id, r.step_id), {}).get("status") == "succeeded":
                continue  # as in the database below: nothing undoes a succeeded step
            latest[(run_id, r.step_id)] = dict(
                run_id=run_id, step_id=r.step_id, scope=r.scope, target=r.target, kind=r.kind,
                status=str(r.status), attempts=r.attempts, changed=r.changed, message=r.message[:4000],
                facts=_facts_json(r.facts) if r.facts else "{}", started_at=r.started_at,
                finished_at=r.finished_at, clock_start=r.clock_start, clock_end=r.clock_end, worker=self.worker,
            )
        rows = [latest[key] for key in sorted(latest)]  # one lock order for all writers: no deadlocks
        self._bulk(conn, _UPSERT_STEPS, rows)
        # An outcome settles its step's intent in the same transaction: no window where one exists alone.
        settled_at = now()
        self._bulk(conn, _SETTLE_INTENT, [{"run_id": row["run_id"], "step_id": row["step_id"],
                                           "settled_at": settled_at, "outcome": row["status"]}
                                          for row in rows if row["status"] in FINAL])

    def _upsert_locations(self, conn, rows: list[dict[str, Any]]) -> None:
        # As for steps: nothing rewrites a location that succeeded (its times and verdict are final), and the
        # last write for a location in one batch wins. One statement for the batch.
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (row["run_id"], row["location_id"])
            if latest.get(key, {}).get("status") != LocationStatus.SUCCEEDED:
                latest[key] = row
        conn.execute(_UPSERT_LOCATIONS, [latest[key] for key in sorted(latest)])

    # ------------------------------------------------------------ reads
    def step_results(self, run_id: str, *, scope: str | None = None, step_ids: Iterable[str] | None = None,
                     with_facts: bool = True) -> dict[str, StepRecord]:
        """step id -> its record; `with_facts=False` leaves out what the devices reported (`facts` None), which
        a report of the whole run does not show and which costs most of reading 30,000 records."""
        ids = list(step_ids) if step_ids is not None else None
        if with_facts and (scope is None) != (ids is None):  # what each location reads: built once
            query, params = ((_STEPS_OF_SCOPE, {"run_id": run_id, "scope": scope}) if ids is None
                             else (_STEPS_AMONG, {"run_id": run_id, "step_ids": ids}))
        else:
            columns = steps.c if with_facts else [c for c in steps.c if c.name != "facts"]
            query, params = select(*columns).where(steps.c.run_id == run_id), {}
            if scope is not None:
                query = query.where(steps.c.scope == scope)
            if ids is not None:
                query = query.where(steps.c.step_id.in_(ids))
        with self.engine.connect() as conn:
            rows = conn.execute(query, params).mappings().all()
        return {r["step_id"]: _record(r) for r in rows}

    def location_results(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(locations).where(locations.c.run_id == run_id)).mappings().all()
        return {r["location_id"]: dict(r) for r in rows}

    def location_result(self, run_id: str, location_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_LOCATION, {"run_id": run_id, "location_id": location_id}).mappings().first()
        return dict(row) if row else None

    def progress(self, run_id: str) -> dict[tuple[str, str, str], int]:
        """(scope, kind, status) -> number of steps, for live displays."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(steps.c.scope, steps.c.kind, steps.c.status, func.count())
                .where(steps.c.run_id == run_id).group_by(steps.c.scope, steps.c.kind, steps.c.status)
            ).all()
        return {(scope, kind, status): n for scope, kind, status, n in rows}

    # ------------------------------------------------------------ sign-off gate
    def sign_off(self, run_id: str, location_id: str, signed_by: str, note: str = "") -> bool:
        """Record a location's sign-off once; False if it was signed off already."""
        values = dict(run_id=run_id, location_id=location_id, signed_by=signed_by, signed_at=now(), note=note)

        def work(conn: Any) -> bool:
            done = conn.execute(_SIGN_OFF, values).first() is not None
            if done:
                conn.execute(events.insert().values(run_id=run_id, at=now(), kind="location.signed_off",
                                                    subject=location_id, message=f"by {signed_by}. {note}".strip()))
            return done

        return bool(self._transact(work))

    def signoffs(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(signoffs).where(signoffs.c.run_id == run_id)).mappings().all()
        return {r["location_id"]: dict(r) for r in rows}

    def signoff(self, run_id: str, location_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_SIGNOFF, {"run_id": run_id, "location_id": location_id}).mappings().first()
        return dict(row) if row else None

    # ------------------------------------------------------------ field problems
    def add_problem(self, problem_id: str, run_id: str, location_id: str, category: str, text: str,
                    reported_by: str, device: str | None = None, source: str = "field") -> bool:
        """Record a technician's problem once per `problem_id`; False if it was recorded before."""
        insert = _insert(self.dialect)
        stmt = insert(problems).values(problem_id=problem_id, run_id=run_id, location_id=location_id,
                                       device=device, category=category, text=text, reported_by=reported_by,
                                       reported_at=now(), source=source)
        stmt = stmt.on_conflict_do_nothing(index_elements=["problem_id"]).returning(problems.c.problem_id)
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def problems(self, run_id: str, location_id: str | None = None) -> list[dict[str, Any]]:
        query = select(problems).where(problems.c.run_id == run_id)
        if location_id is not None:
            query = query.where(problems.c.location_id == location_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(problems.c.reported_at)).mappings()]

    # ------------------------------------------------------------ simulated side effects
    def stage_sim_effect(self, run_id: str, step_id: str) -> bool:
        """A simulated change, committed with its step's outcome (the next final `record_step` of that step):
        after a kill the state never shows a change whose step is not recorded, nor the other way round.
        False if it was applied before (no-op). Only the process holding the step's lease runs it."""
        key = (run_id, step_id)
        with self._sim_lock:
            self._sim_used = True
            if key in self._sim_known or key in self._sim_staged:
                return False
            checked = key in self._sim_checked
            self._sim_checked.discard(key)
        if not checked and self._committed_sim_effect(run_id, step_id):
            return False
        with self._sim_lock:
            self._sim_staged[key] = now()
        return True

    def apply_sim_effect(self, run_id: str, step_id: str) -> bool:
        """Record one simulated change now, in a transaction of its own; False if it was applied before (no-op).
        A rehearsal's connector uses `stage_sim_effect`, which commits the change with its step's outcome."""
        insert = _insert(self.dialect)
        stmt = insert(sim_effects).values(run_id=run_id, step_id=step_id, applied_at=now(), worker=self.worker)
        stmt = stmt.on_conflict_do_nothing(index_elements=["run_id", "step_id"]).returning(sim_effects.c.step_id)
        for attempt in range(8):
            try:
                with self.engine.begin() as conn:
                    return conn.execute(stmt).first() is not None
            except OperationalError:
                if attempt == 7:
                    raise
                time.sleep(0.02 * 2**attempt)
        return False  # pragma: no cover

    def sim_effect_applied(self, run_id: str, step_id: str) -> bool:
        """Whether the change is in the simulated state: committed, queued with its step's outcome by this
        ledger (the outcome is committed before any record queued after it), or staged by this ledger and
        waiting for that outcome (the device shows a change as soon as it is made; a crash before the
        outcome is recorded loses both)."""
        with self._sim_lock:
            if (run_id, step_id) in self._sim_known or (run_id, step_id) in self._sim_staged:
                return True
        return self._committed_sim_effect(run_id, step_id)

    def _committed_sim_effect(self, run_id: str, step_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(_SIM_EFFECT, {"run_id": run_id, "step_id": step_id}).first() is not None
        if found:
            with self._sim_lock:
                self._sim_known.add((run_id, step_id))
        return found

    def sim_effect_counts(self, run_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(sim_effects)
                                .where(sim_effects.c.run_id == run_id)).scalar_one()


def _raise_as_ledger_error(error: BaseException | None) -> None:
    """Raise what the writer met, as a LedgerError for this caller (nothing if None)."""
    if isinstance(error, LedgerError):  # says what is wrong already (full disk, lease lost...)
        raise type(error)(error.message, hint=error.hint)
    if error is not None:
        raise LedgerError(f"writing to the ledger failed: {error}") from error


def _record(row: Any) -> StepRecord:
    return StepRecord(
        step_id=row["step_id"], scope=row["scope"], target=row["target"], kind=row["kind"],
        status=StepStatus(row["status"]), attempts=row["attempts"], changed=bool(row["changed"]),
        message=row["message"] or "", facts=json.loads(row["facts"] or "{}") if "facts" in row else None,
        started_at=row["started_at"], finished_at=row["finished_at"], clock_start=row["clock_start"],
        clock_end=row["clock_end"],
    )


def _insert(dialect: str) -> Any:
    """The dialect's INSERT with ON CONFLICT (both take the same arguments here)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert
    raise ConfigError(f"unsupported ledger database '{dialect}' (use SQLite or PostgreSQL)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# What a database error means for the person running bigbang: (text in the driver's message, what to say).
_FATAL = (
    ("database or disk is full", "the ledger's disk is full: free space and resume; everything recorded so far is kept"),
    ("disk i/o error", "the ledger's disk failed to read or write (I/O error): check the disk, then resume"),
    ("readonly database", "the ledger is read-only: make it writable (file and directory) or use another --ledger"),
    ("read-only", "the ledger is read-only: make it writable or use another --ledger"),
    ("file is not a database", "the ledger file is not an SQLite database (truncated or corrupted): restore it "
                               "from a backup or give another --ledger"),
    ("database disk image is malformed", "the ledger file is corrupted: restore it from a backup or give another "
                                         "--ledger (sqlite3 FILE '.recover' may save what it holds)"),
    ("unable to open database file", "the ledger file cannot be opened: check that its directory exists and is "
                                     "writable"),
    ("connection refused", "the ledger database cannot be reached (connection refused): check that it runs and "
                           "the URL in --ledger / BIGBANG_LEDGER_URL"),
    ("could not translate host name", "the ledger database's host name is unknown: check --ledger / "
                                      "BIGBANG_LEDGER_URL"),
    ("name or service not known", "the ledger database's host name is unknown: check --ledger / BIGBANG_LEDGER_URL"),
    ("timeout expired", "the ledger database did not answer in time: check that it runs and is reachable"),
    ("password authentication failed", "the ledger database refused the user or password in the ledger URL"),
    ('database "*does not exist', "the ledger database named in the URL does not exist: create it or fix the URL"),
    ("no such table", "the ledger lacks its tables (a file from another program?): give another --ledger"),
)


def _fatal(exc: BaseException, safe_url: str) -> LedgerError | None:
    """A LedgerError with one clear line for a database fault that retrying will not cure; None otherwise
    (a busy SQLite database is retried)."""
    text = str(exc).lower()
    for needle, meaning in _FATAL:
        if all(part in text for part in needle.split("*")):
            detail = one_line_of(str(getattr(exc, "orig", None) or exc))
            return LedgerError(f"{meaning} ({safe_url}: {detail})")
    return None


def one_line_of(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())[:300]


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        directory = Path(url.removeprefix("sqlite:///")).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = ("a part of that path is a file, not a directory"
                   if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror or str(exc))
            raise ConfigError(f"cannot use the ledger URL {url}: its directory {directory} cannot be created "
                              f"({why})", hint="give a path in a writable directory") from None
        _check_sqlite_file(directory / Path(url.removeprefix("sqlite:///")).name, url)
    engine = _create_engine(url)
    safe = engine.url.render_as_string(hide_password=True)

    @event.listens_for(engine, "handle_error")
    def _explain(context):  # noqa: ANN001
        return _fatal(context.original_exception, safe)

    return engine


def _check_sqlite_file(path: Path, url: str) -> None:
    """Refuse a ledger file that is cut short: SQLite would read what is left as an older, smaller ledger
    (runs and steps silently missing). The header says how many pages the file has; a file is never shorter
    than that unless the rest is still in its write-ahead log."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"cannot read the ledger file {path}: {exc.strerror or exc}") from None
    if size == 0:
        return  # a new, empty database
    if not header.startswith(b"SQLite format 3\x00") or len(header) < 100:
        raise LedgerError(f"the ledger file is not an SQLite database (truncated or corrupted): restore it from a "
                          f"backup or give another --ledger ({url})")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    wal = path.with_name(path.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # pages not checkpointed yet are read from the WAL
    if pages and size < pages * page_size and not pending:
        raise LedgerError(f"the ledger file is truncated ({size} of {pages * page_size} bytes): restore it from a "
                          f"backup or give another --ledger ({url})")


def _create_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                   pool_size=8, max_overflow=16)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            return engine
        if url.startswith("postgresql"):
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    except Exception as exc:  # noqa: BLE001 - a bad URL or missing driver is the user's to fix
        raise ConfigError(f"cannot use ledger URL {url!r}: {exc}") from exc
    raise ConfigError(f"unsupported ledger URL {url!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB")
