"""Re-solving during the weekend: keep what is done or under way, schedule the rest from now.

The core calls `resolve` with the run's state (not built here): for each location (or visit
of a split location) already done or in progress, the crew that has it and its actual start
(and end, once done). That work stays exactly where it is; every other location is scheduled
again, starting no earlier than `now`, after each crew's fixed work (plus travel from there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bigbang.errors import UserError
from bigbang.schedule.problem import Problem
from bigbang.schedule.solve import Solution, heuristic


@dataclass(frozen=True)
class FixedWork:
    job: str  # location id, or LOCATION/k for the k-th visit of a split location
    crew: str  # crew id (team id, or team#k when the team works several locations at once)
    start_min: int  # actual start, minutes after the window opened
    end_min: int | None = None  # actual end when done; None: under way


def fix(problem: Problem, fixed: list[FixedWork], now: int) -> Problem:
    """The problem with `fixed` pinned and nothing else starting before `now`. Work under way is
    expected to take its estimate, and to end no earlier than now."""
    crew_index = {crew.id: c for c, crew in enumerate(problem.crews)}
    job_index = {job.id: j for j, job in enumerate(problem.jobs)}
    pinned: dict[int, tuple[int, int, int]] = {}
    for f in fixed:
        if f.job not in job_index:
            raise UserError(f"re-solve: unknown location or visit {f.job}")
        if f.crew not in crew_index:
            raise UserError(f"re-solve: unknown crew {f.crew}")
        j, c = job_index[f.job], crew_index[f.crew]
        end = f.end_min if f.end_min is not None else max(now, f.start_min + problem.jobs[j].duration[
            problem.crews[c].team])
        pinned[j] = (c, f.start_min, max(end, f.start_min))
    return replace(problem, fixed=pinned, not_before=now)


def resolve(problem: Problem, fixed: list[FixedWork], now: int, *, seed: int = 0, restarts: int = 8) -> Solution:
    """A new schedule from `now` that keeps `fixed` as it is (the heuristic and its local search;
    deterministic for a seed). Locations that no longer fit anywhere come back unscheduled."""
    pinned = fix(problem, fixed, now)
    sol = heuristic(pinned, seed, restarts=restarts)
    return replace(sol, method=sol.method + f" (re-solved from +{now} min, {len(fixed)} fixed)")
