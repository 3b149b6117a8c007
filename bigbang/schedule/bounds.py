"""Proven lower bounds on the makespan: no schedule can finish earlier.

- critical path: a location cannot end before its servers are ready, its access
  hours (and some crew's shift) open long enough, and its own work is done;
- capacity: the work (plus the least travel into each location) released at or
  after a time r has to be shared by all crews after r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigbang.schedule.problem import Problem, merge


@dataclass(frozen=True)
class Bound:
    name: str  # critical_path | capacity | solver
    minutes: int
    because: str  # what makes it binding, in words
    location: str | None = None


def critical_path(problem: Problem) -> tuple[Bound, dict[str, int | None]]:
    """The largest earliest finish of any one location alone; also each location's own earliest finish."""
    own: dict[str, int | None] = {}
    best = Bound("critical_path", 0, "nothing to do")
    for j, job in enumerate(problem.jobs):
        finishes = []
        for c, crew in enumerate(problem.crews):
            s = problem.earliest_start(j, c, problem.base_travel[c][j])
            if s is not None:
                finishes.append(s + job.duration[crew.team])
        own[job.id] = min(finishes) if finishes else None
        if finishes and min(finishes) > best.minutes:
            best = Bound("critical_path", min(finishes), _path_text(problem, j, min(finishes)), job.id)
    return best, own


def _path_text(problem: Problem, j: int, finish: int) -> str:
    job = problem.jobs[j]
    p = min(job.duration.values())
    parts = []
    if job.release_servers:
        parts.append(f"its servers ({', '.join(job.release_servers[:3])}"
                     f"{'...' if len(job.release_servers) > 3 else ''}) are ready at +{_hm(job.release)}")
    elif job.release:
        parts.append(f"the server prechecks end at +{_hm(job.release)}")
    start = finish - p
    if start > job.release:
        parts.append(f"its access hours ({job.access_text}) let work start at +{_hm(start)} at the earliest")
    parts.append(f"its own work takes {_hm(p)}")
    return f"{job.id}: " + "; ".join(parts)


def capacity(problem: Problem) -> Bound:
    """For each release time r: the work of the locations released at or after r fits only into the
    time after r when at least one of them can be worked (access hours x shifts, openings long enough
    for the location), times the number of crews; work plus travel fits into all time after r."""
    crews = len(problem.crews)
    jobs = problem.jobs
    n = len(jobs)
    if not n or not crews:
        return Bound("capacity", 0, "nothing to do")
    work = [min(job.duration.values()) for job in jobs]
    # least travel into each location: from another location, or from a base (0 when a crew has none)
    into = []
    for j in range(n):
        options = [problem.travel[i][j] for i in range(n) if i != j]
        options += [problem.base_travel[c][j] for c in range(crews)]
        into.append(min(options) if options else 0)
    usable = []  # per job: when its work can happen at all
    for j in range(n):
        usable.append(merge((lo, hi + jobs[j].duration[problem.crews[c].team])
                            for c in range(crews) for lo, hi in problem.start_windows(j, c)))
    best = Bound("capacity", 0, "nothing to do")
    for r in sorted({job.release for job in jobs}):
        members = [j for j in range(n) if jobs[j].release >= r]
        # only the first location of each crew can be travelled to before r
        travel = sorted((into[j] for j in members), reverse=True)
        total_work = sum(work[j] for j in members)
        total = total_work + sum(travel[crews:])
        by_time = r + math.ceil(total / crews)
        open_ = merge(iv for j in members for iv in usable[j])
        by_hours = _fill(open_, r, total_work / crews)
        value = max(by_time, by_hours)
        if value > best.minutes:
            because = (f"{_hm(total_work)} of work for {len(members)} locations"
                       + (f" that can start only after +{_hm(r)}" if r else "")
                       + f", shared by {crews} crews")
            because += (" inside the hours when those locations can be worked" if by_hours >= by_time
                        else f", plus at least {_hm(total - total_work)} of travel")
            best = Bound("capacity", value, because)
    return best


def energy(problem: Problem, at_least: int = 0) -> Bound:
    """A relaxation solved exactly: the smallest T such that the work fits before T when every location
    may only be worked inside the openings (access hours x shifts, after its servers) where the whole of
    it could be done and finished by T, with at most one crew per location and all crews at once (a
    max-flow check). Only the splitting of work inside those spans and the travel are relaxed."""
    from ortools.graph.python import max_flow

    jobs, crews = problem.jobs, problem.crews
    n, m = len(jobs), len(crews)
    if not n or not m:
        return Bound("energy", 0, "nothing to do")
    work = [min(job.duration.values()) for job in jobs]
    ranges = [sorted({(lo, hi, job.duration[crews[c].team]) for c in range(m)
                      for lo, hi in problem.start_windows(j, c)}) for j, job in enumerate(jobs)]
    skipped = {j for j in range(n) if not ranges[j]}  # cannot be done at all: the verdict says so

    def usable(j: int, limit: int) -> list[tuple[int, int]]:
        return merge((lo, min(hi, limit - p) + p) for lo, hi, p in ranges[j] if lo + p <= limit)

    def feasible(limit: int) -> bool:
        spans = {j: usable(j, limit) for j in range(n) if j not in skipped}
        if any(not sp for sp in spans.values()):
            return False
        cuts = sorted({t for sp in spans.values() for iv in sp for t in iv})
        segments = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        flow = max_flow.SimpleMaxFlow()
        source, sink = 0, 1
        for j in spans:
            flow.add_arc_with_capacity(source, 2 + j, work[j])
        for k, (a, b) in enumerate(segments):
            node = 2 + n + k
            flow.add_arc_with_capacity(node, sink, m * (b - a))
            for j, sp in spans.items():
                overlap = sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in sp)
                if overlap:
                    flow.add_arc_with_capacity(2 + j, node, overlap)
        flow.solve(source, sink)
        return flow.optimal_flow() >= sum(work[j] for j in spans)

    if len(skipped) == n:
        return Bound("energy", 0, "no location can be done at all (see the verdict)")
    lo = max(at_least, max(jobs[j].release + work[j] for j in range(n) if j not in skipped))
    hi = problem.horizon
    if not feasible(hi):
        return Bound("energy", problem.horizon, "the work does not fit even a week past the window")
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    total = sum(work[j] for j in range(n) if j not in skipped)
    return Bound("energy", lo, f"{_hm(total)} of work by {m} crews, each location only where all of it can "
                               "be done inside its access hours and shifts after its servers"
                               + (f"; {len(skipped)} locations that cannot be done at all left out" if skipped else ""))


def _fill(intervals: list[tuple[int, int]], after: int, amount: float) -> int:
    """The first time T such that the intervals hold `amount` minutes in [after, T]."""
    left = amount
    t = after
    for lo, hi in intervals:
        lo = max(lo, after)
        if hi <= lo:
            continue
        if hi - lo >= left:
            return math.ceil(lo + left)
        left -= hi - lo
        t = hi
    return t if left <= 0 else 10**9  # cannot hold it at all: no schedule exists


def _hm(minutes: float) -> str:
    minutes = int(round(minutes))
    return f"{minutes // 60}h{minutes % 60:02d}"
