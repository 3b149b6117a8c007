"""The scheduling problem, built from an inventory.

All times are whole minutes of real elapsed time after the window opens (so a
daylight-saving change inside the window is counted right). Each team works
`parallel_locations` locations at once: one *crew* per parallel location. A
location is one job done by one crew without a break, inside one of its
access-hour openings and inside its crew's shift hours, after the server waves
holding its required servers are done. Moving between locations takes travel time.

A location too long for any one opening is split into *visits* (jobs of their own):
its devices in the plan's order (workstations, then thin clients) are cut into
contiguous groups; the visits of one *lane* are made by the same crew in device
order, each no shorter than `schedule.split.min_visit`; when the inventory allows
several crews at once (`schedule.split.crews_at_once`) and the location has enough
devices, it is cut into lanes that different crews may work at the same time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
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
    skills: frozenset[str] = frozenset()  # what its technicians can do, together
    people: tuple[str, ...] = ()  # its technicians' names (all of the team's when it has too few)
    base: tuple[float, float] | None = None  # where it sets out from: a technician's home, else the team's base


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
    location: str = ""  # the location's id (the job's id is LOCATION/k for the k-th visit of a split location)
    visit: int = 1  # 1-based number of this visit among the location's visits
    visits: int = 1  # how many visits the location is split into (1: not split)
    lane: int = 0  # visits of one lane are made by one crew, in order; lanes may run at the same time
    prev: int | None = None  # job index of the previous visit of this lane (same crew, ends before this starts)
    devices_range: tuple[int, int] = (0, 0)  # [first, last) in the location's device order
    split_reason: str = ""  # why the location was split, in words
    skills: tuple[str, ...] = ()  # skills its crew needs (schedule.skills)
    whole_min: int = 0  # split locations: a lower bound of the location's work however it is split

    @property
    def devices(self) -> int:
        return self.workstations + self.thin_clients

    @property
    def site(self) -> str:
        return self.location or self.id


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
    min_visit: int = 0  # minutes: no visit of a split location is shorter
    crews_at_once: int = 1  # schedule.split.crews_at_once
    # re-solving during the weekend: work already done or under way (job index -> crew index, start, end)
    # stays as it is; nothing else starts before `not_before`
    fixed: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    not_before: int = 0
    people_notes: tuple[str, ...] = ()  # shifts cut for the rest between shifts or the maximum working time
    # schedule.breaks, in minutes (0: not modelled): a visit's duration already holds the breaks inside it;
    # between visits `visit_start` adds one when the crew would otherwise work longer than break_after
    break_after: int = 0
    break_length: int = 0

    @cached_property
    def next_visit(self) -> dict[int, int]:
        """job index -> the next visit of its lane."""
        return {job.prev: j for j, job in enumerate(self.jobs) if job.prev is not None}

    def chained(self, j: int) -> bool:
        """A visit of a split location's lane: it moves only with its whole lane."""
        return self.jobs[j].prev is not None or j in self.next_visit

    def lane_of(self, j: int) -> list[int]:
        """All visits of j's lane, in order (just [j] for a location in one piece)."""
        while self.jobs[j].prev is not None:
            j = self.jobs[j].prev  # type: ignore[assignment]
        out = [j]
        while out[-1] in self.next_visit:
            out.append(self.next_visit[out[-1]])
        return out

    @cached_property
    def sites(self) -> dict[str, list[int]]:
        """location id -> its job indices (one, or its visits in order)."""
        out: dict[str, list[int]] = {}
        for j, job in enumerate(self.jobs):
            out.setdefault(job.site, []).append(j)
        return out

    @cached_property
    def job_index(self) -> dict[str, int]:
        return {job.id: i for i, job in enumerate(self.jobs)}

    def allowed(self, j: int, c: int) -> bool:
        crew, job = self.crews[c], self.jobs[j]
        if job.skills and not set(job.skills) <= crew.skills:
            return False
        return not self.keep_teams or job.home_team == crew.team

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
        if j in self.fixed:
            fc, fs, _ = self.fixed[j]
            out = ((fs, fs),) if fc == c else ()
        elif self.allowed(j, c):
            job, crew = self.jobs[j], self.crews[c]
            out = start_ranges(job.access, crew.availability, max(job.release, self.not_before),
                               job.duration[crew.team])
        self._starts[key] = out
        return out

    def duration(self, j: int, c: int) -> int:
        if j in self.fixed:
            _, fs, fe = self.fixed[j]
            return fe - fs
        return self.jobs[j].duration[self.crews[c].team]

    def earliest_start(self, j: int, c: int, ready: int) -> int | None:
        if j in self.fixed:  # done or under way: where it really is, whatever the plan says
            return self.fixed[j][1] if self.fixed[j][0] == c else None
        for lo, hi in self.start_windows(j, c):
            if hi >= ready:
                return max(lo, ready)
        return None

    def visit_start(self, j: int, c: int, free: int, travel: int, worked: int) -> tuple[int, int, int] | None:
        """(start, break taken before setting out, minutes worked without a break at the end) of job j on
        crew c, free at `free` after `worked` minutes without a break, `travel` away; None: it does not fit.
        Waiting at least a break's length counts as the break."""
        start = self.earliest_start(j, c, free + travel)
        if start is None or not self.break_after:
            return None if start is None else (start, 0, 0)
        after, length = self.break_after, self.break_length
        d = self.duration(j, c)
        if start - free - travel >= length:
            worked = 0
        pause = 0
        if worked and j not in self.fixed and worked + travel + min(d, after) > after:
            later = self.earliest_start(j, c, free + length + travel)
            if later is None:
                return None
            start, pause, worked = later, length, 0
        inside = breaks_inside(d, after, length)
        tail = d - inside * (after + length)  # worked since the visit's last break inside it
        return start, pause, tail if inside else worked + travel + d

    def local(self, minute: float) -> datetime:
        return (self.start_utc + timedelta(minutes=minute)).astimezone(zone(self.timezone))


def with_breaks(minutes: int, after: int, length: int) -> int:
    """Minutes on site of `minutes` of work with a break of `length` after each `after` of it (the work
    pauses: a crew's technicians take it together)."""
    return minutes + length * ((minutes - 1) // after) if after and minutes > 0 else minutes


def breaks_inside(on_site: int, after: int, length: int) -> int:
    """How many breaks `with_breaks` put into a visit of `on_site` minutes."""
    return 0 if not after or on_site <= after else -(-(on_site - after) // (after + length))


def start_ranges(access: Iterable[Interval], availability: Iterable[Interval], release: int,
                 p: int) -> tuple[Interval, ...]:
    """Closed ranges of start minutes at which p minutes of work fit inside one opening, after release."""
    ranges = []
    for a, b in intersect(access, availability):
        lo = max(a, release)
        if b - p >= lo:
            ranges.append((lo, b - p))
    return tuple(ranges)


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


def location_minutes(loc: Location, team: Team, est: Estimates, setup: float,
                     breaks: tuple[int, int] = (0, 0)) -> int:
    """Minutes a team needs on site: setup, then devices `parallel_devices` at a time (and the breaks)."""
    return group_minutes(len(loc.workstations), len(loc.thin_clients), team, est, setup, breaks)


def group_minutes(workstations: int, thin_clients: int, team: Team, est: Estimates, setup: float,
                  breaks: tuple[int, int] = (0, 0)) -> int:
    """Minutes a team needs on site for this many devices (one visit): setup, then the devices; with
    `breaks` (after, length in minutes), the breaks inside the visit."""
    cap = team.capacity
    seconds = setup
    pools = []
    for kind, count, steps in (("workstation", workstations, WORKSTATION_STEPS),
                               ("thin_client", thin_clients, THIN_CLIENT_STEPS)):
        if not count:
            continue
        if kind in cap.devices_per_hour:
            seconds += count / cap.devices_per_hour[kind] * 3600
        else:
            pools += [sum(est.seconds[s] for s in steps)] * count
    seconds += _lpt(pools, cap.parallel_devices)
    return with_breaks(max(1, math.ceil(seconds / 60 - 1e-9)), *breaks)


def _device_seconds(kind: str, team: Team, est: Estimates) -> float:
    """Crew-seconds one device takes, spread over the team's parallel devices."""
    rate = team.capacity.devices_per_hour.get(kind)  # type: ignore[call-overload]
    if rate:
        return 3600 / rate
    steps = WORKSTATION_STEPS if kind == "workstation" else THIN_CLIENT_STEPS
    return sum(est.seconds[s] for s in steps) / team.capacity.parallel_devices


def work_lower_bound(workstations: int, thin_clients: int, team: Team, est: Estimates, setup: float) -> int:
    """Minutes of work however the devices are split into visits (each visit takes at least its
    devices' work spread over all parallel devices, and there is at least one setup)."""
    seconds = setup + workstations * _device_seconds("workstation", team, est) \
        + thin_clients * _device_seconds("thin_client", team, est)
    return max(1, math.floor(seconds / 60 + 1e-9))


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
    notes: list[str] = []
    rest = math.ceil(inventory.schedule.min_rest / 60 - 1e-9)
    pause = inventory.schedule.breaks
    breaks = (0, 0) if pause is None else (math.floor(pause.after / 60), math.ceil(pause.length / 60 - 1e-9))
    for team in teams:
        n = team.capacity.parallel_locations + (extra_crews or {}).get(team.id, 0)
        hours = {tech.id: working_time(tech, w.start, w.timezone, horizon, rest, notes) for tech in team.technicians}
        for k in range(n):
            # the team's technicians shared out over its crews; a crew left without one works as the whole team
            members = team.technicians[k::n] or team.technicians
            spans = [hours[tech.id] for tech in members]
            availability = [(0, horizon)] if not spans or any(s is None for s in spans) else \
                merge(iv for s in spans for iv in s or [])
            home = next((tech.base for tech in members if tech.base is not None), team.base)
            crews.append(Crew(team.id if n == 1 else f"{team.id}#{k + 1}", team.id, tuple(availability),
                              frozenset(skill for tech in members for skill in tech.skills),
                              tuple(tech.name for tech in members), home))

    jobs: list[Job] = []
    locations = [loc for loc in inventory.locations if loc.id not in dropped]
    keep = inventory.schedule.keep_teams
    team_crew: dict[str, Crew] = {}
    for crew in crews:  # per team, the crew with the most working time that has the skills asked anywhere
        best = team_crew.get(crew.team)
        if best is None or _minutes_of(crew.availability) > _minutes_of(best.availability):
            team_crew[crew.team] = crew
    sites: list[Location] = []  # per job: its location
    for loc in locations:
        needed = [wave_of[r.lower()] for r in loc.requires]
        if needed:
            last = max(needed)
            release = phase.waves[last][1]
            release_servers = tuple(sorted(r.lower() for r in loc.requires if wave_of[r.lower()] == last))
        else:
            release, release_servers = phase.prechecks_done, ()
        job = Job(
            id=loc.id, name=loc.name, address=loc.address, criticality=loc.criticality,
            workstations=len(loc.workstations), thin_clients=len(loc.thin_clients), home_team=loc.team, release=release,
            release_servers=release_servers,
            access=tuple(openings(loc.access_hours, w.start, w.timezone, horizon)),
            access_text=describe_hours(loc.access_hours),
            duration={t.id: location_minutes(loc, t, est, setup, breaks) for t in teams},
            location=loc.id, devices_range=(0, len(loc.devices)),
            skills=tuple(inventory.schedule.skills.get(loc.id, ())),
        )
        able = [t for t in teams if t.id in team_crew and (not keep or t.id == loc.team)]
        able_ids = {t.id for t in able}
        whole = any(start_ranges(job.access, crew.availability, release, job.duration[crew.team])
                    for crew in crews if crew.team in able_ids and set(job.skills) <= crew.skills)
        parts = None if whole or not inventory.schedule.split.allow else \
            split_location(job, able, team_crew, est, setup, inventory.schedule.split, window, breaks)
        base = len(jobs)
        for part in parts or [job]:
            jobs.append(part if part.prev is None else replace(part, prev=base + part.prev))
            sites.append(loc)

    minutes = _travel_lookup(inventory)
    travel = [[minutes(a.id, a.coordinates, b.id, b.coordinates) for b in sites] for a in sites]
    team_by_id = inventory.team_by_id
    base_travel = []
    for crew in crews:
        team = team_by_id[crew.team]
        has_base = crew.base is not None or team.id in inventory.schedule.travel
        base_travel.append([minutes(team.id, crew.base, loc.id, loc.coordinates) if has_base else 0
                            for loc in sites])
    return Problem(
        rollout=inventory.rollout.name, inventory_digest=inventory.digest, timezone=w.timezone,
        start_utc=w.start_utc.astimezone(UTC), window=window, horizon=horizon, jobs=jobs, crews=crews,
        travel=travel, base_travel=base_travel, servers=phase, estimates=est,
        keep_teams=inventory.schedule.keep_teams,
        technicians={t.id: tuple(tech.name for tech in t.technicians) for t in teams},
        min_visit=math.ceil(inventory.schedule.split.min_visit / 60 - 1e-9),
        crews_at_once=inventory.schedule.split.crews_at_once,
        people_notes=tuple(notes), break_after=breaks[0], break_length=breaks[1],
    )


def _minutes_of(intervals: Iterable[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def working_time(tech, start_local: datetime, tz: str, horizon: int, rest: int,
                 notes: list[str]) -> list[Interval] | None:
    """When a technician works (None: no shifts given, all weekend): their shifts, each cut to
    `max_hours`, and a shift that begins less than `rest` minutes after the previous one ends begins
    later (the rest between shifts, 11 hours by default). Each cut is noted in `notes`, in words."""
    if not tech.shifts:
        return None
    out: list[Interval] = []
    limit = math.floor(tech.max_hours / 60) if tech.max_hours else None
    z = zone(tz)
    origin = start_local.replace(tzinfo=z)

    def when(minute: int) -> str:
        return f"{(origin.astimezone(UTC) + timedelta(minutes=minute)).astimezone(z):%a %H:%M}"

    for lo, hi in openings(tech.shifts, start_local, tz, horizon):
        if out and lo - out[-1][1] < rest:
            later = out[-1][1] + rest
            notes.append(f"{tech.name}: only {_hm(lo - out[-1][1])} rest before the shift from {when(lo)}; "
                         f"works from {when(later)} ({_hm(rest)} rest)" if later < hi else
                         f"{tech.name}: the shift from {when(lo)} leaves no {_hm(rest)} rest; not worked")
            lo = later
        if limit is not None and hi - lo > limit:
            notes.append(f"{tech.name}: the shift from {when(lo)} is longer than max_hours {_hm(limit)}; "
                         f"works until {when(lo + limit)}")
            hi = lo + limit
        if hi > lo:
            out.append((lo, hi))
    return out


def split_location(job: Job, teams: list[Team], team_crew: dict[str, Crew], est: Estimates, setup: float,
                   settings, window: int, breaks: tuple[int, int] = (0, 0)) -> list[Job] | None:
    """The visits of a location that no opening holds in one piece (prev: index among the visits), or None
    when no split allowed by `settings` fits either. Fewest visits first; of those, the split whose
    last visit can end first (inside the window if any can); several crews at once only when allowed and
    the location has `devices_per_crew` devices for each."""
    n = job.devices
    min_visit = math.ceil(settings.min_visit / 60 - 1e-9)
    if n < 2 or not teams:
        return None
    ref = next((t for t in teams if t.id == job.home_team), teams[0])
    per_device = [_device_seconds("workstation", ref, est)] * job.workstations \
        + [_device_seconds("thin_client", ref, est)] * job.thin_clients
    cumulative = [0.0]
    for x in per_device:
        cumulative.append(cumulative[-1] + x)

    def cuts(k: int) -> list[tuple[int, int]]:  # k contiguous device groups of about equal work
        bounds = [0]
        for i in range(1, k):
            target = cumulative[-1] * i / k
            b = next(d for d in range(bounds[-1] + 1, n + 1) if cumulative[d] >= target - 1e-9)
            bounds.append(min(b, n - (k - i)))
        bounds.append(n)
        return list(zip(bounds, bounds[1:], strict=False))

    def minutes(rng: tuple[int, int], team: Team) -> int:
        a, b = rng
        ws = max(0, min(b, job.workstations) - a)
        return group_minutes(ws, (b - a) - ws, team, est, setup, breaks)

    best: tuple[tuple[bool, int], int, list[list[tuple[int, int]]], Team] | None = None
    longest = max((hi - max(lo, job.release) for t in teams
                   for lo, hi in intersect(job.access, team_crew[t.id].availability) if hi > job.release), default=0)
    for total in range(2, settings.max_visits * settings.crews_at_once + 1):
        for lanes in range(min(settings.crews_at_once, total), 0, -1):
            if total % lanes or total // lanes > settings.max_visits or n < total:
                continue
            if lanes > 1 and n < lanes * settings.devices_per_crew:
                continue
            groups = cuts(total)
            per_lane = total // lanes
            lane_groups = [groups[k * per_lane:(k + 1) * per_lane] for k in range(lanes)]
            for team in teams:
                durations = [minutes(g, team) for g in groups]
                if min(durations) < min_visit:
                    continue
                finish = 0
                for chain in lane_groups:
                    ready = job.release
                    for g in chain:
                        ranges = start_ranges(job.access, team_crew[team.id].availability, ready, minutes(g, team))
                        if not ranges:
                            finish = -1
                            break
                        ready = ranges[0][0] + minutes(g, team)
                    if finish < 0:
                        break
                    finish = max(finish, ready)
                if finish < 0:
                    continue
                key = (finish > window, finish)
                if best is None or key < best[0]:
                    best = (key, lanes, lane_groups, team)
        if best is not None:
            break
    if best is None:
        return None
    _, lanes, lane_groups, ref_team = best
    groups = [g for chain in lane_groups for g in chain]
    need = job.duration[ref_team.id]
    sizes = ", ".join(_hm(minutes(g, ref_team)) for g in groups)
    how = (f"{len(groups)} visits by one crew, in device order" if lanes == 1 else
           f"{lanes} crews at once, {len(groups)} visits in all")
    reason = (f"{job.id} needs {_hm(need)} in one piece but its longest access opening after its servers are "
              f"ready is {_hm(max(longest, 0))} ({job.access_text}): split into {how} ({sizes}; each at least "
              f"{_hm(min_visit)})")
    parts: list[Job] = []
    k = 0
    for lane, chain in enumerate(lane_groups):
        for i, (a, b) in enumerate(chain):
            k += 1
            ws = max(0, min(b, job.workstations) - a)
            parts.append(replace(
                job, id=f"{job.id}/{k}", workstations=ws, thin_clients=(b - a) - ws,
                duration={t: minutes((a, b), tm) for t, tm in ((t.id, t) for t in teams)}
                | {t: 10**6 for t in job.duration if t not in {x.id for x in teams}},
                visit=k, visits=len(groups), lane=lane, prev=None if i == 0 else len(parts) - 1,
                devices_range=(a, b), split_reason=reason,
                whole_min=min(work_lower_bound(job.workstations, job.thin_clients, t, est, setup) for t in teams)))
    return parts


def _hm(minutes: float) -> str:
    minutes = int(round(minutes))
    return f"{minutes // 60}h{minutes % 60:02d}"


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
