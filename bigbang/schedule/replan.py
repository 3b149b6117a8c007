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
from bigbang.schedule.solve import Solution, heuristic, ruin_recreate


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


# Ruin and recreate after the heuristic when the re-solve is above its bound. Counted rounds (the
# result does not depend on the machine); fewer than a fresh schedule's 8,000, so that re-solving
# Holstebro mid-run stays inside issue 18's 10 seconds on a loaded machine.
RESOLVE_ROUNDS = 3000


def resolve(problem: Problem, fixed: list[FixedWork], now: int, *, seed: int = 0, restarts: int = 8,
            rounds: int = RESOLVE_ROUNDS) -> Solution:
    """A new schedule from `now` that keeps `fixed` as it is: the heuristic and its local search, then,
    while above the lower bound, ruin and recreate for at most `rounds` rounds (0: none). Deterministic
    for a seed. Locations that no longer fit anywhere come back unscheduled."""
    return _resolve(fix(problem, fixed, now), len(fixed), now, seed=seed, restarts=restarts, rounds=rounds)[0]


def _bounds(pinned: Problem) -> tuple[list[Any], dict[str, int | None]]:
    from bigbang.schedule.bounds import capacity, critical_path, energy

    cp_bound, own = critical_path(pinned)
    bounds = [cp_bound, capacity(pinned)]
    bounds.append(energy(pinned, max(b.minutes for b in bounds)))
    return bounds, own


def _resolve(pinned: Problem, n_fixed: int, now: int, *, seed: int, restarts: int,
             rounds: int) -> tuple[Solution, list[Any], dict[str, int | None], dict[str, Any]]:
    """(solution, lower bounds, each location's own earliest end, solve figures) of a pinned problem."""
    import time as _time

    t0 = _time.perf_counter()
    sol = heuristic(pinned, seed, restarts=restarts)
    solve: dict[str, Any] = {"heuristic_s": round(_time.perf_counter() - t0, 3), "heuristic_makespan_min": sol.makespan}
    bounds, own = _bounds(pinned)
    lb = max(b.minutes for b in bounds)
    # as make_schedule: locations that cannot be done at all do not stop improving the others
    placeable = all(own[pinned.jobs[j].id] is None for j in sol.unscheduled)
    if rounds and placeable and sol.makespan > lb:
        t0 = _time.perf_counter()
        sol = ruin_recreate(pinned, sol, seed, rounds=rounds, stall=min(2000, rounds), stop_at=lb)
        solve.update(ruin_recreate_s=round(_time.perf_counter() - t0, 3), ruin_recreate_makespan_min=sol.makespan,
                     ruin_recreate_rounds=rounds)
    sol = replace(sol, method=sol.method + f" (re-solved from +{now} min, {n_fixed} fixed)")
    solve["method"] = sol.method
    return sol, bounds, own, solve


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


def fixed_from_state(problem: Problem, locations: Any, results: dict[str, dict[str, Any]]) -> list[FixedWork]:
    """The locations done or under way, from a run's state: `locations` are the plan's (team and chain
    give the crew), `results` the ledger's location rows by id (`status`, `clock_start`, `clock_end`:
    seconds after the window opened). A location not started stays out (scheduled again)."""
    from bigbang.schedule.core import _crew_number
    from bigbang.status import LocationStatus

    crew_of = {(c.team, _crew_number(c.id)): c.id for c in problem.crews}
    jobs = {job.id for job in problem.jobs}
    fixed = []
    for loc in locations:
        row = results.get(loc.id)
        if row is None or row.get("clock_start") is None or loc.id not in jobs:
            continue
        status = LocationStatus(row["status"])
        end = int(row["clock_end"] // 60) if status != LocationStatus.RUNNING and row.get("clock_end") else None
        fixed.append(FixedWork(loc.id, crew_of.get((loc.team, loc.chain), loc.team), int(row["clock_start"] // 60),
                               end))
    return fixed


def replan_state(inventory: Any, locations: Any, results: dict[str, dict[str, Any]], now: int, *,
                 without: list[str] | tuple[str, ...] = (), seed: int = 0, rounds: int = RESOLVE_ROUNDS,
                 what: str = "the run") -> Replan:
    """Re-solve the rest of a weekend from its state (see `fixed_from_state`) at minute `now`: finished
    and running locations stay where they are; technicians in `without` stop now (a crew left with none
    of its people stops). What `bigbang schedule --replan` does once it has read the run."""
    import time as _time

    from bigbang.schedule.core import Schedule, judge
    from bigbang.schedule.problem import build_problem

    started = _time.perf_counter()
    known = {t.id for team in inventory.teams for t in team.technicians}
    unknown = sorted(set(without) - known)
    if unknown:
        raise UserError(f"no technician {unknown[0]} in {what}", hint="use a technician id from the inventory")
    problem = build_problem(inventory)
    names = {t.id: t.name for team in inventory.teams for t in team.technicians}
    gone = set(without) | {names[t] for t in without if t in names}
    crews, dropped = [], []
    for crew in problem.crews:
        if crew.people and set(crew.people) <= gone:
            crew = replace(crew, availability=tuple((a, min(b, now)) for a, b in crew.availability if a < now))
            dropped.append(crew.id)
        crews.append(crew)
    problem = replace(problem, crews=crews)
    fixed = fixed_from_state(problem, locations, results)
    pinned = fix(problem, fixed, now)
    solution, bounds, own, solve = _resolve(pinned, len(fixed), now, seed=seed, restarts=8, rounds=rounds)
    verdict = judge(pinned, solution, bounds, own, inventory, None, lambda **kw: build_problem(inventory, **kw))
    schedule = Schedule(pinned, solution, bounds, verdict, seed, solve)
    return Replan(schedule, fixed, now, dropped, _time.perf_counter() - started)


def replan_run(ledger: Any, run_id: str, *, without: list[str] | tuple[str, ...] = (), seed: int = 0) -> Replan:
    """Re-solve the rest of a run's weekend from its current state (`replan_state` on what the ledger holds)."""
    import time as _time

    from bigbang.session import frozen_run

    started = _time.perf_counter()
    run = frozen_run(ledger, run_id)
    now = run_now_minutes(ledger, run_id, run.row)
    result = replan_state(run.inventory, run.plan.locations, ledger.location_results(run_id), now, without=without,
                          seed=seed, what=f"run {run_id}")
    return replace(result, seconds=_time.perf_counter() - started)
