"""OR-Tools CP-SAT: improve a first solution within a time limit.

Model: each location is assigned to exactly one crew and starts inside one of
its feasible start ranges on that crew (access hours x shift x release). Per
crew a circuit through its locations carries travel times (arc i->j means j
starts after i ends plus travel). Minimise the makespan. The heuristic's
solution is the hint, so the answer is never worse than it.

For large instances only the K nearest successors of each location get an arc
(plus every arc the hint uses); the model is then a restriction, and its
objective bound is not used as a proof.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigbang.schedule.problem import Problem
from bigbang.schedule.solve import Solution, timed

FULL_ARCS_UP_TO = 60_000  # crews x jobs^2 arcs; above this only near neighbours get an arc
NEIGHBOURS = 12


@dataclass(frozen=True)
class CpResult:
    solution: Solution | None
    status: str  # OPTIMAL | FEASIBLE | INFEASIBLE | UNKNOWN | ...
    bound: int | None  # proven lower bound on the makespan (complete model only)
    complete: bool  # every arc present: the model is exactly the problem
    wall_s: float
    deterministic_s: float


def improve_with_cpsat(problem: Problem, hint: Solution, *, time_limit: float, seed: int = 0,
                       workers: int = 2) -> CpResult:
    from ortools.sat.python import cp_model

    jobs, crews = problem.jobs, problem.crews
    n, m = len(jobs), len(crews)
    model = cp_model.CpModel()
    horizon = problem.horizon
    complete = m * n * n <= FULL_ARCS_UP_TO

    start = [model.new_int_var(0, horizon, f"s{j}") for j in range(n)]
    end = [model.new_int_var(0, horizon, f"e{j}") for j in range(n)]
    assign: dict[tuple[int, int], object] = {}
    for j in range(n):
        options = []
        for c in range(m):
            ranges = problem.start_windows(j, c)
            if not ranges:
                continue
            x = model.new_bool_var(f"x{j}_{c}")
            assign[j, c] = x
            options.append(x)
            domain = cp_model.Domain.from_intervals([[lo, hi] for lo, hi in ranges])
            model.add_linear_expression_in_domain(start[j], domain).only_enforce_if(x)
            model.add(end[j] == start[j] + jobs[j].duration[crews[c].team]).only_enforce_if(x)
        if not options:
            return CpResult(None, "INFEASIBLE", None, complete, 0.0, 0.0)
        model.add_exactly_one(options)

    hint_arcs = set()
    for c, seq in enumerate(hint.sequences):
        prev = 0
        for j in seq:
            hint_arcs.add((c, prev, j + 1))
            prev = j + 1
        hint_arcs.add((c, prev, 0))
    near = {}
    if not complete:
        for i in range(n):
            near[i] = set(sorted(range(n), key=lambda k: (problem.travel[i][k], k))[: NEIGHBOURS + 1])

    arc_lits: dict[tuple[int, int, int], object] = {}
    for c in range(m):
        arcs = []
        members = [j for j in range(n) if (j, c) in assign]
        empty = model.new_bool_var(f"empty{c}")
        arcs.append((0, 0, empty))
        arc_lits[c, 0, 0] = empty
        for j in members:
            x = assign[j, c]
            arcs.append((j + 1, j + 1, ~x))
            first = model.new_bool_var(f"f{c}_{j}")
            arcs.append((0, j + 1, first))
            arc_lits[c, 0, j + 1] = first
            model.add(start[j] >= problem.base_travel[c][j]).only_enforce_if(first)
            last = model.new_bool_var(f"l{c}_{j}")
            arcs.append((j + 1, 0, last))
            arc_lits[c, j + 1, 0] = last
        for i in members:
            for k in members:
                if i == k:
                    continue
                if not complete and k not in near[i] and (c, i + 1, k + 1) not in hint_arcs:
                    continue
                lit = model.new_bool_var(f"a{c}_{i}_{k}")
                arcs.append((i + 1, k + 1, lit))
                arc_lits[c, i + 1, k + 1] = lit
                model.add(start[k] >= end[i] + problem.travel[i][k]).only_enforce_if(lit)
        model.add_circuit(arcs)
        for j in members:  # an empty crew visits nobody
            model.add_implication(empty, ~assign[j, c])

    makespan = model.new_int_var(0, horizon, "makespan")
    model.add_max_equality(makespan, end)
    model.minimize(makespan)

    # the hint: the heuristic's solution, complete
    for j, visit in enumerate(hint.visits):
        if visit.crew < 0:
            break
    else:
        for j, visit in enumerate(hint.visits):
            model.add_hint(start[j], visit.start)
            model.add_hint(end[j], visit.end)
            for c in range(m):
                if (j, c) in assign:
                    model.add_hint(assign[j, c], c == visit.crew)
        for key, lit in arc_lits.items():
            c, a, b = key
            if a == 0 and b == 0:
                model.add_hint(lit, not hint.sequences[c])
            else:
                model.add_hint(lit, key in hint_arcs)
        model.add_hint(makespan, hint.makespan)

    solver = cp_model.CpSolver()
    params = solver.parameters
    params.random_seed = seed
    params.num_workers = workers
    params.interleave_search = True  # deterministic for a seed, with several workers
    params.max_deterministic_time = time_limit
    params.max_time_in_seconds = time_limit * 4 + 10  # a safety net on a very busy machine
    params.log_search_progress = False
    status = solver.solve(model)
    name = solver.status_name(status)
    solution = None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        sequences: list[list[int]] = [[] for _ in range(m)]
        for j in range(n):
            for c in range(m):
                if (j, c) in assign and solver.boolean_value(assign[j, c]):
                    sequences[c].append(j)
        for seq in sequences:
            seq.sort(key=lambda j: (solver.value(start[j]), j))
        solution = timed(problem, sequences, "CP-SAT")
    bound = None
    if complete and status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bound = int(round(solver.best_objective_bound))
    return CpResult(solution, name, bound, complete, solver.wall_time, solver.deterministic_time)
