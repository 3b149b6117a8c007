"""How likely is the weekend to fit? Monte Carlo trials of a schedule.

Each trial plays the schedule as the weekend would go, in pure Python (no Prefect, no
ledger): every step of every server and device takes a random duration (mean +- jitter,
uniform, as the simulated connector draws them: `rehearsal.steps.<kind>.duration/jitter`,
else the connector's DEFAULT_DURATIONS and a 20 % jitter) and fails at its rate
(`rehearsal.steps.<kind>.failure_rate`, else `rehearsal.failure_rate`, plus injected
failures); a failed attempt is retried after `failure_policy.retry_delay`, at most
`failure_policy.retries` times, and each attempt costs its own duration. Servers run
wave after wave, 8 at a time; a location's devices `parallel_devices` at a time, after
the setup. Each crew keeps the schedule's order: a visit starts at its slot, or later
when the crew is still busy (plus travel) or its servers are late, as soon as the
site is open; work still left when its access opening closes is finished at the
next opening (the crew comes back rather than leaving the site half done).

One random stream, drawn in a fixed order: the same schedule and seed give the same
numbers.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bigbang.connectors.simulated import DEFAULT_DURATIONS
from bigbang.inventory.model import Inventory
from bigbang.schedule.core import Schedule
from bigbang.schedule.problem import PARALLEL_SERVERS, THIN_CLIENT_STEPS, WORKSTATION_STEPS, intersect, with_breaks
from bigbang.schedule.solve import UNSCHEDULED

DEFAULT_JITTER = 0.2  # the simulated connector's jitter when a step kind has no settings


@dataclass(frozen=True)
class StepModel:
    mean: float  # seconds per attempt
    jitter: float
    rate: float  # chance that one attempt fails


@dataclass
class RiskResult:
    trials: int
    seed: int
    window_min: int
    planned_min: int
    ends: list[int]  # per trial: minute the last visit ends (inf-free: runs over are counted as they end)
    p_fit: float
    p50_min: int
    p90_min: int
    p50_local: str
    p90_local: str
    window_local: str
    planned_local: str
    late_locations: list[tuple[str, int]] = field(default_factory=list)  # location, trials it ended late
    last_locations: list[tuple[str, int]] = field(default_factory=list)  # location, trials it ended last
    resources: list[tuple[str, int]] = field(default_factory=list)  # what made the end late, trials
    retries_per_trial: float = 0.0
    failed_devices_per_trial: float = 0.0
    servers_planned_min: int = 0  # when the schedule expects the last server wave done
    servers_p50_min: int = 0  # ... and when it was done in the median trial

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "seed": self.seed, "window_min": self.window_min,
                "window_end": self.window_local, "planned_end_min": self.planned_min, "planned_end": self.planned_local,
                "p_fit": round(self.p_fit, 4), "p50_end_min": self.p50_min, "p50_end": self.p50_local,
                "p90_end_min": self.p90_min, "p90_end": self.p90_local,
                "late_locations": [{"location": lid, "trials": n} for lid, n in self.late_locations],
                "last_locations": [{"location": lid, "trials": n} for lid, n in self.last_locations],
                "resources": [{"resource": r, "trials": n} for r, n in self.resources],
                "retries_per_trial": round(self.retries_per_trial, 1),
                "failed_devices_per_trial": round(self.failed_devices_per_trial, 2),
                "servers_planned_min": self.servers_planned_min, "servers_p50_min": self.servers_p50_min,
                "ends_min": self.ends}


def step_models(inventory: Inventory) -> dict[str, StepModel]:
    reh = inventory.rehearsal
    out = {}
    for kind, default in DEFAULT_DURATIONS.items():
        sim = reh.steps.get(kind)
        mean = sim.duration if sim and sim.duration else float(default)
        jitter = sim.jitter if sim else DEFAULT_JITTER
        rate = sim.failure_rate if sim and sim.failure_rate is not None else reh.failure_rate
        out[kind] = StepModel(float(mean), float(jitter), float(rate))
    return out


class _Attempts:
    """Draws one device's or server's steps with retries; counts what it cost."""

    def __init__(self, rng: random.Random, models: dict[str, StepModel], retries: int, delay: float):
        self.rng, self.models, self.retries, self.delay = rng, models, retries, delay
        self.retried = 0
        self.failed = 0

    def run(self, kinds: tuple[str, ...], injected: dict[str, int] | None = None) -> float:
        """Seconds the steps take; a step that fails all its attempts fails the device (the rest is skipped)."""
        rnd = self.rng.random
        total = 0.0
        for kind in kinds:
            m = self.models[kind]
            forced = injected.get(kind, injected.get("*", 0)) if injected else 0
            ok = False
            for attempt in range(1, self.retries + 2):
                total += m.mean * (1 + m.jitter * (2 * rnd() - 1))
                fails = attempt <= forced or (m.rate > 0 and rnd() < m.rate)
                if not fails:
                    ok = True
                    break
                if attempt <= self.retries:
                    total += self.delay
                    self.retried += 1
            if not ok:
                self.failed += 1
                return total
        return total


def _pool(jobs: list[float], machines: int) -> float:
    if not jobs:
        return 0.0
    loads = [0.0] * min(machines, len(jobs))
    for d in jobs:
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def simulate(schedule: Schedule, inventory: Inventory, trials: int = 100, seed: int = 0) -> RiskResult:
    p, sol = schedule.problem, schedule.solution
    rng = random.Random(seed)
    models = step_models(inventory)
    policy = inventory.rollout.failure_policy
    setup_s = inventory.schedule.setup
    teams = inventory.team_by_id
    attempts = _Attempts(rng, models, policy.retries, policy.retry_delay)

    # what each visit is: its devices (with any injected failures) and its crew's pace
    injections = inventory.rehearsal.inject

    def injected_for(target: str, location: str) -> dict[str, int] | None:
        out: dict[str, int] = {}
        for inj in injections:
            if inj.target.lower() in (target.lower(), location.lower()):
                out[inj.step or "*"] = 10**6 if inj.attempts == "all" else int(inj.attempts)
        return out or None

    visit_devices: dict[int, list[tuple[tuple[str, ...], dict[str, int] | None, float]]] = {}
    steps: tuple[str, ...]
    for j, job in enumerate(p.jobs):
        v = sol.visits[j]
        if v.crew == UNSCHEDULED:
            continue
        loc = inventory.location_by_id[job.site]
        a, b = job.devices_range if job.devices_range != (0, 0) else (0, len(loc.devices))
        devices: list[tuple[tuple[str, ...], dict[str, int] | None, float]] = []
        everything = loc.devices
        for index in range(a, b):
            dev = everything[index]
            kind = "workstation" if index < len(loc.workstations) else "thin_client"
            steps = WORKSTATION_STEPS if kind == "workstation" else THIN_CLIENT_STEPS
            name = getattr(dev, "hostname", "")
            rate = teams[p.crews[v.crew].team].capacity.devices_per_hour.get(kind)  # type: ignore[call-overload]
            devices.append((steps, injected_for(name, loc.id) if injections else None, 3600 / rate if rate else 0.0))
        devices.sort(key=lambda d: -sum(models[s].mean for s in d[0]))  # the pool takes the longest first
        visit_devices[j] = devices

    # the server phase: which wave each visit waits for
    wave_of = {name: i for i, (names, _) in enumerate(p.servers.waves) for name in names}
    need = {j: (wave_of[job.release_servers[0]] if job.release_servers else -1) for j, job in enumerate(p.jobs)}
    existing = {s.name.lower(): s.existing for s in inventory.servers}

    openings = {}
    for j, job in enumerate(p.jobs):
        v = sol.visits[j]
        if v.crew != UNSCHEDULED:
            openings[j] = intersect(job.access, p.crews[v.crew].availability)

    ends: list[int] = []
    servers_done: list[int] = []
    late_count: Counter[str] = Counter()
    last_count: Counter[str] = Counter()
    resource_count: Counter[str] = Counter()
    for _ in range(trials):
        # servers: prechecks (and snapshots) 8 at a time, then each wave
        pre = [attempts.run(("srv.precheck", "srv.snapshot") if existing.get(s.name.lower()) else ("srv.precheck",))
               for s in inventory.servers]
        t = _pool(pre, PARALLEL_SERVERS)
        wave_done = []
        prechecks = math.ceil(t / 60)
        for names, _ in p.servers.waves:
            t += _pool([attempts.run(("srv.provision", "srv.verify")) for _ in names], PARALLEL_SERVERS)
            wave_done.append(math.ceil(t / 60 - 1e-9))
        servers_done.append(wave_done[-1] if wave_done else prechecks)

        end_of: dict[int, int] = {}
        cause: dict[int, str] = {}
        for c, seq in enumerate(sol.sequences):
            crew = p.crews[c]
            free, prev = 0, None
            for j in seq:
                v = sol.visits[j]
                seconds = setup_s
                pool, serial = [], 0.0
                for steps, inj, rate_s in visit_devices[j]:
                    d = attempts.run(steps, inj)
                    if rate_s:  # a measured rate: this device's share, scaled by how its steps went
                        serial += rate_s * d / max(1e-9, sum(models[s].mean for s in steps))
                    else:
                        pool.append(d)
                seconds += serial + _pool(pool, teams[crew.team].capacity.parallel_devices)
                work = with_breaks(max(1, math.ceil(seconds / 60 - 1e-9)), p.break_after, p.break_length)
                travel = p.base_travel[c][j] if prev is None else p.travel[prev][j]
                release = wave_done[need[j]] if need[j] >= 0 else prechecks
                ready = max(v.start, free + travel, release, p.not_before)
                start, end, paused = _work_through(openings[j], ready, work)
                why = "on time"
                if free + travel > v.start and free + travel >= release:
                    why = f"crew {crew.id}"
                elif release > v.start:
                    why = "servers" + (f" (wave {need[j] + 1})" if need[j] >= 0 else " (prechecks)")
                if start > ready or paused:
                    why = f"access hours of {p.jobs[j].site}"
                cause[j] = why
                end_of[j] = end
                free, prev = end_of[j], j
        makespan = max(end_of.values(), default=0)
        ends.append(makespan)
        for j, e in end_of.items():
            if e > p.window:
                late_count[p.jobs[j].site] += 1
        last = max(end_of, key=lambda j: (end_of[j], -j)) if end_of else None
        if last is not None:
            last_count[p.jobs[last].site] += 1
            if makespan > p.window or makespan > sol.makespan:
                resource_count[_root(p, sol, end_of, cause, last)] += 1
                resource_count[f"team {p.crews[sol.visits[last].crew].team}"] += 1

    ordered = sorted(ends)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else 0

    def when(minute: int) -> str:
        return f"{p.local(minute):%a %d %b %H:%M}"

    p50, p90 = quantile(0.5), quantile(0.9)
    return RiskResult(
        trials=trials, seed=seed, window_min=p.window, planned_min=sol.makespan, ends=ends,
        p_fit=sum(1 for e in ends if e <= p.window) / trials if trials else 0.0,
        p50_min=p50, p90_min=p90, p50_local=when(p50), p90_local=when(p90), window_local=when(p.window),
        planned_local=when(sol.makespan),
        late_locations=_top(late_count), last_locations=_top(last_count), resources=_top(resource_count),
        retries_per_trial=attempts.retried / trials if trials else 0.0,
        failed_devices_per_trial=attempts.failed / trials if trials else 0.0,
        servers_planned_min=p.servers.waves[-1][1] if p.servers.waves else p.servers.prechecks_done,
        servers_p50_min=sorted(servers_done)[len(servers_done) // 2] if servers_done else 0,
    )


def _work_through(openings: list[tuple[int, int]], ready: int, work: int) -> tuple[int, int, bool]:
    """(start, end, paused) of a visit: the crew starts as soon as it is ready and the site is open; work
    left when the opening closes is finished at the next opening (paused)."""
    k = bisect.bisect_right([hi for _, hi in openings], ready)
    rest = openings[k:]
    if not rest:
        return ready, ready + work, False  # past the last opening: it runs over
    start = t = max(rest[0][0], ready)
    left, paused = work, False
    for lo, hi in rest:
        t = max(t, lo)
        if t + left <= hi:
            return start, t + left, paused
        left -= hi - t
        paused = True
    return start, t + left, paused


def _root(p, sol, end_of: dict[int, int], cause: dict[int, str], j: int) -> str:
    """Walk back along the crew's visits from the last one to what first made it late."""
    seq = sol.sequences[sol.visits[j].crew]
    pos = seq.index(j)
    while pos >= 0:
        why = cause[seq[pos]]
        if why.startswith("crew") and pos > 0:
            pos -= 1
            continue
        if why == "on time" or why.startswith("crew"):
            v = sol.visits[seq[pos]]
            return f"crew {p.crews[v.crew].id} (work at {p.jobs[seq[pos]].site} ran over its plan)"
        return why
    return "on time"


def _top(counter: Counter, n: int = 5) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# ---------------------------------------------------------------- chart

def chart(result: RiskResult, schedule: Schedule, width: int = 900, height: int = 360):
    """A histogram of when the weekend ends, with the window's end, the plan and P50/P90 marked."""
    from bigbang.schedule.render import Chart, Line, Rect, Text

    p = schedule.problem
    lo = min(min(result.ends, default=0), result.planned_min, p.window) - 30
    hi = max(max(result.ends, default=0), p.window) + 30
    bins = 40
    size = max(1.0, (hi - lo) / bins)
    counts = [0] * bins
    for e in result.ends:
        counts[min(bins - 1, int((e - lo) / size))] += 1
    left, right, top, bottom = 60, 20, 40, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    top_count = max(counts) or 1

    def x(minute: float) -> float:
        return left + (minute - lo) / (hi - lo) * plot_w

    items: list = [Text(10, 20, f"{p.rollout}: when the weekend ends in {result.trials} trials (seed {result.seed}) "
                                f"— fits in {result.p_fit:.0%}", 13, bold=True)]
    items.append(Line(left, top + plot_h, left + plot_w, top + plot_h, "#555"))
    for k, n in enumerate(counts):
        if n:
            h = n / top_count * plot_h
            start = lo + k * size
            fill = "#e45756" if start + size / 2 > p.window else "#4c78a8"
            items.append(Rect(x(start), top + plot_h - h, max(1.0, plot_w / bins - 1), h, fill,
                              f"{n} trials end {p.local(start):%a %H:%M}–{p.local(start + size):%H:%M}"))
    for k in range(5):
        minute = lo + (hi - lo) * k / 4
        items.append(Text(x(minute), top + plot_h + 16, f"{p.local(minute):%a %H:%M}", 10, "#555", "middle"))
    items.append(Text(left - 6, top + 10, str(top_count), 10, "#555", "end"))
    items.append(Text(left - 6, top + plot_h, "0", 10, "#555", "end"))
    marks = [(p.window, "#d62728", f"window closes {result.window_local}", True),
             (result.planned_min, "#2ca02c", f"plan {result.planned_local}", False),
             (result.p50_min, "#333", f"P50 {result.p50_local}", False),
             (result.p90_min, "#ff7f0e", f"P90 {result.p90_local}", False)]
    for k, (minute, colour, label, dash) in enumerate(marks):
        items.append(Line(x(minute), top, x(minute), top + plot_h, colour, 2.0, dash))
        items.append(Text(left + 10 + k * (plot_w / 4), height - 14, label, 11, colour))
    return Chart(width, height, tuple(items))


def write_chart(result: RiskResult, schedule: Schedule, out) -> dict[str, Any]:
    """risk.svg (by hand) and risk.png (Pillow) in `out`."""
    from pathlib import Path

    from bigbang.schedule.render import to_png, to_svg

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawing = chart(result, schedule)
    svg = out / "risk.svg"
    svg.write_text(to_svg(drawing), encoding="utf-8")
    files: dict[str, Any] = {"svg": svg}
    try:
        files["png"] = to_png(drawing, out / "risk.png")
    except ImportError:  # Pillow missing: the SVG alone
        pass
    return files
