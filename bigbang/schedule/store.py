"""Where a schedule lives: next to the inventory, and with each run that used it.

`bigbang schedule PATH` writes `PATH/schedule.json` (or `NAME.schedule.json` next to
an inventory file). A run started on that inventory uses it — each location goes to
its scheduled team and crew and does not start before its slot — and the run keeps
its own copy in the ledger's `run_schedules` table, so a resume, another worker or
`bigbang schedule compare` sees the schedule the run started with, whatever
happens to the file afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from bigbang.errors import RunError

Slots = dict[str, tuple[str, float, int]]  # location id -> (team id, start offset s, crew number)

_metadata = MetaData()
run_schedules = Table(
    "run_schedules", _metadata,
    Column("run_id", String(80), primary_key=True),
    Column("schedule", Text, nullable=False),  # the stored schedule.json, as the run used it
    Column("saved_at", Float, nullable=False),
)


def schedule_path(inventory_path: str | Path) -> Path:
    path = Path(inventory_path)
    return path / "schedule.json" if path.is_dir() else path.with_name(path.stem + ".schedule.json")


def save(inventory_path: str | Path, data: dict[str, Any]) -> Path:
    target = schedule_path(inventory_path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)  # atomic: a run starting now reads the old or the new file, never half of one
    return target


def load(inventory_path: str | Path) -> dict[str, Any] | None:
    target = schedule_path(inventory_path)
    if not target.exists():
        return None
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read the schedule {target}: {exc}",
                       hint="run `bigbang schedule` again, or delete the file to run without a schedule") from None
    if not isinstance(data, dict) or not isinstance(data.get("slots"), dict):
        raise RunError(f"{target} is not a schedule written by `bigbang schedule`",
                       hint="run `bigbang schedule` again, or delete the file")
    return data


def slots_of(data: dict[str, Any]) -> Slots:
    return {lid: (s["team"], float(s["offset_s"]), int(s.get("crew", 0))) for lid, s in data["slots"].items()}


def stored_schedule(inventory_path: str | Path, inventory) -> dict[str, Any] | None:
    """The inventory's stored schedule, checked against it; None without one. A schedule made for
    another version of the inventory is refused rather than silently followed or ignored."""
    data = load(inventory_path)
    if data is None:
        return None
    if data.get("inventory_digest") != inventory.digest:
        raise RunError(f"the schedule {schedule_path(inventory_path)} was made for another version of the inventory",
                       hint=f"run `bigbang schedule {inventory_path}` again, or delete the file to run without it")
    slots = slots_of(data)
    known = inventory.team_by_id
    for lid, (team, _, crew) in slots.items():
        if lid not in inventory.location_by_id or team not in known or crew >= known[team].capacity.parallel_locations:
            raise RunError(f"the schedule {schedule_path(inventory_path)} does not match the inventory ({lid})",
                           hint=f"run `bigbang schedule {inventory_path}` again")
    missing = set(inventory.location_by_id) - set(slots)
    if missing:
        raise RunError(f"the schedule {schedule_path(inventory_path)} leaves out {', '.join(sorted(missing)[:5])}"
                       + (" ..." if len(missing) > 5 else ""),
                       hint="those locations do not fit; fix the inventory (see `bigbang schedule`) "
                            "or delete the file to run without a schedule")
    return data


# ---------------------------------------------------------------- the run's copy

def remember(ledger, run_id: str, data: dict[str, Any]) -> None:
    _ensure(ledger)
    insert = postgresql.insert if ledger.dialect == "postgresql" else sqlite.insert
    stmt = insert(run_schedules).values(run_id=run_id, schedule=json.dumps(data, sort_keys=True), saved_at=time.time())
    stmt = stmt.on_conflict_do_nothing(index_elements=["run_id"])
    with ledger.engine.begin() as conn:
        conn.execute(stmt)


def of_run(ledger, run_id: str) -> dict[str, Any] | None:
    _ensure(ledger)
    with ledger.engine.connect() as conn:
        text = conn.execute(select(run_schedules.c.schedule).where(run_schedules.c.run_id == run_id)).scalar()
    return json.loads(text) if text else None


def run_slots(ledger, run_id: str) -> Slots | None:
    data = of_run(ledger, run_id)
    return slots_of(data) if data else None


_READY: set[str] = set()


def run_origin(ledger, run_id: str, created_at: float) -> float:
    """When the run's work began (its first step), the moment a schedule's offsets count from; the run's
    creation time until then. Not the creation time itself: starting the flow (Prefect's start-up) can
    take many seconds, which a compressed rehearsal would turn into hours of slip."""
    from sqlalchemy import func

    from bigbang.ledger import steps

    with ledger.engine.connect() as conn:
        first = conn.execute(select(func.min(steps.c.started_at)).where(steps.c.run_id == run_id)).scalar()
    return float(first) if first is not None else created_at


def _ensure(ledger) -> None:
    if ledger.url in _READY:
        return
    try:
        _metadata.create_all(ledger.engine)
    except OperationalError:  # another process created it at the same moment
        _metadata.create_all(ledger.engine)
    _READY.add(ledger.url)
