"""Re-solving during the weekend: keep what is done or under way, schedule the rest from now.

The core calls `resolve` with the run's state (not built here): for each location (or visit
of a split location) already done or in progress, the crew that has it and its actual start
(and end, once done). That work stays exactly where it is; every other location is scheduled
again, starting no earlier than `now`, after each crew's fixed work (plus travel from there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

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


# ---------------------------------------------------------------- from a run's state

@dataclass(frozen=True)
class Replan:
    schedule: Any  # bigbang.schedule.core.Schedule
    fixed: list[FixedWork]
    now_min: int
    dropped: list[str]  # crews that stopped working at `now`
    seconds: float


def run_now_minutes(ledger: Any, run_id: str, row: dict[str, Any]) -> int:
    """Where the run's clock is: the latest recorded end (simulated runs), or real time since its origin."""
    import time as _time

    if row["clock"] == "simulated":
        ends = [r.clock_end for r in ledger.step_results(run_id).values() if r.clock_end is not None]
        return int(max(ends, default=0.0) // 60)
    return int(max(0.0, _time.time() - row["clock_origin"]) // 60)


def replan_run(ledger: Any, run_id: str, *, without: list[str] | tuple[str, ...] = (), seed: int = 0) -> Replan:
    """Re-solve the rest of a run's weekend from its current state: finished and running locations stay
    where they are; technicians in `without` stop now (a crew left with none of its people stops)."""
    import time as _time

    from bigbang.schedule.bounds import capacity, critical_path, energy
    from bigbang.schedule.core import Schedule, _crew_number, judge
    from bigbang.schedule.problem import build_problem
    from bigbang.session import frozen_run
    from bigbang.status import LocationStatus

    started = _time.perf_counter()
    run = frozen_run(ledger, run_id)
    inventory = run.inventory
    known = {t.id for team in inventory.teams for t in team.technicians}
    unknown = sorted(set(without) - known)
    if unknown:
        raise UserError(f"no technician {unknown[0]} in run {run_id}", hint="use a technician id from the inventory")
    problem = build_problem(inventory)
    now = run_now_minutes(ledger, run_id, run.row)
    names = {t.id: t.name for team in inventory.teams for t in team.technicians}
    gone = set(without) | {names[t] for t in without if t in names}
    crews, dropped = [], []
    for crew in problem.crews:
        if crew.people and set(crew.people) <= gone:
            crew = replace(crew, availability=tuple((a, min(b, now)) for a, b in crew.availability if a < now))
            dropped.append(crew.id)
        crews.append(crew)
    problem = replace(problem, crews=crews)
    crew_of = {(c.team, _crew_number(c.id)): c.id for c in problem.crews}
    jobs = {job.id for job in problem.jobs}
    results = ledger.location_results(run_id)
    fixed = []
    for loc in run.plan.locations:
        row = results.get(loc.id)
        if row is None or row.get("clock_start") is None or loc.id not in jobs:
            continue
        status = LocationStatus(row["status"])
        end = int(row["clock_end"] // 60) if status != LocationStatus.RUNNING and row.get("clock_end") else None
        fixed.append(FixedWork(loc.id, crew_of.get((loc.team, loc.chain), loc.team), int(row["clock_start"] // 60),
                               end))
    solution = resolve(problem, fixed, now, seed=seed)
    pinned = fix(problem, fixed, now)
    cp_bound, own = critical_path(pinned)
    bounds = [cp_bound, capacity(pinned)]
    bounds.append(energy(pinned, max(b.minutes for b in bounds)))
    verdict = judge(pinned, solution, bounds, own, inventory, None, lambda **kw: build_problem(inventory, **kw))
    schedule = Schedule(pinned, solution, bounds, verdict, seed, {"method": solution.method})
    return Replan(schedule, fixed, now, dropped, _time.perf_counter() - started)
