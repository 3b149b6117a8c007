"""The ops lead's board: totals, filters, sorting and a plan-vs-actual timeline for a whole weekend.

Times are seconds on the run's timeline: a rehearsal's timeline starts at the rollout window's opening
(simulated clock), a live run's at its `clock_origin` (wall clock). Planned times come from the run's
stored schedule (or the inventory's `schedule.json`), else from the plan's `start_offset`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SLIP = 15 * 60.0  # later than planned by more than this: a slip
ROW_H, BAR_H, LABEL_W, WIDTH = 22, 8, 130, 1400
STATUS_ORDER = ("running", "in_progress", "awaiting_signoff", "signed_off", "blocked", "halted",
                "completed_with_failures", "failed", "succeeded", "skipped", "planned")
SORTS = ("id", "name", "team", "region", "status", "devices", "checked", "problems", "planned", "actual")


@dataclass
class Timeline:
    """Where second 0 of the run's timeline is, in real time, and the schedule's slots."""

    origin: float  # epoch seconds of timeline second 0
    slots: dict[str, dict[str, Any]]
    now: float | None  # timeline seconds: the latest moment the run has reached
    window_start: float
    window_end: float
    replanned: dict[str, Any] | None = None  # the schedule's `replanned` (bigbang schedule --replan): when, why

    @classmethod
    def of(cls, fapp, run_id: str | None) -> Timeline:
        window = fapp.inventory.rollout.window
        start, end = window.start_utc.timestamp(), window.start_utc.timestamp() + (
            window.end - window.start).total_seconds()
        schedule = None
        run = fapp.ledger.get_run(run_id) if run_id else None
        if run_id:
            schedule = fapp.ledger.run_schedule(run_id)
        if schedule is None:
            try:
                from bigbang.schedule.store import stored_schedule

                schedule = stored_schedule(fapp.inventory_path, fapp.inventory)
            except Exception:  # noqa: BLE001 - a broken schedule file must not break the board
                schedule = None
        simulated = run is not None and run.get("clock") == "simulated"
        origin = start if (run is None or simulated) else float(run.get("clock_origin") or start)
        now: float | None = None
        if run is not None:
            if simulated:
                rows = fapp.ledger.location_results(run_id)
                ends = [r.get(k) for r in rows.values() for k in ("clock_start", "clock_end") if r.get(k) is not None]
                now = max(ends) if ends else 0.0
            else:
                now = time.time() - origin
        replanned = (schedule or {}).get("replanned")
        return cls(origin=origin, slots=(schedule or {}).get("slots", {}), now=now, window_start=start - origin,
                   window_end=end - origin, replanned=replanned if isinstance(replanned, dict) else None)

    def at(self, seconds: float | None) -> float | None:
        """Epoch seconds of a moment on the timeline (for the `clock` filter)."""
        return None if seconds is None else self.origin + seconds

    def planned(self, location_id: str, loc_plan) -> tuple[float | None, float | None]:
        slot = self.slots.get(location_id)
        if slot:
            visits = slot.get("visits") or []
            start = float(slot.get("offset_s", visits[0]["offset_s"] if visits else 0.0))
            end = max((float(v["end_s"]) for v in visits), default=None)
            return start + self.window_start, (end + self.window_start) if end is not None else None
        if loc_plan.start_offset is not None:
            return loc_plan.start_offset + self.window_start, None
        return None, None

    def crew(self, location_id: str, loc_plan) -> str:
        slot = self.slots.get(location_id)
        if slot and slot.get("crew") is not None:
            return f"{slot.get('team', loc_plan.team)} · {slot['crew']}"
        return f"{loc_plan.team} · {loc_plan.chain + 1}"

    @staticmethod
    def actual(row: dict[str, Any] | None, which: str) -> float | None:
        if not row:
            return None
        value = row.get("clock_start" if which == "start" else "clock_end")
        return float(value) if value is not None else None


@dataclass
class BoardView:
    rows: list[dict[str, Any]]
    totals: list[tuple[str, int]]
    teams: list[str]
    regions: list[str]
    statuses: list[str]
    filters: dict[str, Any]
    sort: str
    desc: bool
    count: int
    timeline: dict[str, Any] = field(default_factory=dict)

    def sort_link(self, column: str) -> str:
        from urllib.parse import urlencode

        params = {k: v for k, v in self.filters.items() if v}
        params.update(sort=column, desc=int(column == self.sort and not self.desc))
        return "/board?" + urlencode(params)

    def status_link(self, status: str) -> str:
        from urllib.parse import urlencode

        params = {k: v for k, v in self.filters.items() if v and k != "status"}
        params.update(status=status, sort=self.sort, desc=int(self.desc))
        return "/board?" + urlencode(params)


def _key(sort: str):
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    big = float("inf")
    keys = {
        "id": lambda r: r["id"], "name": lambda r: r["name"].lower(), "team": lambda r: (r["team"], r["position"]),
        "region": lambda r: (r["region"], r["id"]), "status": lambda r: (order.get(r["status"], 99), r["id"]),
        "devices": lambda r: (r["devices_failed"], r["devices"]), "checked": lambda r: r["checked"] / max(1, r["item_total"]),
        "problems": lambda r: r["problems"],
        "planned": lambda r: (r["plan_start"] if r["plan_start"] is not None else big, r["team"], r["position"]),
        "actual": lambda r: (r["actual_start"] if r["actual_start"] is not None else big, r["id"]),
    }
    return keys.get(sort, keys["planned"])


def board_view(fapp, run_id: str | None, rows: list[dict[str, Any]], *, team: str, region: str, status: str,
               problems: bool, q: str, sort: str, desc: bool) -> BoardView:
    totals: dict[str, int] = {}
    for r in rows:
        totals[r["status"]] = totals.get(r["status"], 0) + 1
    needle = q.strip().lower()
    shown = [r for r in rows
             if (not team or r["team"] == team) and (not region or r["region"] == region)
             and (not status or r["status"] == status) and (not problems or r["problems"] or r["devices_failed"])
             and (not needle or needle in f"{r['id']} {r['name']} {r['address']} {r['team']} {r['region']}".lower())]
    sort = sort if sort in SORTS else "planned"
    shown.sort(key=_key(sort), reverse=desc)
    view = BoardView(
        rows=shown, totals=sorted(totals.items(), key=lambda kv: STATUS_ORDER.index(kv[0]) if kv[0] in STATUS_ORDER
                                  else 99),
        teams=sorted({r["team"] for r in rows}), regions=sorted({r["region"] for r in rows if r["region"]}),
        statuses=[s for s in STATUS_ORDER if s in totals],
        filters={"team": team, "region": region, "status": status, "problems": int(problems), "q": q},
        sort=sort, desc=desc, count=len(rows))
    view.timeline = timeline_svg(fapp, run_id, shown)
    return view


def timeline_svg(fapp, run_id: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of the plan-vs-actual chart: one row per crew, planned (outline) and actual bars."""
    line = Timeline.of(fapp, run_id)
    crews: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        crews.setdefault(r["crew"], []).append(r)
    times = [t for r in rows for t in (r["plan_start"], r["plan_end"], r["actual_start"], r["actual_end"])
             if t is not None]
    lo = min([line.window_start, *times])
    hi = max([line.window_end, *times, *([line.now] if line.now is not None else [])])
    span = max(hi - lo, 3600.0)
    scale = (WIDTH - LABEL_W - 10) / span

    def x(seconds: float) -> float:
        return round(LABEL_W + (seconds - lo) * scale, 1)

    bars, labels = [], []
    for i, crew in enumerate(sorted(crews)):
        y = 24 + i * ROW_H
        labels.append({"x": 4, "y": y + 12, "text": crew})
        for r in crews[crew]:
            if r["plan_start"] is not None:
                end = r["plan_end"] if r["plan_end"] is not None else r["plan_start"] + 1800
                bars.append({"kind": "plan", "x": x(r["plan_start"]), "y": y + 1, "w": max(2.0, x(end) - x(r["plan_start"])),
                             "h": BAR_H, "title": f"{r['id']} planned", "id": r["id"]})
            if r["actual_start"] is not None:
                end = r["actual_end"] if r["actual_end"] is not None else (line.now or r["actual_start"])
                slipped = r["plan_start"] is not None and (
                    r["actual_start"] - r["plan_start"] > SLIP
                    or (r["plan_end"] is not None and end - r["plan_end"] > SLIP))
                bad = r["status"] in ("halted", "blocked", "failed") or r["devices_failed"]
                kind = "bad" if bad else ("slip" if slipped else ("ok" if r["actual_end"] is not None else "run"))
                bars.append({"kind": kind, "x": x(r["actual_start"]), "y": y + BAR_H + 3,
                             "w": max(2.0, x(end) - x(r["actual_start"])), "h": BAR_H,
                             "title": f"{r['id']} {r['status']}", "id": r["id"]})
    ticks = []
    step = 6 * 3600.0 if span > 36 * 3600 else (3 * 3600.0 if span > 12 * 3600 else 3600.0)
    first = lo - ((lo + line.origin) % step)
    t = first
    while t <= hi:
        if t >= lo:
            ticks.append({"x": x(t), "at": line.at(t)})
        t += step
    height = 24 + max(1, len(crews)) * ROW_H + 6
    return {"width": WIDTH, "height": height, "bars": bars, "labels": labels, "ticks": ticks,
            "now": x(line.now) if line.now is not None else None, "now_at": line.at(line.now),
            "crews": len(crews), "label_w": LABEL_W, **_replanned(line)}


def _replanned(line: Timeline) -> dict[str, Any]:
    """The board's note on a re-plan: when (`at_min`: minutes on the run's clock, as `--replan` read it)
    and why; nothing when the run follows the schedule it started with."""
    note = line.replanned
    if not note or note.get("at_min") is None:
        return {}
    return {"replanned_at": line.at(float(note["at_min"]) * 60),
            "replanned_reason": str(note.get("reason", ""))}
