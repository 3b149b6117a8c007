"""A run session: the inventory, its plan, the ledger and the connectors of one run.

`start` creates a run, `resume` reopens one after a crash or Ctrl-C, `attach`
opens an existing run from another process (a Prefect worker) without changing
it. Sessions are cached per process and run id, so the CLI and the flow it
starts share one.
"""

from __future__ import annotations

import secrets as _random
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bigbang.connectors import CONNECTORS, Connector, ConnectorContext
from bigbang.errors import LiveModeUnavailable, RunError
from bigbang.inventory import Inventory, load_inventory
from bigbang.ledger import Ledger, default_ledger_url
from bigbang.plan import INTERNAL_CONNECTOR, Plan, build_plan
from bigbang.schedule.start import wait_for_start
from bigbang.schedule.store import remember as remember_schedule
from bigbang.schedule.store import run_slots, slots_of, stored_schedule
from bigbang.secrets import resolve

MODES = ("rehearsal", "live")


@dataclass(frozen=True)
class RunOptions:
    mode: str = "rehearsal"
    seed: int | None = None  # rehearsal: overrides rehearsal.seed
    compression: float | None = None  # rehearsal: simulated seconds per real second
    failure_rate: float | None = None  # rehearsal: overrides rehearsal.failure_rate
    zero_duration: bool = False  # rehearsal: no waiting at all (benchmarks)
    retry_failed: bool = False  # resume: run failed steps again
    parallel_servers: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def inventory_plan(inventory: Inventory, inventory_path: str | Path, mode: str = "rehearsal") -> Plan:
    """The plan a new run of this inventory follows: with its stored schedule (`bigbang schedule`), if any."""
    schedule = stored_schedule(inventory_path, inventory)
    return build_plan(inventory, mode, slots=slots_of(schedule) if schedule else None)


def run_plan(ledger: Ledger, run_id: str, inventory: Inventory, mode: str) -> Plan:
    """The plan an existing run follows: with the schedule stored for that run, if any."""
    return build_plan(inventory, mode, slots=run_slots(ledger, run_id))


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + _random.token_hex(2)


class RunSession:
    def __init__(self, inventory: Inventory, plan: Plan, ledger: Ledger, run_id: str, options: RunOptions):
        self.inventory = inventory
        self.plan = plan
        self.ledger = ledger
        self.run_id = run_id
        self.options = options
        self._connectors: dict[str, Connector] = {}
        self._lock = threading.Lock()

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
        session = cls(inventory, plan, ledger, run_id or new_run_id(), options)
        session.check_connectors()
        if ledger.get_run(session.run_id) is not None:
            raise RunError(f"run {session.run_id} exists already", hint=f"resume it with --resume {session.run_id}")
        ledger.create_run(session.run_id, rollout=inventory.rollout.name,
                          inventory=str(Path(inventory_path).resolve()), inventory_digest=inventory.digest,
                          plan_digest=plan.digest, mode=options.mode, options=options.to_dict())
        if schedule:
            remember_schedule(ledger, session.run_id, schedule)
        _SESSIONS[(session.run_id, ledger.url)] = session
        return session

    @classmethod
    def resume(cls, run_id: str, *, inventory_path: str | Path | None = None, ledger_url: str | None = None,
               retry_failed: bool = False, compression: float | None = None) -> RunSession:
        ledger = Ledger(ledger_url)
        row = ledger.get_run(run_id)
        if row is None:
            known = ", ".join(r["run_id"] for r in ledger.list_runs(5)) or "none"
            raise RunError(f"no run {run_id} in the ledger {ledger.safe_url}", hint=f"recent runs: {known}")
        path = Path(inventory_path) if inventory_path else Path(row["inventory"])
        inventory = load_inventory(path)
        options = replace(RunOptions.from_dict(row["options"]), retry_failed=retry_failed)
        if compression is not None:  # pace only: the plan stays the same
            options = replace(options, compression=compression)
        plan = run_plan(ledger, run_id, inventory, options.mode)
        if plan.digest != row["plan_digest"]:
            raise RunError(
                f"the plan of run {run_id} has changed since it started (the inventory at {path} was edited)",
                hint="restore the inventory, or start a new run",
            )
        session = cls(inventory, plan, ledger, run_id, options)
        session.check_connectors()
        ledger.reopen_run(run_id, options.to_dict(), "retry failed steps" if retry_failed else "")
        _SESSIONS[(run_id, ledger.url)] = session
        return session

    @classmethod
    def attach(cls, run_id: str, ledger_url: str | None = None) -> RunSession:
        """The session of an existing run in this process (created once per process)."""
        with _SESSIONS_LOCK:
            key = (run_id, ledger_url or default_ledger_url())
            session = _SESSIONS.get(key)
            if session is not None:
                return session
            ledger = Ledger(ledger_url)
            row = ledger.get_run(run_id)
            if row is None:
                raise RunError(f"no run {run_id} in the ledger {ledger.safe_url}")
            inventory = load_inventory(row["inventory"])
            options = RunOptions.from_dict(row["options"])
            plan = run_plan(ledger, run_id, inventory, options.mode)
            session = cls(inventory, plan, ledger, run_id, options)
            _SESSIONS[(run_id, ledger.url)] = session
            return session

    # ------------------------------------------------------------ connectors
    def connector_names(self) -> set[str]:
        return {s.connector for s in self.plan.steps()} - {INTERNAL_CONNECTOR}

    def check_connectors(self) -> None:
        """Fail before anything runs if a connector the plan needs cannot be used."""
        for name in sorted(self.connector_names()):
            ctype = CONNECTORS.get(name)
            if ctype is None:
                raise LiveModeUnavailable(f"the plan needs connector '{name}', which bigbang does not have")
            if name != "simulated" and name not in self.inventory.connectors:
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
                settings = self.inventory.rehearsal if name == "simulated" else self.inventory.connectors[name]
                context = ConnectorContext(run_id=self.run_id, inventory=self.inventory, resolve_secret=resolve,
                                           state=self.ledger, options=self.options.to_dict())
                conn = ctype.create(settings, context)
                self._connectors[name] = conn
            return conn

    def wait_before_retry(self) -> None:
        if self.mode == "rehearsal" and self.options.zero_duration:
            return
        time.sleep(self.plan.retry_delay / self.compression())

    def compression(self) -> float:
        """Simulated seconds per real second (1 when live)."""
        if self.mode != "rehearsal":
            return 1.0
        return self.options.compression or self.inventory.rehearsal.compression

    def wait_for_signoff(self, location_id: str, poll: float = 2.0) -> dict[str, Any] | None:
        """The location's sign-off record, waiting for it up to the gate's timeout."""
        timeout = self.inventory.rollout.signoff_timeout
        deadline = time.monotonic() + timeout / self.compression()
        while True:
            signed = self.ledger.signoff(self.run_id, location_id)
            if signed is not None or time.monotonic() >= deadline:
                return signed
            time.sleep(min(poll, max(0.05, deadline - time.monotonic())))

    def wait_until_offset(self, offset: float, location_id: str | None = None) -> str:
        """Hold a location until `offset` seconds after the run's first step (in the run's compressed
        time), or until its technician checks in, as the inventory's `schedule.start` says."""
        return wait_for_start(self, location_id, offset)

    def close(self) -> None:
        for conn in self._connectors.values():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's result
                pass
        self._connectors.clear()
        self.ledger.flush()
        _SESSIONS.pop((self.run_id, self.ledger.url), None)


_SESSIONS: dict[tuple[str, str], RunSession] = {}
_SESSIONS_LOCK = threading.Lock()
