"""Proven lower bounds on the makespan: no schedule can finish earlier.

- critical path: a location cannot end before its servers are ready, its access
  hours (and some crew's shift) open long enough, and its own work is done;
- capacity: the work (plus the least travel into each location) released at or
  after a time r has to be shared by all crews after r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigbang.schedule.problem import Problem, intersect, merge


@dataclass(frozen=True)
class Bound:
    name: str  # critical_path | capacity | solver
    minutes: int
    because: str  # what makes it binding, in words
    location: str | None = None


def critical_path(problem: Problem) -> tuple[Bound, dict[str, int | None]]:
    """The largest earliest finish of any one location alone; also each job's own earliest finish.
    A split location counts with its whole work, however it could be split (see `split_spans`)."""
    own: dict[str, int | None] = {}
    best = Bound("critical_path", 0, "nothing to do")
    for j, job in enumerate(problem.jobs):
        finishes = []
        for c in range(len(problem.crews)):
            s = problem.earliest_start(j, c, problem.base_travel[c][j])
            if s is not None:
                finishes.append(s + problem.duration(j, c))
        own[job.id] = min(finishes) if finishes else None
        if job.visits > 1:
            continue  # the value of one visit depends on the split chosen: the location's bound is below
        if finishes and min(finishes) > best.minutes:
            best = Bound("critical_path", min(finishes), _path_text(problem, j, min(finishes)), job.id)
    for site, members in problem.sites.items():
        first = problem.jobs[members[0]]
        if first.visits == 1 or any(own[problem.jobs[j].id] is None for j in members):
            continue
        spans = split_spans(problem, members[0])
        finish = _fill(spans, first.release, first.whole_min / min(problem.crews_at_once, len(problem.crews)))
        if best.minutes < finish < 10**9:
            best = Bound("critical_path", finish,
                         f"{site}: split into visits, its {_hm(first.whole_min)} of work (at least, however it is "
                         f"split) fits its access hours ({first.access_text}) after its servers (+{_hm(first.release)})"
                         f" no sooner", site)
    return best, own


def split_spans(problem: Problem, j: int, limit: int | None = None) -> list[tuple[int, int]]:
    """When any visit of j's (split) location could be worked: openings (access hours x shifts of the
    crews that may take it, after its servers) that hold a visit of the minimum length, up to `limit`."""
    job = problem.jobs[j]
    top = problem.horizon if limit is None else limit
    out = []
    for c in range(len(problem.crews)):
        if not problem.allowed(j, c):
            continue
        for lo, hi in intersect(job.access, problem.crews[c].availability):
            lo, hi = max(lo, job.release, problem.not_before), min(hi, top)
            if hi - lo >= max(1, problem.min_visit):
                out.append((lo, hi))
    return merge(out)


def entry_travel(problem: Problem) -> tuple[list[int], int]:
    """Per job, the least travel into it from another location; and a discount for the crews' first
    visits: every visit but each crew's first is entered from another location, and a first visit from
    a base at least `least base` away. Total travel >= sum(into) - discount."""
    n, m = len(problem.jobs), len(problem.crews)
    into = []
    for j in range(n):
        site = problem.jobs[j].site
        first_of_site = problem.sites[site][0] == j
        options = [problem.travel[i][j] for i in range(n)
                   if i != j and (problem.jobs[i].site != site or not first_of_site)]
        into.append(min(options) if options else 0)
    # only the first visit of a site is entered from elsewhere, however the site is split
    for members in problem.sites.values():
        for j in members[1:]:
            into[j] = 0
    least_base = min((min(row) for row in problem.base_travel if row), default=0)
    excess = sorted((max(0, t - least_base) for t in into), reverse=True)
    return into, sum(excess[:m])


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
    work, usable = _site_work(problem)
    into, _ = entry_travel(problem)
    best = Bound("capacity", 0, "nothing to do")
    for r in sorted({job.release for job in jobs}):
        members = [j for j in range(n) if jobs[j].release >= r and j in work]
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


def _site_work(problem: Problem) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
    """Per location (keyed by its first job): the least work, and when it can be worked at all."""
    work: dict[int, int] = {}
    usable: dict[int, list[tuple[int, int]]] = {}
    for members in problem.sites.values():
        j = members[0]
        job = problem.jobs[j]
        if job.visits > 1:
            work[j] = job.whole_min
            usable[j] = split_spans(problem, j)
        else:
            work[j] = min(problem.duration(j, c) for c in range(len(problem.crews))) \
                if j in problem.fixed else min(job.duration.values())
            usable[j] = merge((lo, hi + problem.duration(j, c)) for c in range(len(problem.crews))
                              for lo, hi in problem.start_windows(j, c))
    return work, usable


def energy(problem: Problem, at_least: int = 0) -> Bound:
    """A relaxation solved exactly: the smallest T such that the work and the travel into each location
    fit before T, when every location may only be worked inside the openings (access hours x shifts,
    after its servers) where the whole of it could be done and finished by T (a split location: anywhere
    a visit of the minimum length fits), the travel into it just before, at most one crew per location
    (a split location: `crews_at_once`) and all crews at once (a max-flow check). Only the splitting of
    work inside those spans and the order of the visits are relaxed; each crew's first visit is counted
    with the least travel from a base."""
    from ortools.graph.python import max_flow

    jobs, crews = problem.jobs, problem.crews
    n, m = len(jobs), len(crews)
    if not n or not m:
        return Bound("energy", 0, "nothing to do")
    heads = [members[0] for members in problem.sites.values()]
    into, discount = entry_travel(problem)
    split = {j for j in heads if jobs[j].visits > 1}
    work = {j: (jobs[j].whole_min if j in split else min(problem.duration(j, c) for c in range(m)
                                                          if problem.start_windows(j, c)) if
                any(problem.start_windows(j, c) for c in range(m)) else 0) for j in heads}
    ranges = {j: sorted({(lo, hi, problem.duration(j, c)) for c in range(m) for lo, hi in problem.start_windows(j, c)})
              for j in heads if j not in split}
    skipped = {j for j in heads if (j not in split and not ranges[j]) or (j in split and not split_spans(problem, j))}
    lanes = min(problem.crews_at_once, m)

    def usable(j: int, limit: int) -> list[tuple[int, int]]:
        if j in split:
            spans = split_spans(problem, j, limit)
        else:
            spans = merge((lo, min(hi, limit - p) + p) for lo, hi, p in ranges[j] if lo + p <= limit)
        return merge((max(0, lo - into[j]), hi) for lo, hi in spans)  # the travel in just before

    def feasible(limit: int) -> bool:
        spans = {j: usable(j, limit) for j in heads if j not in skipped}
        if any(not sp for sp in spans.values()):
            return False
        cuts = sorted({t for sp in spans.values() for iv in sp for t in iv})
        segments = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        flow = max_flow.SimpleMaxFlow()
        source, sink = 0, 1
        for j in spans:
            flow.add_arc_with_capacity(source, 2 + j, work[j] + into[j])
        for k, (a, b) in enumerate(segments):
            node = 2 + n + k
            flow.add_arc_with_capacity(node, sink, m * (b - a))
            for j, sp in spans.items():
                overlap = sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in sp)
                if overlap:
                    flow.add_arc_with_capacity(2 + j, node, overlap * (lanes if j in split else 1))
        flow.solve(source, sink)
        return flow.optimal_flow() >= sum(work[j] + into[j] for j in spans) - discount

    if len(skipped) == len(heads):
        return Bound("energy", 0, "no location can be done at all (see the verdict)")
    lo = max(at_least, max(jobs[j].release + (work[j] if j not in split else 0) for j in heads if j not in skipped))
    hi = problem.horizon
    if not feasible(hi):
        return Bound("energy", problem.horizon, "the work does not fit even a week past the window")
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    total = sum(work[j] for j in heads if j not in skipped)
    travel = sum(into[j] for j in heads if j not in skipped) - discount
    return Bound("energy", lo, f"{_hm(total)} of work and at least {_hm(max(0, travel))} of travel by {m} crews, "
                               "each location only where all of it can be done inside its access hours and "
                               "shifts after its servers"
                               + (f" ({len(split)} split locations wherever a visit fits)" if split else "")
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
