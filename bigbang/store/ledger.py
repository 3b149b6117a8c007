"""The run ledger: the source of truth for a run, its frozen plan and every step's outcome.

SQLite by default, any SQLAlchemy URL (PostgreSQL) for shared use. Writes go
through one writer thread that commits in small batches (group commit), so
thousands of device steps do not each pay a transaction. A result counts as
recorded once committed; `flush()` waits for that. Upserts never turn a
succeeded step back into anything else, so a stale or repeated writer cannot
undo finished work.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from bigbang.errors import ConfigError, LedgerError
from bigbang.status import LocationStatus, RunStatus, StepStatus
from bigbang.store.schema import (
    events,
    locations,
    metadata,
    problems,
    run_plans,
    run_schedules,
    runs,
    signoffs,
    sim_effects,
    steps,
)

FINAL = tuple(s.value for s in StepStatus if s.final)
CHECKED_IN = "location.checked_in"


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
        return StepStatus(self.status).final

    @property
    def finished(self) -> bool:
        return StepStatus(self.status).finished


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
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=20000)
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._lock = threading.Lock()
        self._ensure_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _ensure_schema(self) -> None:
        try:
            metadata.create_all(self.engine)
        except (IntegrityError, OperationalError) as exc:
            # Two processes creating the schema at once: the other one won.
            if "exists" not in str(exc).lower() and "locked" not in str(exc).lower():
                raise LedgerError(f"cannot create the ledger schema at {self.safe_url}: {exc}") from exc
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the ledger at {self.safe_url}: {exc.__class__.__name__}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------ runs
    def create_run(self, run_id: str, *, rollout: str, inventory: str, mode: str, options: dict[str, Any],
                   clock: str, plan: dict[str, Any], inventory_data: dict[str, Any], plan_digest: str,
                   inventory_digest: str, schedule: dict[str, Any] | None = None) -> None:
        """Create the run with its frozen plan (version 1) in one transaction: a run never exists without it."""
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
    def _insert_plan(conn: Any, run_id: str, version: int, plan: dict[str, Any], inventory_data: dict[str, Any],
                     plan_digest: str, inventory_digest: str, note: str) -> None:
        conn.execute(run_plans.insert().values(
            run_id=run_id, version=version, plan_digest=plan_digest, inventory_digest=inventory_digest,
            plan=json.dumps(plan, sort_keys=True, default=str), inventory=json.dumps(inventory_data, default=str),
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
        return FrozenPlan(row["version"], json.loads(row["plan"]), json.loads(row["inventory"]), row["plan_digest"],
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
        ids = list(step_ids)
        if not ids:
            return None
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(steps.c.clock_end)).where(
                and_(steps.c.run_id == run_id, steps.c.step_id.in_(ids)))).scalar()
        return float(value) if value is not None else None

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

    def set_run_status(self, run_id: str, status: RunStatus, *, halted_reason: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": now()}
        if RunStatus(status).finished:
            values["finished_at"] = now()
        if halted_reason is not None:
            values["halted_reason"] = halted_reason
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))

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
            row = conn.execute(select(runs.c.halted_reason, runs.c.halted_clock).where(runs.c.run_id == run_id)).first()
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

    def add_event(self, run_id: str, kind: str, subject: str = "", message: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(events.insert().values(run_id=run_id, at=now(), kind=kind, subject=subject, message=message))

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(events).where(events.c.run_id == run_id).order_by(events.c.id)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------ steps (queued writes)
    def record_step(self, run_id: str, record: StepRecord) -> None:
        self._put(("step", (run_id, record)))

    def record_location(self, run_id: str, location_id: str, status: LocationStatus, *, reason: str = "",
                        devices: int = 0, devices_failed: int = 0, devices_skipped: int = 0,
                        started_at: float | None = None, finished_at: float | None = None,
                        clock_start: float | None = None, clock_end: float | None = None) -> None:
        self._put(("location", dict(
            run_id=run_id, location_id=location_id, status=status, reason=reason, devices=devices,
            devices_failed=devices_failed, devices_skipped=devices_skipped, started_at=started_at,
            finished_at=finished_at, clock_start=clock_start, clock_end=clock_end, worker=self.worker,
        )))

    def flush(self, timeout: float = 120.0) -> None:
        """Return once everything queued so far is committed."""
        if self._writer is None:
            self._raise_writer_error()
            return
        done = threading.Event()
        self._put(("flush", done))
        if not done.wait(timeout):
            raise LedgerError(f"the ledger writer did not commit within {timeout:.0f} s ({self.safe_url})")
        self._raise_writer_error()

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
            self._queue.put(("stop", None))
            self._writer.join(timeout=30)
            self._writer = None
        self.engine.dispose()

    def _put(self, item: tuple[str, Any]) -> None:
        self._raise_writer_error()
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="bigbang-ledger-writer", daemon=True)
                self._writer.start()
        self._queue.put(item)

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            raise LedgerError(f"writing to the ledger failed: {self._writer_error}") from self._writer_error

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < 2000:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            step_rows = [item for kind, item in batch if kind == "step"]
            location_rows = [item for kind, item in batch if kind == "location"]
            if step_rows or location_rows:
                for attempt in range(5):
                    try:
                        with self.engine.begin() as conn:
                            if step_rows:
                                self._upsert_steps(conn, step_rows)
                            for row in location_rows:
                                self._upsert(conn, locations, row, ("run_id", "location_id"))
                        break
                    except OperationalError as exc:  # database busy: back off and retry the batch
                        if attempt == 4:
                            self._writer_error = exc
                        time.sleep(0.05 * 2**attempt)
                    except BaseException as exc:  # noqa: BLE001 - surfaced to the caller by flush()
                        self._writer_error = exc
                        break
            for kind, item in batch:
                if kind == "flush":
                    item.set()
                elif kind == "stop":
                    return

    def _upsert_steps(self, conn, items: list[tuple[str, StepRecord]]) -> None:
        # The last write for a step in one batch wins; earlier ones are superseded.
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for run_id, r in items:
            if latest.get((run_id, r.step_id), {}).get("status") == "succeeded":
                continue  # as in the database below: nothing undoes a succeeded step
            latest[(run_id, r.step_id)] = dict(
                run_id=run_id, step_id=r.step_id, scope=r.scope, target=r.target, kind=r.kind,
                status=r.status, attempts=r.attempts, changed=r.changed, message=r.message[:4000],
                facts=json.dumps(r.facts or {}, sort_keys=True, default=str), started_at=r.started_at,
                finished_at=r.finished_at, clock_start=r.clock_start, clock_end=r.clock_end, worker=self.worker,
            )
        rows = [latest[key] for key in sorted(latest)]  # one lock order for all writers: no deadlocks
        insert = _insert(self.dialect)
        stmt = insert(steps)
        updatable = [c for c in steps.c.keys() if c not in ("run_id", "step_id")]
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "step_id"],
            set_={c: stmt.excluded[c] for c in updatable},
            where=steps.c.status != "succeeded",
        )
        conn.execute(stmt, rows)

    def _upsert(self, conn, table: Table, row: dict[str, Any], keys: tuple[str, ...]) -> None:
        insert = _insert(self.dialect)
        stmt = insert(table).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={k: v for k, v in row.items() if k not in keys})
        conn.execute(stmt)

    # ------------------------------------------------------------ reads
    def step_results(self, run_id: str, *, scope: str | None = None,
                     step_ids: Iterable[str] | None = None) -> dict[str, StepRecord]:
        query = select(steps).where(steps.c.run_id == run_id)
        if scope is not None:
            query = query.where(steps.c.scope == scope)
        ids = list(step_ids) if step_ids is not None else None
        if ids is not None:
            query = query.where(steps.c.step_id.in_(ids))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return {r["step_id"]: _record(r) for r in rows}

    def location_results(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(locations).where(locations.c.run_id == run_id)).mappings().all()
        return {r["location_id"]: dict(r) for r in rows}

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
        insert = _insert(self.dialect)
        stmt = insert(signoffs).values(run_id=run_id, location_id=location_id, signed_by=signed_by,
                                       signed_at=now(), note=note)
        stmt = stmt.on_conflict_do_nothing(index_elements=["run_id", "location_id"]).returning(signoffs.c.location_id)
        with self.engine.begin() as conn:
            done = conn.execute(stmt).first() is not None
            if done:
                conn.execute(events.insert().values(run_id=run_id, at=now(), kind="location.signed_off",
                                                    subject=location_id, message=f"by {signed_by}. {note}".strip()))
            return done

    def signoffs(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(signoffs).where(signoffs.c.run_id == run_id)).mappings().all()
        return {r["location_id"]: dict(r) for r in rows}

    def signoff(self, run_id: str, location_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(signoffs).where(
                and_(signoffs.c.run_id == run_id, signoffs.c.location_id == location_id))).mappings().first()
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
    def apply_sim_effect(self, run_id: str, step_id: str) -> bool:
        """Record one simulated change; False if it was applied before (no-op)."""
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
        with self.engine.connect() as conn:
            return conn.execute(select(sim_effects.c.step_id).where(
                and_(sim_effects.c.run_id == run_id, sim_effects.c.step_id == step_id))).first() is not None

    def sim_effect_counts(self, run_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(sim_effects)
                                .where(sim_effects.c.run_id == run_id)).scalar_one()


def _record(row: Any) -> StepRecord:
    return StepRecord(
        step_id=row["step_id"], scope=row["scope"], target=row["target"], kind=row["kind"],
        status=StepStatus(row["status"]), attempts=row["attempts"], changed=bool(row["changed"]),
        message=row["message"] or "", facts=json.loads(row["facts"] or "{}"),
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


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
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
