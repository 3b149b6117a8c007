"""The scheduling problem, built from an inventory.

All times are whole minutes of real elapsed time after the window opens (so a
daylight-saving change inside the window is counted right). Each team works
`parallel_locations` locations at once: one *crew* per parallel location. A
location is one job done by one crew without a break, inside one of its
access-hour openings and inside its crew's shift hours, after the server waves
holding its required servers are done. Moving between locations takes travel time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property

from bigbang.connectors.simulated import DEFAULT_DURATIONS
from bigbang.errors import ConfigError
from bigbang.inventory.model import DAYS, AccessWindow, Inventory, Location, Team
from bigbang.plan import STEP_KINDS, _waves

EXTRA_DAYS = 7  # schedule past the window's end, to say by how much it does not fit
PARALLEL_SERVERS = 8  # RunOptions.parallel_servers: server steps of one wave run this many at a time
WORKSTATION_STEPS = ("ws.prestage", "ws.image", "ws.verify")
THIN_CLIENT_STEPS = ("tc.reassign", "tc.verify")

Interval = tuple[int, int]  # [start, end) in minutes after the window opens


@dataclass(frozen=True)
class Crew:
    id: str  # team id, or team id#k when the team works several locations at once
    team: str
    availability: tuple[Interval, ...]  # when it works (its technicians' shifts)


@dataclass(frozen=True)
class Job:
    """One location's work."""

    id: str
    name: str
    address: str
    criticality: str
    workstations: int
    thin_clients: int
    home_team: str
    release: int  # earliest start: the server waves it needs are done
    release_servers: tuple[str, ...]  # the servers of the last wave it waits for (its dependency)
    access: tuple[Interval, ...]  # openings inside the horizon
    access_text: str
    duration: dict[str, int]  # team id -> minutes on site

    @property
    def devices(self) -> int:
        return self.workstations + self.thin_clients


@dataclass(frozen=True)
class ServerPhase:
    prechecks_done: int
    waves: tuple[tuple[tuple[str, ...], int], ...]  # (servers, minute the wave is done)


@dataclass(frozen=True)
class Estimates:
    seconds: dict[str, float]  # step kind -> seconds per attempt
    sources: dict[str, str]  # step kind -> where the number came from


@dataclass
class Problem:
    rollout: str
    inventory_digest: str
    timezone: str
    start_utc: datetime
    window: int  # minutes the window is open
    horizon: int
    jobs: list[Job]
    crews: list[Crew]
    travel: list[list[int]]  # job index -> job index -> minutes
    base_travel: list[list[int]]  # crew index -> job index -> minutes from the team's base
    servers: ServerPhase
    estimates: Estimates
    keep_teams: bool = False
    technicians: dict[str, tuple[str, ...]] = field(default_factory=dict)  # team id -> names, for itineraries

    @cached_property
    def job_index(self) -> dict[str, int]:
        return {job.id: i for i, job in enumerate(self.jobs)}

    def allowed(self, j: int, c: int) -> bool:
        crew = self.crews[c]
        return not self.keep_teams or self.jobs[j].home_team == crew.team

    @cached_property
    def _starts(self) -> dict[tuple[int, int], tuple[Interval, ...]]:
        return {}

    def start_windows(self, j: int, c: int) -> tuple[Interval, ...]:
        """Closed ranges [lo, hi] of start minutes at which job j fits on crew c (empty: never)."""
        key = (j, c)
        cached = self._starts.get(key)
        if cached is not None:
            return cached
        out: tuple[Interval, ...] = ()
        if self.allowed(j, c):
            job, crew = self.jobs[j], self.crews[c]
            p = job.duration[crew.team]
            ranges = []
            for a, b in intersect(job.access, crew.availability):
                lo = max(a, job.release)
                if b - p >= lo:
                    ranges.append((lo, b - p))
            out = tuple(ranges)
        self._starts[key] = out
        return out

    def earliest_start(self, j: int, c: int, ready: int) -> int | None:
        for lo, hi in self.start_windows(j, c):
            if hi >= ready:
                return max(lo, ready)
        return None

    def local(self, minute: float) -> datetime:
        return (self.start_utc + timedelta(minutes=minute)).astimezone(zone(self.timezone))


def zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


# ---------------------------------------------------------------- time

def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    a, b = sorted(a), sorted(b)
    out, i, k = [], 0, 0
    while i < len(a) and k < len(b):
        lo, hi = max(a[i][0], b[k][0]), min(a[i][1], b[k][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[k][1]:
            i += 1
        else:
            k += 1
    return out


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def openings(hours: list[AccessWindow], start_local: datetime, tz: str, horizon: int) -> list[Interval]:
    """Weekly recurring access hours as minute intervals of [0, horizon); empty hours: always open."""
    if not hours:
        return [(0, horizon)]
    z = zone(tz)
    start_utc = start_local.replace(tzinfo=z).astimezone(UTC)
    out = []
    first = start_local.date() - timedelta(days=1)
    for d in range(horizon // 1440 + 3):
        day: date = first + timedelta(days=d)
        name = DAYS[day.weekday()]
        for aw in hours:
            if name not in aw.days:
                continue
            lo = _minute(datetime.combine(day, aw.start), z, start_utc)
            end = datetime.combine(day, aw.end)
            if aw.end >= time(23, 59, 59):  # "24:00": open until midnight
                end = datetime.combine(day + timedelta(days=1), time(0, 0))
            hi = _minute(end, z, start_utc)
            lo, hi = max(lo, 0), min(hi, horizon)
            if lo < hi:
                out.append((lo, hi))
    return merge(out)


def _minute(local: datetime, z, start_utc: datetime) -> int:
    return math.floor((local.replace(tzinfo=z).astimezone(UTC) - start_utc).total_seconds() / 60)


def describe_hours(hours: list[AccessWindow]) -> str:
    if not hours:
        return "24/7"
    parts = []
    for aw in hours:
        days = ",".join(aw.days) if len(aw.days) < 7 else "daily"
        end = "24:00" if aw.end >= time(23, 59, 59) else f"{aw.end:%H:%M}"
        parts.append(f"{days} {aw.start:%H:%M}-{end}")
    return "; ".join(parts)


# ---------------------------------------------------------------- estimates

def estimate_steps(inventory: Inventory, measured: dict[str, float] | None = None,
                   measured_from: str = "") -> Estimates:
    """Seconds per step kind: measured in a previous run, else the inventory's estimates, else defaults."""
    seconds, sources = {}, {}
    settings = inventory.schedule
    for kind in STEP_KINDS:
        sim = inventory.rehearsal.steps.get(kind)
        if measured and kind in measured:
            seconds[kind], sources[kind] = measured[kind], f"measured in {measured_from}"
        elif kind in settings.step_durations:
            seconds[kind], sources[kind] = settings.step_durations[kind], "schedule.step_durations"
        elif sim is not None and sim.duration:
            seconds[kind], sources[kind] = sim.duration, "rehearsal.steps"
        else:
            seconds[kind], sources[kind] = float(DEFAULT_DURATIONS.get(kind, 0.0)), "default"
    return Estimates(seconds, sources)


def measured_durations(ledger, run_id: str) -> dict[str, float]:
    """Mean duration per step kind of a previous run's succeeded or failed steps (retries included)."""
    from bigbang.errors import RunError

    if ledger.get_run(run_id) is None:
        raise RunError(f"no run {run_id} in the ledger {ledger.safe_url}", hint="see `bigbang report --list`")
    totals: dict[str, list[float]] = {}
    for rec in ledger.step_results(run_id).values():
        if rec.status not in ("succeeded", "failed"):
            continue
        if rec.clock_start is not None and rec.clock_end is not None:
            value = rec.clock_end - rec.clock_start  # on the run's clock: simulated seconds in rehearsals
        elif rec.started_at is not None and rec.finished_at is not None:
            value = rec.finished_at - rec.started_at
        else:
            continue
        totals.setdefault(rec.kind, []).append(value)
    if not any(k in totals for k in (*WORKSTATION_STEPS, *THIN_CLIENT_STEPS)):
        raise RunError(f"run {run_id} has no finished device steps to measure durations from",
                       hint="use a run that got past the server phase, or leave out --from-run")
    return {k: sum(v) / len(v) for k, v in totals.items() if v}


def location_minutes(loc: Location, team: Team, est: Estimates, setup: float) -> int:
    """Minutes a team needs on site: setup, then devices `parallel_devices` at a time."""
    cap = team.capacity
    seconds = setup
    pools = []
    for kind, count, steps in (("workstation", len(loc.workstations), WORKSTATION_STEPS),
                               ("thin_client", len(loc.thin_clients), THIN_CLIENT_STEPS)):
        if not count:
            continue
        if kind in cap.devices_per_hour:
            seconds += count / cap.devices_per_hour[kind] * 3600
        else:
            pools += [sum(est.seconds[s] for s in steps)] * count
    seconds += _lpt(pools, cap.parallel_devices)
    return max(1, math.ceil(seconds / 60 - 1e-9))


def _lpt(jobs: list[float], machines: int) -> float:
    """Makespan of longest-first list scheduling (the device pool's own order is longest-first too)."""
    if not jobs:
        return 0.0
    loads = [0.0] * min(machines, len(jobs))
    for d in sorted(jobs, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def server_phase(inventory: Inventory, est: Estimates) -> ServerPhase:
    """When each server wave is done, as the runner runs them: prechecks, then wave after wave."""
    pre = [est.seconds["srv.precheck"] + (est.seconds["srv.snapshot"] if s.existing else 0.0)
           for s in inventory.servers]
    t = _lpt(pre, PARALLEL_SERVERS)
    prechecks_done = math.ceil(t / 60)
    waves = []
    for names in _waves(inventory.servers):
        t += _lpt([est.seconds["srv.provision"] + est.seconds["srv.verify"]] * len(names), PARALLEL_SERVERS)
        waves.append((tuple(names), math.ceil(t / 60 - 1e-9)))
    return ServerPhase(prechecks_done, tuple(waves))


# ---------------------------------------------------------------- travel

def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def _travel_lookup(inventory: Inventory):
    matrix = inventory.schedule.travel
    settings = inventory.schedule

    def minutes(src_id: str, src_xy, dst_id: str, dst_xy) -> int:
        if src_id == dst_id:
            return 0
        for a, b in ((src_id, dst_id), (dst_id, src_id)):
            if a in matrix and b in matrix[a]:
                return math.ceil(matrix[a][b] / 60 - 1e-9)
        if src_xy is not None and dst_xy is not None:
            km = haversine_km(src_xy, dst_xy) * settings.road_factor
            return math.ceil(km / settings.travel_speed_kmh * 60 - 1e-9)
        return math.ceil(settings.travel_default / 60 - 1e-9)

    return minutes


# ---------------------------------------------------------------- building

def build_problem(inventory: Inventory, *, measured: dict[str, float] | None = None, measured_from: str = "",
                  extra_crews: dict[str, int] | None = None, drop: Iterable[str] = ()) -> Problem:
    """The problem for `inventory`. `extra_crews` adds crews to teams and `drop` leaves locations out
    (both for what-if answers: "another crew", "a second weekend")."""
    _check_settings(inventory)
    est = estimate_steps(inventory, measured, measured_from)
    w = inventory.rollout.window
    # in UTC: subtracting two datetimes of the same zone ignores a daylight-saving change between them
    window = math.floor((w.end_utc.astimezone(UTC) - w.start_utc.astimezone(UTC))
                        .total_seconds() / 60)
    horizon = window + EXTRA_DAYS * 1440
    phase = server_phase(inventory, est)
    wave_of = {name: i for i, (names, _) in enumerate(phase.waves) for name in names}
    setup = inventory.schedule.setup
    teams = inventory.teams
    dropped = set(drop)

    crews: list[Crew] = []
    for team in teams:
        shifts = [tech.shifts for tech in team.technicians]
        if not shifts or any(not s for s in shifts):
            availability = [(0, horizon)]
        else:
            availability = merge(iv for s in shifts for iv in openings(s, w.start, w.timezone, horizon))
        n = team.capacity.parallel_locations + (extra_crews or {}).get(team.id, 0)
        for k in range(n):
            crews.append(Crew(team.id if n == 1 else f"{team.id}#{k + 1}", team.id, tuple(availability)))

    jobs: list[Job] = []
    locations = [loc for loc in inventory.locations if loc.id not in dropped]
    for loc in locations:
        needed = [wave_of[r.lower()] for r in loc.requires]
        if needed:
            last = max(needed)
            release = phase.waves[last][1]
            release_servers = tuple(sorted(r.lower() for r in loc.requires if wave_of[r.lower()] == last))
        else:
            release, release_servers = phase.prechecks_done, ()
        jobs.append(Job(
            id=loc.id, name=loc.name, address=loc.address, criticality=loc.criticality,
            workstations=len(loc.workstations), thin_clients=len(loc.thin_clients), home_team=loc.team, release=release,
            release_servers=release_servers,
            access=tuple(openings(loc.access_hours, w.start, w.timezone, horizon)),
            access_text=describe_hours(loc.access_hours),
            duration={t.id: location_minutes(loc, t, est, setup) for t in teams},
        ))

    minutes = _travel_lookup(inventory)
    travel = [[minutes(a.id, a.coordinates, b.id, b.coordinates) for b in locations] for a in locations]
    team_by_id = inventory.team_by_id
    base_travel = []
    for crew in crews:
        team = team_by_id[crew.team]
        has_base = team.base is not None or team.id in inventory.schedule.travel
        base_travel.append([minutes(team.id, team.base, loc.id, loc.coordinates) if has_base else 0
                            for loc in locations])
    return Problem(
        rollout=inventory.rollout.name, inventory_digest=inventory.digest, timezone=w.timezone,
        start_utc=w.start_utc.astimezone(UTC), window=window, horizon=horizon, jobs=jobs, crews=crews,
        travel=travel, base_travel=base_travel, servers=phase, estimates=est,
        keep_teams=inventory.schedule.keep_teams,
        technicians={t.id: tuple(tech.name for tech in t.technicians) for t in teams},
    )


def _check_settings(inventory: Inventory) -> None:
    known = set(inventory.location_by_id) | set(inventory.team_by_id)
    for src, row in inventory.schedule.travel.items():
        if src not in known:
            raise ConfigError(f"schedule.travel.{src}: unknown location or team id",
                              hint="keys of the travel matrix are location ids (or team ids for a team's base)")
        for dst in row:
            if dst not in inventory.location_by_id:
                raise ConfigError(f"schedule.travel.{src}.{dst}: unknown location id",
                                  hint="travel goes to a location id")
    for kind in inventory.schedule.step_durations:
        if kind not in STEP_KINDS:
            raise ConfigError(f"schedule.step_durations.{kind}: unknown step kind",
                              hint="known: " + ", ".join(STEP_KINDS))
    if not inventory.teams:
        raise ConfigError("the inventory has no teams to schedule", hint="add teams: with at least one team")
