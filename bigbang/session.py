"""A run's life: start (the plan frozen into the store), resume, attach, finish.

    inventory YAML --start--> frozen plan + inventory (store, with a digest)
                                 |  read by runner, workers, report, watch, field app, board, defects
                                 v
                   runner --steps--> store <--times-- clock (wall, or simulated in rehearsals)
                                 |
                              finish: status decision, crashed locations, report

`start` builds the plan from the inventory once and freezes it, with the validated inventory, in the
run's store. Everything after reads that frozen value, never the YAML: `resume` compares the YAML with
it and refuses a changed plan unless told to accept it (which freezes a new plan version); `attach`
opens a run from another process (a Prefect worker) from the store alone. Sessions are cached per
process and run id, so the CLI and the flow it starts share one.
"""

from __future__ import annotations

import secrets as _random
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bigbang.clock import Clock, Pace, SimulatedClock, Timeline, WallClock
from bigbang.connectors import CONNECTORS, Connector, ConnectorContext
from bigbang.connectors.simulated import simulates
from bigbang.errors import LiveModeUnavailable, RunError
from bigbang.inventory import Inventory, load_inventory
from bigbang.plan import INTERNAL_CONNECTOR, Plan, build_plan, frozen_json
from bigbang.schedule.store import slots_of, stored_schedule
from bigbang.secrets import resolve
from bigbang.status import LocationStatus, Mode, RunStatus
from bigbang.store import Ledger, default_ledger_url
from bigbang.store.ledger import RUN_SCOPE, SERVERS_SCOPE, lease_seconds, location_scope

MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class RunOptions:
    mode: str = Mode.REHEARSAL
    seed: int | None = None  # rehearsal: overrides rehearsal.seed
    compression: float | None = None  # rehearsal: simulated seconds per real second; 0: as fast as possible
    failure_rate: float | None = None  # rehearsal: overrides rehearsal.failure_rate
    zero_duration: bool = False  # rehearsal: steps take no time (benchmarks)
    retry_failed: bool = False  # resume: run failed steps again
    parallel_servers: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def inventory_plan(inventory: Inventory, inventory_path: str | Path, mode: str = Mode.REHEARSAL) -> Plan:
    """The plan a new run of this inventory follows: with its stored schedule (`bigbang schedule`), if any."""
    schedule = stored_schedule(inventory_path, inventory)
    return build_plan(inventory, mode, slots=slots_of(schedule) if schedule else None)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + _random.token_hex(2)


@dataclass(frozen=True)
class FrozenRun:
    """A run as the store holds it: its row, its plan and the inventory the plan was made from."""

    row: dict[str, Any]
    plan: Plan
    inventory: Inventory
    plan_version: int


def frozen_run(ledger: Ledger, run_id: str) -> FrozenRun:
    """The run's frozen plan and inventory; what every reader of a run uses instead of the YAML."""
    row = ledger.get_run(run_id)
    if row is None:
        known = ", ".join(r["run_id"] for r in ledger.list_runs(5)) or "none"
        raise RunError(f"no run {run_id} in the ledger {ledger.safe_url}", hint=f"recent runs: {known}")
    key = (ledger.url, run_id, row["plan_version"])
    with _SESSIONS_LOCK:
        cached = _FROZEN.get(key)
    if cached is not None:
        return FrozenRun(row, cached[0], cached[1], row["plan_version"])
    frozen = ledger.frozen_plan(run_id)
    if frozen is None:
        raise RunError(f"run {run_id} has no frozen plan in the ledger {ledger.safe_url}",
                       hint="it was made by an older bigbang: start a new run")
    plan = Plan.from_dict(frozen.plan)
    inventory = Inventory.model_validate(frozen.inventory)
    _remember_frozen(ledger, run_id, row["plan_version"], plan, inventory)
    return FrozenRun(row, plan, inventory, frozen.version)


def _remember_frozen(ledger: Ledger, run_id: str, version: int, plan: Plan, inventory: Inventory) -> None:
    """What this process froze or read of a run's plan version: later readers (the report, other units'
    tasks) take the same values instead of parsing the stored plan again."""
    with _SESSIONS_LOCK:
        _FROZEN[(ledger.url, run_id, version)] = (plan, inventory)


def plan_changes(old: Plan, new: Plan, limit: int = 8) -> list[str]:
    """What a new plan does differently, in words: steps added, removed or changed, and policy changes."""
    before = {s.id: s for s in old.steps()}
    after = {s.id: s for s in new.steps()}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(i for i in set(before) & set(after) if before[i].to_dict() != after[i].to_dict())
    lines = []
    for label, ids in (("added", added), ("removed", removed), ("changed", changed)):
        if ids:
            shown = ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
            lines.append(f"{len(ids)} step{'s' if len(ids) != 1 else ''} {label}: {shown}")
    old_policy, new_policy = old.policy.to_dict(), new.policy.to_dict()
    for key in sorted(old_policy):
        if old_policy[key] != new_policy.get(key):
            lines.append(f"policy {key}: {old_policy[key]} -> {new_policy.get(key)}")
    old_slots = {loc.id: (loc.team, loc.chain, loc.start_offset) for loc in old.locations}
    new_slots = {loc.id: (loc.team, loc.chain, loc.start_offset) for loc in new.locations}
    moved = sorted(lid for lid in set(old_slots) & set(new_slots) if old_slots[lid] != new_slots[lid])
    if moved:
        lines.append(f"{len(moved)} location{'s' if len(moved) != 1 else ''} moved to another team, crew or slot: "
                     + ", ".join(moved[:limit]))
    return lines or ["the plan's digest changed"]


def settings_changes(old: Inventory, new: Inventory) -> list[str]:
    """Sections of the inventory outside the plan that changed (connector settings, rehearsal, support...)."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    skip = {"locations", "servers", "source", "digest"}
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        if key in skip or before.get(key) == after.get(key):
            continue
        if isinstance(before.get(key), dict) and isinstance(after.get(key), dict):
            inner = sorted(k for k in set(before[key]) | set(after[key]) if before[key].get(k) != after[key].get(k))
            changed.extend(f"{key}.{k}" for k in inner)
        else:
            changed.append(key)
    return [f"settings changed: {', '.join(changed)}"] if changed else []


@dataclass
class RunSession:
    inventory: Inventory
    plan: Plan
    ledger: Ledger
    run_id: str
    options: RunOptions
    plan_version: int = 1
    clock_kind: str = "wall"
    clock_origin: float = 0.0
    timeline: Timeline | None = None  # set when every unit of the run plays in this process
    resumed_from: dict[str, Any] | None = None  # the run's row as a resume found it
    _connectors: dict[str, Connector] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pace: Pace | None = None
    _report: Any = None  # the report rendered at the run's end (bigbang.report.ReportFiles)

    @property
    def mode(self) -> str:
        return self.options.mode

    # ------------------------------------------------------------ opening
    @classmethod
    def start(cls, inventory_path: str | Path, options: RunOptions, *, ledger_url: str | None = None,
              run_id: str | None = None) -> RunSession:
        if options.mode not in MODES:
            raise RunError(f"unknown mode '{options.mode}'", hint="use --mode rehearsal or --mode live")
        inventory = load_inventory(inventory_path)
        schedule = stored_schedule(inventory_path, inventory)  # from `bigbang schedule`: teams and slots
        plan = build_plan(inventory, options.mode, slots=slots_of(schedule) if schedule else None)
        ledger = Ledger(ledger_url)
        session = cls(inventory, plan, ledger, run_id or new_run_id(), options,
                      clock_kind="simulated" if simulates(options.mode) else "wall", clock_origin=time.time())
        session.check_connectors()
        if ledger.get_run(session.run_id) is not None:
            raise RunError(f"run {session.run_id} exists already", hint=f"resume it with --resume {session.run_id}")
        plan_json, plan_digest = frozen_json(plan.to_dict())  # once: frozen and digested from the same text
        ledger.create_run(session.run_id, rollout=inventory.rollout.name,
                          inventory=str(Path(inventory_path).resolve()), mode=options.mode,
                          options=options.to_dict(), clock=session.clock_kind, plan=plan_json,
                          inventory_data=inventory.model_dump_json(), plan_digest=plan_digest,
                          inventory_digest=inventory.digest, schedule=schedule)
        ledger.acquire_lease(session.run_id, RUN_SCOPE)  # a new run: nobody else can hold it yet
        session.clock_origin = ledger.get_run(session.run_id)["clock_origin"]  # type: ignore[index]
        _SESSIONS[(session.run_id, ledger.url)] = session
        _remember_frozen(ledger, session.run_id, 1, plan, inventory)  # the report reads it: not parsed again
        return session

    @classmethod
    def resume(cls, run_id: str, *, inventory_path: str | Path | None = None, ledger_url: str | None = None,
               retry_failed: bool = False, compression: float | None = None,
               accept_inventory_changes: bool = False) -> RunSession:
        ledger = Ledger(ledger_url)
        run = frozen_run(ledger, run_id)
        ledger.acquire_lease(run_id, RUN_SCOPE)  # LeaseHeld: another process executes it now
        try:
            return cls._resume(ledger, run, inventory_path, retry_failed, compression, accept_inventory_changes)
        except BaseException:
            ledger.release_lease(run_id, RUN_SCOPE)
            raise

    @classmethod
    def _resume(cls, ledger: Ledger, run: FrozenRun, inventory_path: str | Path | None, retry_failed: bool,
                compression: float | None, accept_inventory_changes: bool) -> RunSession:
        run_id = run.row["run_id"]
        options = replace(RunOptions.from_dict(run.row["options"]), retry_failed=retry_failed)
        if compression is not None:  # pace only: the plan and its timeline stay the same
            options = replace(options, compression=compression)
        plan, inventory, version = run.plan, run.inventory, run.plan_version
        path = Path(inventory_path) if inventory_path else Path(run.row["inventory"])
        if path.exists():
            current = load_inventory(path)
            schedule = ledger.run_schedule(run_id)
            if current.digest == run.inventory.digest:
                current_plan = plan
            elif schedule is not None and schedule.get("inventory_digest") == run.inventory.digest:
                # the run's schedule was made for the frozen inventory: the edit decides the new plan alone
                current_plan = build_plan(current, options.mode)
            else:
                current_plan = build_plan(current, options.mode, slots=slots_of(schedule) if schedule else None)
            if current.digest != run.inventory.digest:
                changes = (plan_changes(plan, current_plan) if current_plan.digest != plan.digest
                           else ["the plan is the same"]) + settings_changes(run.inventory, current)
                if not accept_inventory_changes:
                    raise RunError(
                        f"the inventory at {path} has changed since run {run_id} started:\n  "
                        + "\n  ".join(changes),
                        hint="resume with the frozen plan by restoring the inventory, or add "
                             "--accept-inventory-changes to record the new plan as the run's next version",
                    )
                version = ledger.new_plan_version(run_id, current_plan.to_dict(), current.model_dump(mode="json"),
                                                  current_plan.digest, current.digest, "; ".join(changes))
                plan, inventory = current_plan, current
        session = cls(inventory, plan, ledger, run_id, options, plan_version=version,
                      clock_kind=run.row["clock"], clock_origin=run.row["clock_origin"])
        session.check_connectors()
        session.resumed_from = run.row
        ledger.reopen_run(run_id, options.to_dict(), "retry failed steps" if retry_failed else "")
        _SESSIONS[(run_id, ledger.url)] = session
        _remember_frozen(ledger, run_id, version, plan, inventory)
        return session

    @classmethod
    def attach(cls, run_id: str, ledger_url: str | None = None) -> RunSession:
        """The session of an existing run in this process (created once per process, from the store)."""
        with _SESSIONS_LOCK:
            session = _SESSIONS.get((run_id, ledger_url or default_ledger_url()))
        if session is not None:
            return session
        ledger = Ledger(ledger_url)
        run = frozen_run(ledger, run_id)
        with _SESSIONS_LOCK:
            session = _SESSIONS.get((run_id, ledger.url))
            if session is None:
                session = cls(run.inventory, run.plan, ledger, run_id, RunOptions.from_dict(run.row["options"]),
                              plan_version=run.plan_version, clock_kind=run.row["clock"],
                              clock_origin=run.row["clock_origin"])
                _SESSIONS[(run_id, ledger.url)] = session
        return session

    def location_lease(self, location_id: str) -> AbstractContextManager[None]:
        """Hold the location's lease while running it, unless this process executes the whole run."""
        return self._unit_lease(location_scope(location_id))

    def servers_lease(self) -> AbstractContextManager[None]:
        """Hold the servers' lease while running the prechecks or a server wave, unless this process executes
        the whole run: with `--dispatch dask` they run on a worker that holds no lease of its own."""
        return self._unit_lease(SERVERS_SCOPE)

    @contextmanager
    def _unit_lease(self, scope: str) -> Iterator[None]:
        """A worker re-running a unit whose first worker died waits for that lease to expire."""
        if self.ledger.holds(self.run_id, RUN_SCOPE):
            yield
            return
        self.ledger.acquire_lease(self.run_id, scope, wait=2 * lease_seconds())
        try:
            yield
        finally:
            self.ledger.flush()
            self.ledger.release_lease(self.run_id, scope)

    # ------------------------------------------------------------ the clock
    def play_here(self) -> None:
        """Every unit of the run plays in this process: on a simulated clock, let them agree on the order of
        events (on the wall clock, real time already orders them)."""
        if self.clock_kind != "simulated":
            return
        timeline = Timeline()
        for unit, offset, upstream in self.units():
            timeline.declare(unit, offset, upstream)
        self.timeline = timeline

    def units(self) -> list[tuple[str, float, list[str]]]:
        """(unit, earliest start, upstream units) for prechecks, each server wave and each location."""
        out: list[tuple[str, float, list[str]]] = [("prechecks", 0.0, [])]
        previous = "prechecks"
        for index in range(len(self.plan.waves)):
            out.append((wave_unit(index), 0.0, [previous]))
            previous = wave_unit(index)
        for loc in self.plan.locations:
            upstream = [wave_unit(i) for i in loc.waits_for_waves] or ["prechecks"]
            if loc.after_location:
                upstream.append(location_unit(loc.after_location))
            out.append((location_unit(loc.id), loc.start_offset or 0.0, upstream))
        return out

    def clock_for(self, unit: str, start: float) -> Clock:
        """The clock a unit (prechecks, a server wave, a location) plays on, from `start` on the run's clock."""
        if self.clock_kind != "simulated":
            return WallClock(self.clock_origin)
        if self._pace is None:
            real, at = self.ledger.pace(self.run_id, time.time())
            compression = self.compression()
            self._pace = Pace(compression if compression > 0 else None, real, at)
        pace = self._pace
        if pace.compression and pace.real_origin + (start - pace.sim_origin) / pace.compression < time.time():
            # behind the run's pace (a worker took the location late): play this unit at the asked pace from
            # now instead of racing through it to catch up; its simulated times are the same either way
            pace = Pace(pace.compression, time.time(), start)
        return SimulatedClock(start, pace, self.timeline, unit)

    def compression(self) -> float:
        """Simulated seconds per real second for playback; 0 plays as fast as the machine allows."""
        if self.options.compression is not None:
            return float(self.options.compression)
        return float(self.inventory.rehearsal.compression)

    # ------------------------------------------------------------ connectors
    def connector_names(self) -> set[str]:
        return {s.connector for s in self.plan.steps()} - {INTERNAL_CONNECTOR}

    def check_connectors(self) -> None:
        """Fail before anything runs if a connector the plan needs cannot be used."""
        for name in sorted(self.connector_names()):
            ctype = CONNECTORS.get(name)
            if ctype is None:
                raise LiveModeUnavailable(f"the plan needs connector '{name}', which bigbang does not have")
            if ctype.live and name not in self.inventory.connectors:
                raise LiveModeUnavailable(
                    f"live mode needs settings for the '{name}' connector under connectors.{name} in the inventory",
                    hint="or rehearse with --mode rehearsal",
                )
            self.connector(name)

    def connector(self, name: str) -> Connector:
        with self._lock:
            conn = self._connectors.get(name)
            if conn is None:
                ctype = CONNECTORS[name]
                settings = self.inventory.connectors[name] if ctype.live else self.inventory.rehearsal
                context = ConnectorContext(run_id=self.run_id, inventory=self.inventory, resolve_secret=resolve,
                                           state=self.ledger, options=self.options.to_dict())
                conn = ctype.create(settings, context)
                self._connectors[name] = conn
            return conn

    # ------------------------------------------------------------ the end
    def finish(self, crashed: dict[str, str] | None = None) -> RunStatus:
        """Decide and record how the run ended. `crashed` maps a location whose task or worker died to why."""
        self._report = None
        self.ledger.flush()
        crashed = crashed or {}
        for location_id, why in sorted(crashed.items()):
            self.ledger.add_event(self.run_id, "location.crashed", location_id, f"{location_id}: {why}")
            self.ledger.record_location(self.run_id, location_id, LocationStatus.CRASHED, reason=why)
        self.ledger.flush()
        if crashed:
            status = RunStatus.FAILED
        elif self.ledger.halted_reason(self.run_id):
            status = RunStatus.HALTED
        else:
            status = RunStatus.COMPLETED
        before = self.resumed_from
        unchanged = (before is not None and before["status"] == status and before["finished_at"] is not None
                     and not self.ledger.written_since(self.run_id, before["finished_at"]))
        # a resume that found nothing to do keeps the run's end as it was
        self.ledger.set_run_status(self.run_id, status,
                                   finished_at=before["finished_at"] if before is not None and unchanged else None)
        return status

    def report(self) -> Any:
        """The run's report (bigbang.report.ReportFiles, with the data it was rendered from) as `finish`
        left the run: rendered once, for the flow's artifacts and the command's summary alike."""
        with self._lock:
            if self._report is None:
                from bigbang.report import render_report  # it reads runs through this module

                self._report = render_report(self.ledger, self.run_id)
            return self._report

    def close(self) -> None:
        for conn in self._connectors.values():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's result
                pass
        self._connectors.clear()
        try:
            self.ledger.flush()
        finally:
            self.ledger.release_lease(self.run_id, RUN_SCOPE)
            _SESSIONS.pop((self.run_id, self.ledger.url), None)


    def close_quietly(self) -> None:
        """`close`, for the end of a command: a ledger that fails here has already said why."""
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def wave_unit(index: int) -> str:
    return f"wave-{index + 1}"


def location_unit(location_id: str) -> str:
    return f"location:{location_id}"


_SESSIONS: dict[tuple[str, str], RunSession] = {}
_FROZEN: dict[tuple[str, str, int], tuple[Plan, Inventory]] = {}
_SESSIONS_LOCK = threading.Lock()
