"""OR-Tools CP-SAT: improve a first solution within a time limit.

Model: each location is assigned to exactly one crew and starts inside one of
its feasible start ranges on that crew (access hours x shift x release). Per
crew a circuit through its locations carries travel times (arc i->j: j starts
after i ends plus travel). Objective: the makespan, then the summed end times
(so locations finish as early as they can). The current solution is the hint,
so the answer is never worse than it.

Small instances are solved as one model; its proven objective bound is a lower
bound of the real problem. Large ones (more than FULL_ARCS_UP_TO arcs) are
improved by large-neighbourhood search: repeatedly re-solve exactly the crew that
ends last together with a few other crews and all their locations, keeping what
improves. Effort is counted in CP-SAT's deterministic seconds, so a seed gives the
same answer on a fast or a slow machine (a wall-clock safety net, far above, is noted
in the result when it strikes).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from bigbang.schedule.problem import Problem
from bigbang.schedule.solve import Solution, _crew_stats, timed, walk

FULL_ARCS_UP_TO = 20_000  # crews x jobs^2 in one model; above: neighbourhood search
NEIGHBOURHOOD_CREWS = 4
SUB_LIMIT = 0.5  # deterministic seconds per neighbourhood
STALL = 12  # neighbourhoods in a row that find nothing: the search stops (counted, so still deterministic)


@dataclass(frozen=True)
class CpResult:
    solution: Solution | None
    status: str  # OPTIMAL | FEASIBLE | INFEASIBLE | UNKNOWN, or "LNS: ..." for neighbourhood search
    bound: int | None  # proven lower bound on the makespan (whole model only)
    complete: bool  # one model of the whole problem
    wall_s: float
    deterministic_s: float
    stopped_by_wall_clock: bool = False


@dataclass(frozen=True)
class _Sub:
    sequences: dict[int, list[int]] | None  # crew -> job order
    status: str
    bound: int | None
    wall_s: float
    deterministic_s: float
    wall_limit_hit: bool = False


def _solve(problem: Problem, crews: list[int], jobs: list[int], hint: dict[int, list[int]], *,
           time_limit: float, seed: int, workers: int, cap: int | None = None) -> _Sub:
    """Exact model of `jobs` on `crews` (every arc), hinted with `hint`. With `cap`, every job must
    end by it and only the summed ends are minimised (a neighbourhood that must get under a makespan)."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    horizon = problem.horizon
    last = horizon if cap is None else cap
    start = {j: model.new_int_var(0, last, f"s{j}") for j in jobs}
    end = {j: model.new_int_var(0, last, f"e{j}") for j in jobs}
    assign: dict[tuple[int, int], Any] = {}
    for j in jobs:
        options = []
        for c in crews:
            ranges = problem.start_windows(j, c)
            if not ranges:
                continue
            x = model.new_bool_var(f"x{j}_{c}")
            assign[j, c] = x
            options.append(x)
            domain = cp_model.Domain.from_intervals([[lo, hi] for lo, hi in ranges])
            model.add_linear_expression_in_domain(start[j], domain).only_enforce_if(x)
            model.add(end[j] == start[j] + problem.duration(j, c)).only_enforce_if(x)
        if not options:
            return _Sub(None, "INFEASIBLE", None, 0.0, 0.0)
        model.add_exactly_one(options)
    members_set = set(jobs)
    for b in jobs:  # the visits of a lane: one crew, in order
        a = problem.jobs[b].prev
        if a is None or a not in members_set:
            continue
        model.add(start[b] >= end[a])
        for c in crews:
            xa, xb = assign.get((a, c)), assign.get((b, c))
            if xa is not None and xb is not None:
                model.add(xa == xb)
            elif xa is not None:
                model.add(xa == 0)
            elif xb is not None:
                model.add(xb == 0)

    hint_arcs = set()
    for c, seq in hint.items():
        prev = -1
        for j in seq:
            hint_arcs.add((c, prev, j))
            prev = j
        hint_arcs.add((c, prev, -1))
    node = {j: k + 1 for k, j in enumerate(jobs)}  # 0 is the crew's depot
    arc_lits: dict[tuple[int, int, int], Any] = {}
    for c in crews:
        members = [j for j in jobs if (j, c) in assign]
        empty = model.new_bool_var(f"empty{c}")
        arcs: list[tuple[int, int, Any]] = [(0, 0, empty)]
        arc_lits[c, -1, -1] = empty
        for j in members:
            x = assign[j, c]
            model.add_implication(empty, ~x)
            arcs.append((node[j], node[j], ~x))
            first = model.new_bool_var(f"f{c}_{j}")
            arcs.append((0, node[j], first))
            arc_lits[c, -1, j] = first
            model.add(start[j] >= problem.base_travel[c][j]).only_enforce_if(first)
            tail = model.new_bool_var(f"l{c}_{j}")
            arcs.append((node[j], 0, tail))
            arc_lits[c, j, -1] = tail
        for i in members:
            for k in members:
                if i == k:
                    continue
                lit = model.new_bool_var(f"a{c}_{i}_{k}")
                arcs.append((node[i], node[k], lit))
                arc_lits[c, i, k] = lit
                model.add(start[k] >= end[i] + problem.travel[i][k]).only_enforce_if(lit)
        model.add_circuit(arcs)

    makespan = model.new_int_var(0, horizon, "makespan")
    model.add_max_equality(makespan, list(end.values()))
    weight = len(jobs) * horizon + 1 if cap is None else 0  # makespan first, then the summed ends
    model.minimize(makespan * weight + sum(end.values()))

    timing = timed_subset(problem, hint)
    if timing is not None:
        for j, (s, e, c) in timing.items():
            model.add_hint(start[j], s)
            model.add_hint(end[j], e)
            for cc in crews:
                if (j, cc) in assign:
                    model.add_hint(assign[j, cc], cc == c)
        for key, lit in arc_lits.items():
            c, a, b = key
            model.add_hint(lit, (not hint.get(c)) if a == -1 and b == -1 else key in hint_arcs)
        if cap is None or all(e <= cap for _, e, _ in timing.values()):
            model.add_hint(makespan, max((e for _, e, _ in timing.values()), default=0))

    solver = cp_model.CpSolver()
    params = solver.parameters
    params.random_seed = seed
    params.num_workers = workers
    if workers > 1:
        params.interleave_search = True  # deterministic for a seed, with several workers
    params.max_deterministic_time = time_limit
    params.max_time_in_seconds = wall_limit(time_limit)
    status = solver.solve(model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Sub(None, name, None, solver.wall_time, solver.deterministic_time,
                    solver.wall_time >= params.max_time_in_seconds * 0.99)
    sequences: dict[int, list[int]] = {c: [] for c in crews}
    for (j, c), x in assign.items():
        if solver.boolean_value(x):
            sequences[c].append(j)
    for seq in sequences.values():
        seq.sort(key=lambda j: (solver.value(start[j]), j))
    bound = int(solver.best_objective_bound // weight) if weight else None
    return _Sub(sequences, name, bound, solver.wall_time, solver.deterministic_time,
                solver.wall_time >= params.max_time_in_seconds * 0.99)


def wall_limit(deterministic_s: float) -> float:
    """A safety net far above the deterministic budget: on a very busy machine the wall clock runs
    many times slower than CP-SAT's deterministic clock; only a hang should ever reach this."""
    return deterministic_s * 20 + 60


def timed_subset(problem: Problem, sequences: dict[int, list[int]]) -> dict[int, tuple[int, int, int]] | None:
    """Start, end and crew of each job of `sequences`, as early as possible; None if one does not fit."""
    out = {}
    for c, seq in sequences.items():
        for visit in walk(problem, c, seq):
            if visit is None:
                return None
            j, _, start, end, _ = visit
            out[j] = (start, end, c)
    return out


def improve_with_cpsat(problem: Problem, hint: Solution, *, time_limit: float, seed: int = 0,
                       workers: int = 2) -> CpResult:
    jobs = sorted(j for seq in hint.sequences for j in seq)  # what cannot be scheduled at all stays out
    n, m = len(jobs), len(problem.crews)
    t0 = time.perf_counter()
    if m * n * n <= FULL_ARCS_UP_TO:
        sub = _solve(problem, list(range(m)), jobs, dict(enumerate(map(list, hint.sequences))),
                     time_limit=time_limit, seed=seed, workers=workers)
        solution = None
        if sub.sequences is not None:
            solution = timed(problem, [sub.sequences[c] for c in range(m)], "CP-SAT")
        return CpResult(solution, sub.status, sub.bound, True, sub.wall_s, sub.deterministic_s, sub.wall_limit_hit)
    return _neighbourhood_search(problem, hint, time_limit, seed, t0)


def _neighbourhood_search(problem: Problem, sol: Solution, time_limit: float, seed: int, t0: float) -> CpResult:
    """Take a crew that ends at the makespan and a few that end earlier; ask CP-SAT to redistribute all
    their locations so that every one of those crews ends before the makespan. Each success removes one
    crew from the makespan; when none is left there, the makespan has dropped."""
    rng = random.Random(seed)
    m = len(problem.crews)
    seqs = [list(s) for s in sol.sequences]
    stats = [_crew_stats(problem, c, seqs[c]) for c in range(m)]
    spent = 0.0
    rounds = improved = 0
    wall_stop = False
    failed: set[frozenset[int]] = set()
    in_a_row = 0
    while spent < time_limit and in_a_row < STALL:
        if time.perf_counter() - t0 > wall_limit(time_limit):
            wall_stop = True
            break
        makespan = max(st[1] for st in stats)
        at_end = [c for c in range(m) if stats[c][1] == makespan]
        below = [c for c in range(m) if stats[c][1] < makespan]
        if not below:
            break
        late = at_end[rng.randrange(len(at_end))]
        group = None
        freest = min(below, key=lambda c: (stats[c][1], c))
        for attempt in range(20):  # a neighbourhood not tried since the last success; the freest crew first
            size = min(len(below), rng.randint(1, NEIGHBOURHOOD_CREWS - 1))
            chosen = rng.sample(below, size)
            if attempt == 0 and freest not in chosen:
                chosen[0] = freest
            trial_group = frozenset([late, *chosen])
            if trial_group not in failed:
                group = trial_group
                break
        if group is None:
            break
        rounds += 1
        crews = sorted(group)
        jobs = sorted(j for c in crews for j in seqs[c])
        sub = _solve(problem, crews, jobs, {c: seqs[c] for c in crews}, cap=makespan - 1,
                     time_limit=min(SUB_LIMIT, time_limit - spent + 0.05), seed=seed + rounds, workers=1)
        spent += max(sub.deterministic_s, 0.01)
        wall_stop = wall_stop or sub.wall_limit_hit
        if sub.sequences is None:
            failed.add(group)
            in_a_row += 1
            continue
        trial = [_crew_stats(problem, c, sub.sequences[c]) for c in crews]
        if all(t[0] and t[1] < makespan for t in trial):
            for c, t in zip(crews, trial, strict=False):
                seqs[c], stats[c] = sub.sequences[c], t
            improved += 1
            in_a_row = 0
            failed.clear()
        else:
            failed.add(group)
            in_a_row += 1
    solution = timed(problem, seqs, sol.method + " + CP-SAT neighbourhoods")
    stalled = f" (stopped: {STALL} in a row found nothing)" if in_a_row >= STALL else ""
    return CpResult(solution, f"LNS: {rounds} neighbourhoods, {improved} improved{stalled}", None, False,
                    time.perf_counter() - t0, spent, wall_stop)
