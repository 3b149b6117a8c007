"""The hypercare load forecast: defects per day for the fortnight after the weekend, against staff on duty.

The estimate has three parts (docs/defects.md, "Hypercare forecast", says why):

1. **Known technical work**: every device or server the run left failed, blocked or never done is a
   defect support must work (already in the queue or about to be), and its users call about it.
   They arrive on day 1, with a tail on day 2 (people off on Monday).
2. **Migration fallout**: every migrated device brings some reports in the weeks after a Big Bang
   (lost printer, missing shortcut, a user who cannot sign in). Expected reports per device over
   the fortnight (`BASE_PER_DEVICE`) are spread over the days with an exponential decay
   (`DECAY_DAYS`), and weighted by the site's criticality (a 24/7 care site uses its devices around
   the clock: more hours of use, more reports).
3. **Observed arrivals**: once real reports come in (user and technician defects of the run after the
   weekend), the fallout part is scaled by observed / expected over the days seen so far, shrunk
   towards 1 while there are few reports (`PRIOR_WEIGHT`), and the known work by what is still open.

Capacity is the support staff on duty each day (`support.on_duty`, default: the rollout's support
staff every day) times `support.defects_per_person_day`; a day whose expected load plus the backlog
exceeds it is marked short.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bigbang.inventory.model import Inventory
from bigbang.store.defects import OPEN_STATES, DefectQueue
from bigbang.store.ledger import Ledger

BASE_PER_DEVICE = 0.25  # reports per migrated device over the fortnight after a Big Bang
DECAY_DAYS = 3.0  # the fallout halves roughly every two days
CRITICALITY_LOAD = {"normal": 1.0, "high": 1.2, "critical": 1.5}  # hours of use: 24/7 sites report more
CALLS_PER_FAILED_DEVICE = 0.8  # its user calls about it (besides the defect itself)
CALLS_PER_SERVED_DEVICE = 0.3  # a failed server: each device it serves may call
DAY1_SHARE = 0.7  # known work: 70 % on day 1, the rest on day 2
PRIOR_WEIGHT = 10.0  # observed arrivals count as much as the model once about this many came in


@dataclass
class ForecastDay:
    day: int  # 1 = the first day after the weekend
    date: str
    known: float  # carry-over of the run's failures and unfinished work
    fallout: float  # new reports expected from the migration
    expected: float  # known + fallout, rounded
    staff: int
    capacity: float
    backlog: float  # what is left at the end of the day if the staff work at capacity
    observed: int | None = None  # defects that really arrived that day (so far)
    short: bool = False


@dataclass
class Forecast:
    run_id: str
    rollout: str
    mode: str
    days: list[ForecastDay]
    total_expected: float
    total_capacity: float
    failed_devices: int
    unfinished_devices: int
    failed_servers: int
    devices: int
    users: int
    scale: float  # observed / expected (1.0 before any report came in)
    observed_total: int
    per_location: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decay_weights(days: int) -> list[float]:
    raw = [math.exp(-(d - 1) / DECAY_DAYS) for d in range(1, days + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def _first_day(inventory: Inventory, run: dict[str, Any] | None) -> date:
    window = inventory.rollout.window
    try:
        end = window.end if isinstance(window.end, datetime) else datetime.fromisoformat(str(window.end))
        if end.tzinfo is None:
            end = end.replace(tzinfo=ZoneInfo(window.timezone))
        return end.date() + timedelta(days=1)
    except (TypeError, ValueError):
        stamp = (run or {}).get("finished_at") or (run or {}).get("updated_at") or 0.0
        return datetime.fromtimestamp(stamp, ZoneInfo("UTC")).date() + timedelta(days=1)


def staff_on_duty(inventory: Inventory, days: int) -> list[int]:
    plan = list(inventory.support.on_duty)
    if not plan:
        plan = [sum(1 for m in inventory.rollout.staff if m.role == "support")]
    return [plan[min(i, len(plan) - 1)] for i in range(days)]


def forecast(ledger: Ledger, queue: DefectQueue, run_id: str, inventory: Inventory, *, days: int = 14,
             now: float | None = None) -> Forecast:
    """Defects per day for `days` days after the weekend of `run_id` (its frozen inventory)."""
    import time

    now = time.time() if now is None else now
    run = ledger.get_run(run_id)
    steps = ledger.step_results(run_id)
    status: dict[str, set[str]] = {}
    for rec in steps.values():
        if not rec.kind.startswith("loc."):
            status.setdefault(rec.target, set()).add(str(rec.status))
    failed = {t for t, s in status.items() if "failed" in s}
    unfinished = {t for t, s in status.items() if t not in failed and s - {"succeeded"}}
    servers = {s.name for s in inventory.servers}
    failed_servers = (failed | unfinished) & servers
    served: dict[str, int] = {}
    for loc in inventory.locations:
        for req in loc.requires:
            served[req.lower()] = served.get(req.lower(), 0) + len(loc.devices)

    weights = _decay_weights(days)
    known_total = 0.0
    fallout_total = 0.0
    per_location = []
    users = 0
    devices = 0
    for loc in inventory.locations:
        load = CRITICALITY_LOAD.get(loc.criticality, 1.0)
        n = len(loc.devices)
        people = len({getattr(d, "user", None) or d.hostname for d in loc.devices})
        bad = sum(1 for d in loc.devices if d.hostname in failed or d.hostname in unfinished)
        known = bad * (1 + CALLS_PER_FAILED_DEVICE)
        fallout = (n - bad) * BASE_PER_DEVICE * load  # a device that was not migrated brings no fallout
        known_total += known
        fallout_total += fallout
        users += people
        devices += n
        per_location.append({"location": loc.id, "name": loc.name, "criticality": loc.criticality, "devices": n,
                             "users": people, "failed_or_unfinished": bad,
                             "expected": round(known + fallout, 1)})
    for name in failed_servers:
        known_total += 1 + served.get(name.lower(), 0) * CALLS_PER_SERVED_DEVICE

    # Observed arrivals: people's reports (users, technicians) of this run, by day after the weekend.
    first = _first_day(inventory, run)
    zone = ZoneInfo(inventory.rollout.window.timezone)
    rows = queue.list(run_id=run_id, state="all", limit=None)
    observed: dict[int, int] = {}
    for d in rows:
        if d["source"] in ("user", "field"):
            day = (datetime.fromtimestamp(d["first_seen"], zone).date() - first).days + 1
            if 1 <= day <= days:
                observed[day] = observed.get(day, 0) + 1
    today = (datetime.fromtimestamp(now, zone).date() - first).days + 1
    seen_days = max(0, min(today - 1, days))  # whole days observed so far
    expected_seen = fallout_total * sum(weights[:seen_days])
    observed_seen = sum(n for day, n in observed.items() if day <= seen_days)
    scale = (observed_seen + PRIOR_WEIGHT) / (expected_seen + PRIOR_WEIGHT) if seen_days else 1.0
    if seen_days:  # the known work is what is still open, not what the ledger once said
        still_open = sum(1 for d in rows if d["source"] in ("rollout", "probe") and d["state"] in OPEN_STATES)
        known_total = min(known_total, still_open * (1 + CALLS_PER_FAILED_DEVICE))

    staff = staff_on_duty(inventory, days)
    per_person = inventory.support.defects_per_person_day
    backlog = 0.0
    out: list[ForecastDay] = []
    for i in range(days):
        day = i + 1
        known = known_total * (DAY1_SHARE if day == 1 else (1 - DAY1_SHARE) if day == 2 else 0.0)
        fallout = fallout_total * weights[i] * (scale if day > seen_days else 1.0)
        if day <= seen_days:  # the past: what came in
            known, fallout = 0.0, float(observed.get(day, 0))
        expected = known + fallout
        capacity = staff[i] * per_person
        short = backlog + expected > capacity
        backlog = max(0.0, backlog + expected - capacity)
        out.append(ForecastDay(day=day, date=(first + timedelta(days=i)).isoformat(), known=round(known, 1),
                               fallout=round(fallout, 1), expected=round(expected, 1), staff=staff[i],
                               capacity=round(capacity, 1), backlog=round(backlog, 1),
                               observed=observed.get(day) if day <= max(seen_days, 0) else None, short=short))
    return Forecast(run_id=run_id, rollout=inventory.rollout.name, mode=str((run or {}).get("mode") or ""),
                    days=out, total_expected=round(sum(d.expected for d in out), 1),
                    total_capacity=round(sum(d.capacity for d in out), 1),
                    failed_devices=len(failed - servers), unfinished_devices=len(unfinished - servers),
                    failed_servers=len(failed_servers), devices=devices, users=users, scale=round(scale, 3),
                    observed_total=sum(observed.values()), per_location=per_location)


def format_table(result: Forecast) -> str:
    """The per-day table, 80 columns wide."""
    lines = [f"Hypercare forecast for run {result.run_id} ({result.rollout}, {result.mode or 'unknown mode'})",
             f"{result.devices} devices, {result.users} users; {result.failed_devices} devices failed, "
             f"{result.unfinished_devices} not done, {result.failed_servers} servers down",
             f"{result.observed_total} reports observed so far (fallout scaled x{result.scale:g})",
             "",
             f"{'day':>3}  {'date':10}  {'known':>6}  {'new':>6}  {'expect':>6}  {'staff':>5}  {'capac':>6}  "
             f"{'backlog':>7}  note"]
    for d in result.days:
        note = "SHORT" if d.short else ""
        if d.observed is not None:
            note = (note + " observed").strip()
        lines.append(f"{d.day:>3}  {d.date:10}  {d.known:>6.1f}  {d.fallout:>6.1f}  {d.expected:>6.1f}  "
                     f"{d.staff:>5}  {d.capacity:>6.1f}  {d.backlog:>7.1f}  {note}")
    lines.append(f"total expected {result.total_expected:g}, capacity {result.total_capacity:g}")
    return "\n".join(lines)


def write_chart(result: Forecast, path: Path) -> Path:
    """A PNG: expected defects per day (bars: known work and fallout), capacity (line), backlog (line)."""
    from PIL import Image, ImageDraw, ImageFont

    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = 900, 420
    left, right, top, bottom = 60, 20, 50, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    top_value = max([d.expected for d in result.days] + [d.capacity for d in result.days]
                    + [d.backlog for d in result.days] + [1.0])
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(result.days))
    col = plot_w / n

    def y(value: float) -> float:
        return top + plot_h - plot_h * value / top_value

    for tick in range(0, 6):
        v = top_value * tick / 5
        draw.line([(left, y(v)), (width - right, y(v))], fill=(230, 230, 230))
        draw.text((5, y(v) - 7), f"{v:.0f}", fill="black", font=font)
    for i, d in enumerate(result.days):
        x0 = left + i * col + col * 0.15
        x1 = left + (i + 1) * col - col * 0.15
        draw.rectangle([x0, y(d.known), x1, y(0)], fill=(200, 70, 60))
        draw.rectangle([x0, y(d.known + d.fallout), x1, y(d.known)], fill=(70, 120, 190))
        draw.text((x0, height - bottom + 6), d.date[5:], fill="black", font=font)
    for values, colour in (([d.capacity for d in result.days], (30, 150, 60)),
                           ([d.backlog for d in result.days], (230, 150, 20))):
        points = [(left + (i + 0.5) * col, y(v)) for i, v in enumerate(values)]
        draw.line(points, fill=colour, width=3)
    draw.text((left, 10), f"Hypercare forecast: {result.rollout} ({result.run_id})", fill="black", font=font)
    legend = [((200, 70, 60), "known failures"), ((70, 120, 190), "migration fallout"),
              ((30, 150, 60), "capacity (staff on duty)"), ((230, 150, 20), "backlog")]
    x = left
    for colour, label in legend:
        draw.rectangle([x, 30, x + 12, 42], fill=colour)
        draw.text((x + 16, 29), label, fill="black", font=font)
        x += 30 + int(draw.textlength(label, font=font))
    draw.text((left, height - 22), "defects per day after the weekend", fill="black", font=font)
    img.save(path, "PNG")
    return path
