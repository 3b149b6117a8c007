"""`make_schedule`: the weekend's schedule, its bounds and its verdict, as one value."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bigbang.inventory.model import Inventory
from bigbang.schedule.bounds import Bound, _hm, capacity, critical_path, energy
from bigbang.schedule.problem import Problem, breaks_inside, build_problem
from bigbang.schedule.solve import UNSCHEDULED, Solution, heuristic, ruin_recreate

FORMAT = 1


@dataclass(frozen=True)
class Verdict:
    fits: bool
    slack: int  # minutes between the last location's end and the window's end (negative: over)
    binding: str  # kind of the constraint that decides the end: team | access_hours | dependency | window
    summary: str
    details: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Schedule:
    problem: Problem
    solution: Solution
    bounds: list[Bound]
    verdict: Verdict
    seed: int
    solve: dict[str, Any]

    @property
    def makespan(self) -> int:
        return self.solution.makespan

    @property
    def lower_bound(self) -> Bound:
        return max(self.bounds, key=lambda b: (b.minutes, b.name))

    @property
    def ratio(self) -> float:
        lb = self.lower_bound.minutes
        return self.makespan / lb if lb else 1.0

    def slots(self) -> dict[str, tuple[str, float, int]]:
        """location id -> (team id, start offset in seconds after the window opens, crew number in team)
        of its first visit (a location in one piece: its only one)."""
        out: dict[str, tuple[str, float, int]] = {}
        for v in sorted(self.solution.visits, key=lambda v: (v.start, v.job)):
            if v.crew == UNSCHEDULED:
                continue
            crew = self.problem.crews[v.crew]
            out.setdefault(self.problem.jobs[v.job].site, (crew.team, v.start * 60.0, _crew_number(crew.id)))
        return out

    def slot_entries(self) -> dict[str, dict[str, Any]]:
        """schedule.json's `slots`: per location its first visit's team, offset and crew (what runs follow),
        and all its `visits` (one for a location in one piece), with why it was split."""
        p, sol = self.problem, self.solution
        out: dict[str, dict[str, Any]] = {}
        for lid, (team, offset, crew) in sorted(self.slots().items()):
            members = [sol.visits[j] for j in p.sites[lid] if sol.visits[j].crew != UNSCHEDULED]
            entry: dict[str, Any] = {"team": team, "offset_s": offset, "crew": crew, "visits": [
                {"visit": p.jobs[v.job].visit, "team": p.crews[v.crew].team, "crew": _crew_number(p.crews[v.crew].id),
                 "crew_id": p.crews[v.crew].id, "offset_s": v.start * 60.0, "end_s": v.end * 60.0,
                 "lane": p.jobs[v.job].lane, "devices": list(p.jobs[v.job].devices_range)}
                for v in sorted(members, key=lambda v: (v.start, p.jobs[v.job].visit))]}
            job = p.jobs[p.sites[lid][0]]
            if job.visits > 1:
                entry["split"] = job.split_reason
            out[lid] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        p, sol = self.problem, self.solution

        def when(minute: int) -> str:
            return p.local(minute).isoformat(timespec="minutes")

        visits = []
        for v in sorted((v for v in sol.visits if v.crew != UNSCHEDULED),
                        key=lambda v: (v.start, p.jobs[v.job].id)):
            job, crew = p.jobs[v.job], p.crews[v.crew]
            visits.append({
                "location": job.site, "visit": job.visit, "visits": job.visits, "visit_id": job.id,
                "first_device": job.devices_range[0], "last_device": job.devices_range[1], "name": job.name, "address": job.address, "team": crew.team, "crew": crew.id,
                "start_min": v.start, "end_min": v.end, "start": when(v.start), "end": when(v.end),
                "duration_min": v.end - v.start, "travel_min": v.travel, "devices": job.devices,
                "workstations": job.workstations, "thin_clients": job.thin_clients,
                "criticality": job.criticality, "access_hours": job.access_text,
                "ready_min": job.release, "after_window": v.end > p.window,
                # schedule.breaks: a break before setting out for it, and breaks inside the visit
                "break_before_min": v.pause, "breaks_inside": breaks_inside(v.end - v.start, p.break_after,
                                                                            p.break_length),
            })
        crews = []
        for c, seq in enumerate(sol.sequences):
            crew = p.crews[c]
            busy = sum(sol.visits[j].end - sol.visits[j].start for j in seq)
            crews.append({"crew": crew.id, "team": crew.team, "locations": [p.jobs[j].id for j in seq],
                          "busy_min": busy, "travel_min": sum(sol.visits[j].travel for j in seq),
                          "end_min": max((sol.visits[j].end for j in seq), default=0)})
        return {
            "format": FORMAT,
            "rollout": p.rollout,
            "inventory_digest": p.inventory_digest,
            "seed": self.seed,
            "timezone": p.timezone,
            "window": {"start": when(0), "end": when(p.window), "minutes": p.window},
            "makespan_min": self.makespan,
            "makespan_end": when(self.makespan),
            "lower_bound_min": self.lower_bound.minutes,
            "ratio": round(self.ratio, 4),
            "bounds": [{"name": b.name, "minutes": b.minutes, "because": b.because, "location": b.location}
                       for b in self.bounds],
            "verdict": {"fits": self.verdict.fits, "slack_min": self.verdict.slack,
                        "binding": self.verdict.binding, "summary": self.verdict.summary,
                        "details": self.verdict.details, "remedies": self.verdict.remedies},
            "solve": self.solve,
            "servers": {"prechecks_done_min": p.servers.prechecks_done,
                        "waves": [{"servers": len(names), "done_min": done, "done": when(done)}
                                  for names, done in p.servers.waves]},
            "estimates": {k: {"seconds": round(v, 1), "source": p.estimates.sources[k]}
                          for k, v in p.estimates.seconds.items()},
            "visits": visits,
            "splits": [{"location": lid, "visits": p.jobs[members[0]].visits, "because": p.jobs[members[0]].split_reason}
                       for lid, members in sorted(p.sites.items()) if p.jobs[members[0]].visits > 1],
            "unscheduled": sorted({p.jobs[j].site for j in sol.unscheduled}),
            "crews": crews,
            "slots": self.slot_entries(),
        }


def _crew_number(crew_id: str) -> int:
    return int(crew_id.rsplit("#", 1)[1]) - 1 if "#" in crew_id else 0


def make_schedule(inventory: Inventory, *, seed: int = 0, time_limit: float = 10.0,
                  measured: dict[str, float] | None = None, measured_from: str = "",
                  use_solver: bool = True, what_if: bool = True) -> Schedule:
    """Schedule the inventory's locations; deterministic for (inventory, seed, time_limit, measured)."""
    problem = build_problem(inventory, measured=measured, measured_from=measured_from)
    t0 = time.perf_counter()
    first = heuristic(problem, seed)
    t_heuristic = time.perf_counter() - t0
    cp_bound, own = critical_path(problem)
    bounds = [cp_bound, capacity(problem)]
    bounds.append(energy(problem, max(b.minutes for b in bounds)))
    solve: dict[str, Any] = {"heuristic_s": round(t_heuristic, 3), "heuristic_makespan_min": first.makespan,
                             "method": first.method}
    lb = max(b.minutes for b in bounds)
    # locations that cannot be done at all (the verdict names them) do not stop improving the others
    placeable = all(own[problem.jobs[j].id] is None for j in first.unscheduled)
    if placeable and first.makespan > lb:  # whole locations between days: see ruin_recreate
        t0 = time.perf_counter()
        first = ruin_recreate(problem, first, seed, stop_at=lb)
        solve.update(ruin_recreate_s=round(time.perf_counter() - t0, 3), ruin_recreate_makespan_min=first.makespan)
    best = first
    if use_solver and time_limit > 0 and placeable and first.makespan > lb:
        from bigbang.schedule.cpsat import improve_with_cpsat

        result = improve_with_cpsat(problem, first, time_limit=time_limit, seed=seed)
        solve.update(solver_status=result.status, solver_s=round(result.wall_s, 3),
                     solver_deterministic_s=round(result.deterministic_s, 3), solver_whole_model=result.complete,
                     deterministic=not result.stopped_by_wall_clock)
        if result.solution is not None and result.solution.key() < best.key():
            best = result.solution
        if result.bound is not None and not first.unscheduled:  # a bound for all locations, not a subset
            bounds.append(Bound("solver", result.bound, "CP-SAT proved no schedule ends earlier"))
    elif use_solver and time_limit > 0 and placeable:
        solve["solver_status"] = "not needed: the first answer meets the lower bound"
    elif use_solver and time_limit > 0:
        solve["solver_status"] = "not run: the first answer left out locations some crew could do"
    else:
        solve["solver_status"] = "not run (time limit 0)"
    solve["method"] = best.method

    def rebuild(**kw: Any) -> Problem:
        return build_problem(inventory, measured=measured, measured_from=measured_from, **kw)

    verdict = judge(problem, best, bounds, own, inventory, seed if what_if else None, rebuild)
    return Schedule(problem, best, bounds, verdict, seed, solve)


# ---------------------------------------------------------------- the verdict

def judge(problem: Problem, sol: Solution, bounds: list[Bound], own: dict[str, int | None],
          inventory: Inventory, seed: int | None, rebuild=None) -> Verdict:
    jobs, W = problem.jobs, problem.window
    details, remedies = [], []

    # Locations that cannot be done at all, or not inside the window even alone.
    impossible = [j for j in range(len(jobs)) if own[jobs[j].id] is None]
    late_alone = [j for j in range(len(jobs)) if (own[jobs[j].id] or 0) > W]
    for j in impossible:
        job = jobs[j]
        if job.visits > 1 and job.visit > 1 and any(jobs[i].site == job.site for i in impossible if i < j):
            continue
        if job.skills and not any(set(job.skills) <= crew.skills for crew in problem.crews):
            details.append(_skills_text(problem, j))
            remedies.append(_skills_remedy(problem, inventory, j))
            continue
        longest = max((b - max(a, job.release) for a, b in job.access), default=0)
        need = min(job.duration.values())
        details.append(f"{job.id} ({job.name}) needs {_hm(need)} without a break, but its longest access "
                       f"opening after its servers are ready is {_hm(max(longest, 0))} ({job.access_text})")
        remedies.append(f"{job.id}: open its access hours longer, split the location in two, or "
                        + _more_devices(inventory, problem, j, longest))
    for j in late_alone:
        job = jobs[j]
        alone = own[job.id] or 0
        details.append(f"even alone, {job.id} cannot end before +{_hm(alone)} "
                       f"({_hm(alone - W)} after the window closes): {_explain_alone(problem, j)}")
    if impossible or late_alone:
        binding = "access_hours" if impossible or any(_alone_binding(problem, j) == "access_hours"
                                                      for j in late_alone) else "dependency"
        for j in late_alone:
            kind = _alone_binding(problem, j)
            job = jobs[j]
            if kind == "dependency":
                remedies.append(f"{job.id}: its servers ({', '.join(job.release_servers[:3])}) are ready "
                                f"at +{_hm(job.release)}; provision that wave sooner or drop the dependency")
            else:
                remedies.append(f"{job.id}: give it access hours inside the window")
            remedies.append(f"move {job.id} to a second weekend")
        details.extend(problem.people_notes)
        others = len(jobs) - len(impossible) - len(late_alone)
        if others and not late_alone:
            end = problem.local(sol.makespan)
            details.append(f"the other {others} locations fit: the last ends {end:%a %H:%M}"
                           + (f", {_hm(W - sol.makespan)} before the window closes" if sol.makespan <= W
                              else f", {_hm(sol.makespan - W)} after the window closes"))
        worst = max([sol.makespan] + [own[jobs[j].id] or 0 for j in late_alone])
        return Verdict(False, W - worst, binding, "does not fit: " + details[0]
                       + (f" (and {len(details) - 1} more like it)" if len(details) > 1 else ""), details, remedies)

    slack = W - sol.makespan
    chain, binding, binding_text = critical_chain(problem, sol)
    details.append(binding_text)
    details.extend(split_notes(problem))
    details.extend(problem.people_notes)
    lb = max(bounds, key=lambda b: b.minutes)
    details.append(f"lower bound +{_hm(lb.minutes)} ({lb.name}): {lb.because}")
    if slack >= 0:
        summary = (f"fits: the last location ends at {problem.local(sol.makespan):%a %H:%M}, "
                   f"{_hm(slack)} before the window closes; the end is set by {binding_text}")
        return Verdict(True, slack, binding, summary, details, [])

    late = sorted((v for v in sol.visits if v.end > W), key=lambda v: v.start)
    remedies.append(f"a longer window: until {problem.local(sol.makespan):%a %d %b %H:%M} "
                    f"({_hm(-slack)} more)")
    remedies.append("move " + ", ".join(jobs[v.job].id for v in late) + " to a second weekend "
                    f"({len(late)} location{'s' if len(late) != 1 else ''} ending after the window)")
    if seed is not None:
        rebuild = rebuild or (lambda **kw: build_problem(inventory, **kw))
        remedies.extend(_more_crews(problem, sol, inventory, seed, rebuild))
    return Verdict(False, slack, binding,
                   f"does not fit: the last location ends {_hm(-slack)} after the window closes; "
                   f"the end is set by {binding_text}", details, remedies)


def _skills_text(problem: Problem, j: int) -> str:
    job = problem.jobs[j]
    have = sorted({s for crew in problem.crews for s in crew.skills})
    missing = sorted(set(job.skills) - set(have))
    return (f"{job.site} ({job.name}) needs a crew with the skills {', '.join(job.skills)}"
            + (f"; no technician has {', '.join(missing)}" if missing else
               "; no crew has all of them together"))


def _skills_remedy(problem: Problem, inventory: Inventory, j: int) -> str:
    """The fewest skills to give one crew of the location's own team so that it can take the location."""
    job = problem.jobs[j]
    own = [crew for crew in problem.crews if crew.team == job.home_team] or problem.crews
    crew = min(own, key=lambda c: (len(set(job.skills) - c.skills), c.id))
    lacking = sorted(set(job.skills) - crew.skills)
    who = crew.people[0] if crew.people else f"a technician of {crew.team}"
    return (f"{job.site}: give {len(lacking)} skill{'s' if len(lacking) != 1 else ''} ({', '.join(lacking)}) "
            f"to {who} (crew {crew.id}), or drop them from schedule.skills.{job.site}")


def split_notes(problem: Problem) -> list[str]:
    """Why each split location was split, in words."""
    return [problem.jobs[members[0]].split_reason for members in problem.sites.values()
            if problem.jobs[members[0]].visits > 1]


def _more_devices(inventory: Inventory, problem: Problem, j: int, longest: int) -> str:
    """The smallest parallel_devices of the location's own team that makes it fit its longest opening."""
    from bigbang.schedule.problem import location_minutes

    loc = inventory.location_by_id[problem.jobs[j].site]
    for team in [inventory.team_by_id[loc.team]]:
        for k in range(team.capacity.parallel_devices + 1, 501):
            bigger = team.model_copy(update={"capacity": team.capacity.model_copy(update={"parallel_devices": k})})
            if location_minutes(loc, bigger, problem.estimates, inventory.schedule.setup,
                                (problem.break_after, problem.break_length)) <= longest:
                return f"raise parallel_devices of {team.id} to {k} (from {team.capacity.parallel_devices})"
    return "more devices at once will not do it alone"


def _alone_binding(problem: Problem, j: int) -> str:
    """Why a location cannot end inside the window even alone: its servers come too late, or its
    access hours open too late (or too briefly) after they are ready."""
    job = problem.jobs[j]
    return "dependency" if job.release + min(job.duration.values()) > problem.window else "access_hours"


def _explain_alone(problem: Problem, j: int) -> str:
    from bigbang.schedule.bounds import _path_text

    job = problem.jobs[j]
    return _path_text(problem, j, job.release + min(job.duration.values())).split(": ", 1)[1]


def critical_chain(problem: Problem, sol: Solution) -> tuple[list[str], str, str]:
    """Walk back from the location that ends last: what set each start?"""
    last = max((v for v in sol.visits if v.crew >= 0), key=lambda v: (v.end, problem.jobs[v.job].id), default=None)
    if last is None:
        return [], "window", "nothing scheduled"
    crew = problem.crews[last.crew]
    seq = sol.sequences[last.crew]
    chain = []
    pos = seq.index(last.job)
    reason = "team"
    while pos >= 0:
        v = sol.visits[seq[pos]]
        job = problem.jobs[v.job]
        prev_end = sol.visits[seq[pos - 1]].end if pos > 0 else 0
        chain.append(job.id)
        if pos > 0 and v.start == prev_end + v.travel:
            pos -= 1
            continue  # started as soon as the crew got there: the crew's workload carries on
        if v.start == job.release and job.release > 0:
            reason = "dependency"
            what = (f"dependency: {job.id} waits for servers {', '.join(job.release_servers[:3])} "
                    f"(ready at +{_hm(job.release)})") if job.release_servers else \
                f"dependency: {job.id} waits for the server prechecks (+{_hm(job.release)})"
        elif any(a == v.start for a, _ in job.access) and job.access_text != "24/7":
            earlier = [(lo, hi) for c in range(len(problem.crews)) for lo, hi in problem.start_windows(v.job, c)
                       if lo < v.start]
            if earlier:  # it could have been done in an earlier opening: no crew had the time there
                reason = "team"
                lo = min(a for a, _ in earlier)
                able = sum(1 for c in range(len(problem.crews)) if problem.start_windows(v.job, c))
                what = (f"no crew free long enough for {job.id} in its earlier opening (from "
                        f"{problem.local(lo):%a %H:%M}): the time of all {able} crews that may take it is used, "
                        f"so it waits for its next opening, {problem.local(v.start):%a %H:%M} "
                        f"(access hours {job.access_text})")
            else:
                reason = "access_hours"
                what = (f"access hours of {job.id} ({job.access_text}): work can start only at "
                        f"{problem.local(v.start):%a %H:%M}")
        elif any(a == v.start for a, _ in crew.availability):
            reason = "team"
            what = f"shift hours of team {crew.team}"
        else:
            reason = "team"
            what = f"team {crew.team} starting at the window's opening"
        chain.reverse()
        if len(chain) > 1:
            text = (f"team {crew.team} (crew {crew.id}) working {len(chain)} locations back to back "
                    f"({' → '.join(chain[:6])}{' ...' if len(chain) > 6 else ''}) after {what}")
            return chain, "team" if reason == "team" or len(chain) > 2 else reason, text
        return chain, reason, what
    chain.reverse()
    return chain, "team", f"team {crew.team} (crew {crew.id}) working {len(chain)} locations back to back"


def _more_crews(problem: Problem, sol: Solution, inventory: Inventory, seed: int, rebuild) -> list[str]:
    """Would one more crew in the busiest team make it fit? Checked with the heuristic."""
    out: list[str] = []
    last = max((v for v in sol.visits if v.crew >= 0), key=lambda v: v.end, default=None)
    if last is None:
        return out
    team = problem.crews[last.crew].team
    for extra in (1, 2, 3):
        trial = rebuild(extra_crews={team: extra})
        trial_sol = heuristic(trial, seed, restarts=8)
        if not trial_sol.unscheduled and trial_sol.makespan <= trial.window:
            out.append(f"{extra} more crew{'s' if extra > 1 else ''} in team {team} (parallel_locations "
                       f"{inventory.team_by_id[team].capacity.parallel_locations + extra}): the heuristic then "
                       f"ends at {trial.local(trial_sol.makespan):%a %H:%M}, inside the window")
            break
    else:
        out.append(f"3 more crews in team {team} are not enough on their own; combine with the other remedies")
    return out
