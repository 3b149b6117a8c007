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
from pathlib import Path
from typing import Any

from bigbang.errors import RunError
from bigbang.store import Ledger

Slots = dict[str, tuple[str, float, int]]  # location id -> (team id, start offset s, crew number)



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


def slots_of(data: dict[str, Any], where: str = "the schedule") -> Slots:
    """location id -> (team, start offset in seconds, crew); a slot without its fields is refused in one line."""
    out: Slots = {}
    for lid, slot in data["slots"].items():
        try:
            out[lid] = (str(slot["team"]), float(slot["offset_s"]), int(slot.get("crew", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = f"no {exc.args[0]}" if isinstance(exc, KeyError) else f"a bad value ({exc})"
            raise RunError(f"{where}: slot {lid} has {missing}",
                           hint="run `bigbang schedule` again, or delete the file to run without a schedule") from None
    return out


def stored_schedule(inventory_path: str | Path, inventory) -> dict[str, Any] | None:
    """The inventory's stored schedule, checked against it; None without one. A schedule made for
    another version of the inventory is refused rather than silently followed or ignored."""
    data = load(inventory_path)
    if data is None:
        return None
    if data.get("inventory_digest") != inventory.digest:
        raise RunError(f"the schedule {schedule_path(inventory_path)} was made for another version of the inventory",
                       hint=f"run `bigbang schedule {inventory_path}` again, or delete the file to run without it")
    slots = slots_of(data, str(schedule_path(inventory_path)))
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

def run_slots(ledger: Ledger, run_id: str) -> Slots | None:
    """The slots of the schedule a run started with (kept in the run's store), if it followed one."""
    data = ledger.run_schedule(run_id)
    return slots_of(data) if data else None
