"""Planned vs actual: each location's scheduled slot beside what the run did, with slips flagged.

Times are minutes on the run's clock (`bigbang.clock`): simulated minutes in a rehearsal, real
minutes live, counted from when the run's work began — the window's opening, as the schedule's are.
"""

from __future__ import annotations

from typing import Any

from bigbang.errors import RunError
from bigbang.store import Ledger

TOLERANCE_MIN = 15.0


def compare_run(ledger: Ledger, run_id: str, tolerance_min: float = TOLERANCE_MIN) -> dict[str, Any]:
    run = ledger.get_run(run_id)
    if run is None:
        raise RunError(f"no run {run_id} in the ledger {ledger.safe_url}")
    schedule = ledger.run_schedule(run_id)
    if schedule is None:
        raise RunError(f"run {run_id} did not use a schedule",
                       hint="run `bigbang schedule INVENTORY` before `bigbang run` to plan slots")
    steps = ledger.step_results(run_id)
    results = ledger.location_results(run_id)
    window = schedule["window"]["minutes"]
    rows, slipped = [], 0
    by_location: dict[str, dict[str, Any]] = {}  # a split location: from its first visit's start to its last's end
    for v in schedule["visits"]:
        seen = by_location.get(v["location"])
        if seen is None:
            by_location[v["location"]] = dict(v)
        else:
            seen["start_min"] = min(seen["start_min"], v["start_min"])
            seen["end_min"] = max(seen["end_min"], v["end_min"])
            if v["start_min"] < seen["start_min"] or v.get("visit", 1) == 1:
                seen["team"], seen["crew"] = v["team"], v["crew"]
    for visit in sorted(by_location.values(), key=lambda v: (v["start_min"], v["location"])):
        lid = visit["location"]
        pre = steps.get(f"{lid}:loc.precheck")
        result = results.get(lid)
        actual_start = actual_end = None
        if pre is not None and pre.clock_start is not None:
            actual_start = pre.clock_start / 60
        if result is not None and result.get("clock_end") is not None and result.get("finished_at"):
            actual_end = result["clock_end"] / 60
        flags = []
        if actual_start is None:
            flags.append("not started")
        elif actual_start - visit["start_min"] > tolerance_min:
            flags.append("started late")
        if actual_end is not None and actual_end - visit["end_min"] > tolerance_min:
            flags.append("ran over")
        if actual_end is not None and actual_end > window:
            flags.append("after the window")
        if actual_end is None and actual_start is not None:
            flags.append("not finished")
        if flags:
            slipped += 1
        rows.append({
            "location": lid, "team": visit["team"], "crew": visit["crew"],
            "planned_start_min": visit["start_min"], "planned_end_min": visit["end_min"],
            "actual_start_min": _round(actual_start), "actual_end_min": _round(actual_end),
            "start_slip_min": _round(actual_start - visit["start_min"]) if actual_start is not None else None,
            "end_slip_min": _round(actual_end - visit["end_min"]) if actual_end is not None else None,
            "status": result["status"] if result else "pending", "flags": flags,
        })
    return {"run_id": run_id, "mode": run["mode"], "clock": run["clock"], "tolerance_min": tolerance_min,
            "window_min": window, "locations": rows, "slipped": slipped,
            "planned_makespan_min": schedule["makespan_min"],
            "actual_makespan_min": _round(max((r["actual_end_min"] for r in rows if r["actual_end_min"] is not None),
                                              default=None) if rows else None)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
