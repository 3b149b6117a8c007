"""Solving: a fast greedy first answer with a local search, ruin and recreate to move whole
locations between crews and days, and CP-SAT to improve it (lower bounds: bounds.py).

A solution is an ordered list of jobs per crew; start times follow from the
order (each job as early as its release, access hours, shift and the crew's
previous job plus travel allow), so every solution respects every constraint
by construction.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bigbang.schedule.problem import Problem

UNSCHEDULED = -1


@dataclass(frozen=True)
class Visit:
    job: int
    crew: int
    start: int
    end: int
    travel: int  # minutes from the crew's previous place (or base)
    pause: int = 0  # a break (schedule.breaks) taken before setting out for it


@dataclass(frozen=True)
class Solution:
    sequences: tuple[tuple[int, ...], ...]  # per crew: job indices in visit order
    visits: tuple[Visit, ...]  # per job index (crew UNSCHEDULED: no place for it)
    method: str

    @property
    def unscheduled(self) -> list[int]:
        return [v.job for v in self.visits if v.crew == UNSCHEDULED]

    @property
    def makespan(self) -> int:
        ends = [v.end for v in self.visits if v.crew != UNSCHEDULED]
        return max(ends, default=0)

    @property
    def total_travel(self) -> int:
        return sum(v.travel for v in self.visits if v.crew != UNSCHEDULED)

    def key(self) -> tuple[int, int, int, int]:
        """Better is smaller: everything placed, then makespan, then summed ends, then travel."""
        return (len(self.unscheduled), self.makespan, sum(v.end for v in self.visits), self.total_travel)


def walk(problem: Problem, c: int, seq: Sequence[int], free: int = 0, prev: int | None = None,
         worked: int = 0) -> Iterator[tuple[int, int, int, int, int] | None]:
    """Crew c's visits of `seq` in order, each as early as it can, after a crew free at `free` coming from
    `prev` (None: its base) with `worked` minutes since its last break: (job, travel, start, end, worked
    after it) per visit; None for the first that does not fit, and then no more."""
    for j in seq:
        travel = problem.base_travel[c][j] if prev is None else problem.travel[prev][j]
        placed = problem.visit_start(j, c, free, travel, worked)
        if placed is None:
            yield None
            return
        start, _, worked = placed
        free, prev = start + problem.duration(j, c), j
        yield j, travel, start, free, worked


def timed(problem: Problem, sequences: list[list[int]], method: str) -> Solution:
    """Start every job as early as its crew's order allows (left-shifted: never later than needed).
    A visit whose previous visit (same lane) is not before it on the same crew is left out."""
    visits: dict[int, Visit] = {}
    kept: list[tuple[int, ...]] = []
    for c, seq in enumerate(sequences):
        free, prev, order, worked = 0, None, [], 0
        for j in seq:
            before = problem.jobs[j].prev
            if before is not None and (before not in visits or visits[before].crew != c):
                continue
            travel = problem.base_travel[c][j] if prev is None else problem.travel[prev][j]
            placed = problem.visit_start(j, c, free, travel, worked)
            if placed is None:
                continue  # cannot fit here; reported as unscheduled unless another crew has it
            start, pause, worked = placed
            visits[j] = Visit(j, c, start, start + problem.duration(j, c), travel, pause)
            free, prev = visits[j].end, j
            order.append(j)
        kept.append(tuple(order))
    all_visits = tuple(visits.get(j, Visit(j, UNSCHEDULED, 0, 0, 0)) for j in range(len(problem.jobs)))
    return Solution(tuple(kept), all_visits, method)


def _place(problem: Problem, lane: list[int], c: int, free: int, last: int | None) -> tuple[int, int] | None:
    """(first start, last end) of a lane's visits appended to crew c, or None if one does not fit."""
    first = None  # (the break before a lane's first visit is not known here: timed() adds it)
    for visit in walk(problem, c, lane, free, last):
        if visit is None:
            return None
        _, _, start, free, _ = visit
        first = start if first is None else first
    return (first if first is not None else free), free


# ---------------------------------------------------------------- greedy

def greedy(problem: Problem, order: list[int], method: str = "greedy", best_fit: bool = False) -> Solution:
    """Each job in `order` to the crew where it finishes first (appended to that crew's day); with
    `best_fit`, to the crew whose current opening it fills most tightly (packs days like bins). The
    visits of a split location's lane go together, to one crew. Fixed work stays where it is."""
    crews = len(problem.crews)
    free = [0] * crews
    last: list[int | None] = [None] * crews
    sequences: list[list[int]] = [[] for _ in range(crews)]
    for j, (c, _, end) in sorted(problem.fixed.items(), key=lambda kv: kv[1][1]):
        sequences[c].append(j)
        free[c], last[c] = max(free[c], end), j
    for j in order:
        if j in problem.fixed:
            continue
        whole = problem.lane_of(j)
        lane = [k for k in whole if k not in problem.fixed]
        if lane[0] != j:
            continue  # placed with the first visit of its lane still to do
        done = [problem.fixed[k][0] for k in whole if k in problem.fixed]  # the lane's crew, when under way
        best = None
        for c in (done[:1] if done else range(crews)):
            placed = _place(problem, lane, c, free[c], last[c])
            if placed is None:
                continue
            start, end = placed
            if best_fit and len(lane) == 1:
                close = next(hi for lo, hi in problem.start_windows(j, c) if lo <= start <= hi) + (end - start)
                key = (close, close - end, end, c)
            else:
                before = last[c]
                travel = problem.base_travel[c][j] if before is None else problem.travel[before][j]
                key = (end, start - free[c], travel, c)
            if best is None or key < best[0]:
                best = (key, c, end)
        if best is None:
            continue
        _, c, end = best
        sequences[c].extend(lane)
        free[c], last[c] = end, lane[-1]
    return timed(problem, sequences, method)


def priority_orders(problem: Problem, rng: random.Random, restarts: int) -> list[tuple[str, list[int]]]:
    jobs = problem.jobs
    n = len(jobs)
    idx = list(range(n))

    def longest(j: int) -> int:
        return max(jobs[j].duration.values())

    def latest_start(j: int) -> int:  # the tightest jobs first: the least room before the window ends
        closing = [b for a, b in jobs[j].access if b > jobs[j].release]
        return (closing[-1] if closing else problem.horizon) - longest(j)

    def open_minutes(j: int) -> int:
        return sum(b - max(a, jobs[j].release) for a, b in jobs[j].access if b > jobs[j].release)

    def first_opening(j: int) -> int:
        return next((max(a, jobs[j].release) for a, b in jobs[j].access if b > jobs[j].release), problem.horizon)

    rules = [
        ("longest first", sorted(idx, key=lambda j: (-longest(j), jobs[j].id))),
        ("release, longest first", sorted(idx, key=lambda j: (jobs[j].release, -longest(j), jobs[j].id))),
        ("opening, longest first", sorted(idx, key=lambda j: (first_opening(j), -longest(j), jobs[j].id))),
        ("least slack first", sorted(idx, key=lambda j: (latest_start(j), -longest(j), jobs[j].id))),
        # locations open the fewest hours first: the ones open around the clock then fill the nights
        ("fewest open hours first", sorted(idx, key=lambda j: (open_minutes(j), -longest(j), jobs[j].id))),
    ]
    base = rules[2][1]
    for r in range(restarts):
        noise = {j: rng.random() for j in idx}
        spread = 0.15 + 0.5 * r / max(1, restarts)
        rules.append((f"randomised #{r + 1}", sorted(
            idx, key=lambda j: (first_opening(j) + spread * longest(j) * noise[j] - longest(j) * 0.05, jobs[j].id))))
    del base
    return rules


def heuristic(problem: Problem, seed: int = 0, restarts: int = 16) -> Solution:
    """The best of several priority rules and seeded random restarts, then local search
    (deterministic for a seed: no step depends on the clock)."""
    rng = random.Random(seed)
    best = None
    for name, order in priority_orders(problem, rng, restarts):
        for best_fit in (False, True):
            sol = greedy(problem, order, f"greedy ({name}{', best fit' if best_fit else ''})", best_fit)
            if best is None or sol.key() < best.key():
                best = sol
    assert best is not None  # priority_orders always gives the fixed rules
    return improve(problem, best)


def _crew_stats(problem: Problem, c: int, seq: list[int]) -> tuple[bool, int, int, int]:
    """(all fit, end, summed ends, travel) of one crew's sequence, started as early as possible."""
    free, total, travel_sum = 0, 0, 0
    for visit in walk(problem, c, seq):
        if visit is None:
            return False, 0, 0, 0
        _, travel, _, free, _ = visit
        total += free
        travel_sum += travel
    return True, free, total, travel_sum


def _best_move(problem: Problem, seqs: list[list[int]], stats: list, late: int, current, key):
    """The first move or swap of one of `late`'s jobs that makes `key` smaller, or None."""
    m = len(problem.crews)
    found = None
    for j in reversed(seqs[late]):
        if problem.chained(j) or j in problem.fixed:
            continue  # a lane's visits and work already done stay where they are
        base_late = [x for x in seqs[late] if x != j]
        st_late = _crew_stats(problem, late, base_late)
        for c in sorted(range(m), key=lambda c: (stats[c][1], c)):
            if c == late or not problem.start_windows(j, c):
                continue
            pinned = max((i + 1 for i, k in enumerate(seqs[c]) if k in problem.fixed), default=0)
            for pos in range(pinned, len(seqs[c]) + 1):  # move j into c (after its work already done)
                cand = seqs[c][:pos] + [j] + seqs[c][pos:]
                st_c = _crew_stats(problem, c, cand)
                if not (st_c[0] and st_late[0]):
                    continue
                trial = list(stats)
                trial[late], trial[c] = st_late, st_c
                if key(trial) < current:
                    found = (late, c, base_late, cand, trial)
                    break
            if found:
                break
            for k_pos, k in enumerate(seqs[c]):  # swap j and k
                if problem.chained(k) or k in problem.fixed or not problem.start_windows(k, late):
                    continue
                cand_c = seqs[c][:k_pos] + [j] + seqs[c][k_pos + 1:]
                cand_l = [k if x == j else x for x in seqs[late]]
                st_c, st_l = _crew_stats(problem, c, cand_c), _crew_stats(problem, late, cand_l)
                if not (st_c[0] and st_l[0]):
                    continue
                trial = list(stats)
                trial[late], trial[c] = st_l, st_c
                if key(trial) < current:
                    found = (late, c, cand_l, cand_c, trial)
                    break
            if found:
                break
        if found:
            break
    return found


def improve(problem: Problem, sol: Solution, max_rounds: int = 400) -> Solution:
    """Local search: move a job of a crew that ends at the makespan to another crew, or swap it with one
    there. Accepts a change when (makespan, crews ending at it, summed ends, travel) gets smaller; stops
    when nothing helps or after `max_rounds` accepted changes."""
    m = len(problem.crews)  # locations no crew can take stay unscheduled; the rest improve
    seqs = [list(s) for s in sol.sequences]
    stats = [_crew_stats(problem, c, seqs[c]) for c in range(m)]

    def key(st) -> tuple[int, int, int, int]:  # fewer crews at the makespan is progress towards a lower one
        top = max(s[1] for s in st)
        return (top, sum(1 for s in st if s[1] == top), sum(s[2] for s in st), sum(s[3] for s in st))

    current = key(stats)
    for _ in range(max_rounds):
        top = max(st[1] for st in stats)
        found = None
        for late in [c for c in range(m) if stats[c][1] == top]:
            found = _best_move(problem, seqs, stats, late, current, key)
            if found:
                break
        if not found:
            break
        late, c, new_late, new_c, trial = found
        seqs[late], seqs[c], stats = new_late, new_c, trial
        current = key(stats)
    method = sol.method if sol.method.endswith("+ local search") else sol.method + " + local search"
    better = timed(problem, seqs, method)
    return better if better.key() <= sol.key() else sol


# ---------------------------------------------------------------- ruin and recreate

def _latest_start(problem: Problem, j: int, cap: int) -> int:
    """The latest start at which j can still end by `cap` on some crew (the horizon: nowhere)."""
    best = None
    for c in range(len(problem.crews)):
        d = problem.duration(j, c)
        for lo, hi in problem.start_windows(j, c):
            x = min(hi, cap - d)
            if x >= lo and (best is None or x > best):
                best = x
    return problem.horizon if best is None else best


def _timeline(problem: Problem, c: int, seq: list[int]) -> list[tuple[int, int, int, int]] | None:
    """After each visit of crew c's sequence: (free, summed ends, travel, worked without a break); None
    when one does not fit."""
    out = []
    total, travel_sum = 0, 0
    for visit in walk(problem, c, seq):
        if visit is None:
            return None
        _, travel, _, free, worked = visit
        total += free
        travel_sum += travel
        out.append((free, total, travel_sum, worked))
    return out


def _insertion(problem: Problem, c: int, seq: list[int], line: list[tuple[int, int, int, int]], pos: int, j: int,
               cap: int) -> tuple[int, int, int] | None:
    """(end, summed ends, travel) of crew c's sequence with j inserted at `pos`, or None when something
    then ends after `cap` or does not fit. `line` is the sequence's `_timeline`: the visits before `pos`
    keep their times, and once a later visit ends as before (a crew waiting for an opening) so does the rest."""
    if pos:
        free, total, travel_sum, worked = line[pos - 1]
        prev: int | None = seq[pos - 1]
    else:
        free, total, travel_sum, worked, prev = 0, 0, 0, 0, None
    for k, visit in enumerate(walk(problem, c, [j, *seq[pos:]], free, prev, worked)):
        if visit is None:
            return None
        _, travel, _, free, worked = visit
        if free > cap:
            return None
        total += free
        travel_sum += travel
        if k:
            before = line[pos + k - 1]
            if before[0] == free and before[3] == worked:  # from here on as before
                end, ends, moves, _ = line[-1]
                return (None if end > cap else
                        (end, total + ends - before[1], travel_sum + moves - before[2]))
    return free, total, travel_sum


def _recreate(problem: Problem, group: list[int], base: dict[int, list[int]], removed: list[int], cap: int,
              rng: random.Random, noise: float, room: dict[int, int]) -> dict[int, list[int]] | None:
    """Insert `removed` into the crews of `group` (each at its cheapest position: least added travel and
    least later end of its crew, with some noise) so that every crew ends by `cap`; None when one has no place.
    The jobs with the least room before `cap` (`room`: their latest starts) go first, the longest of them first."""
    for j in removed:
        if j not in room:
            room[j] = _latest_start(problem, j, cap)
    order = sorted(removed, key=lambda j: (room[j] - (1 + noise * rng.random()) * max(problem.jobs[j].duration.values()),
                                           j))
    lines = {}
    for c in group:
        line = _timeline(problem, c, base[c])
        if line is None or (line and line[-1][0] > cap):
            return None
        lines[c] = line
    for j in order:
        best = None
        for c in group:
            if not problem.start_windows(j, c):
                continue
            seq, line = base[c], lines[c]
            old_end, old_travel = (line[-1][0], line[-1][2]) if line else (0, 0)
            pinned = max((i + 1 for i, k in enumerate(seq) if k in problem.fixed), default=0)
            for pos in range(pinned, len(seq) + 1):
                st = _insertion(problem, c, seq, line, pos, j, cap)
                if st is None:
                    continue
                score = ((st[2] - old_travel) + (st[0] - old_end)) * (1 + noise * rng.random())
                if best is None or score < best[0]:
                    best = (score, c, pos)
        if best is None:
            return None
        _, c, pos = best
        base[c] = base[c][:pos] + [j] + base[c][pos:]
        lines[c] = _timeline(problem, c, base[c]) or []
    return base


def ruin_recreate(problem: Problem, sol: Solution, seed: int = 0, *, rounds: int = 8000, stall: int = 2000,
                  stop_at: int = 0, group_size: int = 4, compact: float = 0.4, near: float = 0.6,
                  noise: float = 0.3) -> Solution:
    """Large-neighbourhood search by ruin and recreate (deterministic for a seed: rounds are counted).

    Each round takes a few crews, removes all their locations (work done or under way and the visits of
    split lanes stay) and inserts them again one by one at their cheapest place among those crews, every
    crew ending before the makespan. Two kinds of round:
    - a crew that ends at the makespan with others (those nearest to it, or any): kept when all of them
      now end earlier, so one crew fewer ends at the makespan; when none is left there, it has dropped;
    - only crews that end earlier: kept when their travel shrinks (time freed inside the openings that
      a later round can fill: whole locations pack into an opening only with room to spare).
    This moves whole locations between days, which a move or swap of one location cannot: a long
    location waiting for the next opening goes into an earlier one when shorter ones make room for it
    and go to the later opening instead. After `stall` rounds without taking a crew off the makespan it
    goes back to where the makespan last dropped (or the start) and tries again from there, with other
    random choices. Stops at `stop_at` (a lower bound) or after `rounds` in all."""
    rng = random.Random(seed)
    m = len(problem.crews)
    seqs = [list(s) for s in sol.sequences]
    stats = [_crew_stats(problem, c, seqs[c]) for c in range(m)]
    travel = problem.travel
    quiet = 0
    rooms: dict[int, dict[int, int]] = {}  # cap -> job -> its latest start to end by cap
    anchor = ([list(s) for s in seqs], list(stats))  # where the makespan last dropped
    for _ in range(rounds):
        top = max((st[1] for st in stats), default=0)
        if top <= stop_at:
            break
        if quiet >= stall:  # stuck: try again from where the makespan last dropped
            seqs, stats, quiet = [list(s) for s in anchor[0]], list(anchor[1]), 0
        quiet += 1
        at_end = [c for c in range(m) if stats[c][1] == top]
        below = [c for c in range(m) if stats[c][1] < top]
        compacting = rng.random() < compact
        pool = below if compacting else at_end
        if len(below) < 1 + compacting:
            if compacting:
                continue
            break
        first = pool[rng.randrange(len(pool))]
        rest = [c for c in below if c != first]
        # the longer nothing helps, the more crews at once (up to twice as many)
        k = min(len(rest), rng.randint(1, group_size - 1 + min(group_size, quiet * 2 // max(1, stall))))
        if rng.random() < near:  # crews working close to it: exchanges there cost little travel
            dist = {c: min((travel[a][b] for a in seqs[first] for b in seqs[c]), default=problem.horizon)
                    for c in rest}
            rest = sorted(rest, key=lambda c: (dist[c], c))[:2 * k]
        group = [first, *rng.sample(rest, k)]
        removed = [j for c in group for j in seqs[c] if not problem.chained(j) and j not in problem.fixed]
        base = {c: [j for j in seqs[c] if j not in removed] for c in group}
        out = _recreate(problem, group, base, removed, top - 1, rng, noise, rooms.setdefault(top - 1, {}))
        if out is None:
            continue
        new = {c: _crew_stats(problem, c, out[c]) for c in group}
        if compacting and sum(new[c][3] for c in group) >= sum(stats[c][3] for c in group):
            continue
        if not compacting:
            quiet = 0
        for c in group:
            seqs[c], stats[c] = out[c], new[c]
        if max(st[1] for st in stats) < top:
            anchor = ([list(s) for s in seqs], list(stats))
    better = timed(problem, seqs, sol.method + " + ruin and recreate")
    return better if better.key() < sol.key() else sol
