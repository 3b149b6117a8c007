"""Split visits, Monte Carlo risk, travel in the bound, and re-solving with fixed work."""

from __future__ import annotations

import json
import shutil

import pytest

from bigbang.inventory import load_inventory
from bigbang.schedule import make_schedule
from bigbang.schedule.problem import intersect
from bigbang.schedule.solve import UNSCHEDULED
from tests.test_schedule import FAST, check_constraints, write_inventory

SAT_SUN_MORNINGS = [{"days": ["sat", "sun"], "from": "08:00", "to": "12:00"}]  # 4-hour openings


def check_visits(schedule) -> None:
    """Every constraint of a location in one piece, plus: the visits of a lane on one crew, in device order,
    each inside one opening and no shorter than the minimum visit; a split location's visits cover its
    devices exactly once."""
    check_constraints(schedule)
    p, sol = schedule.problem, schedule.solution
    for members in p.sites.values():
        jobs = [p.jobs[j] for j in members]
        if jobs[0].visits == 1:
            continue
        covered = sorted(job.devices_range for job in jobs)
        assert covered[0][0] == 0 and all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
        assert covered[-1][1] == jobs[0].workstations + jobs[0].thin_clients or \
            covered[-1][1] == sum(job.devices for job in jobs)
        for j in members:
            v, job = sol.visits[j], p.jobs[j]
            assert v.crew != UNSCHEDULED, f"{job.id} not scheduled"
            assert v.end - v.start >= p.min_visit, f"{job.id} shorter than the minimum visit"
            assert any(lo <= v.start and v.end <= hi for lo, hi in intersect(job.access, p.crews[v.crew].availability))
            if job.prev is not None:
                before = sol.visits[job.prev]
                assert before.crew == v.crew, f"{job.id}: a lane is worked by one crew"
                assert before.end <= v.start, f"{job.id} starts before the previous visit ends"
                assert p.jobs[job.prev].devices_range[1] == job.devices_range[0], "device order kept"


def test_location_too_long_for_any_opening_is_split_into_visits(tmp_path):
    teams = [{"id": "t1", "name": "T1", "capacity": {"parallel_locations": 1, "parallel_devices": 1}}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [
        {"id": "BIG", "ws": 300, "access_hours": SAT_SUN_MORNINGS}, {"id": "SMALL", "ws": 10}], teams=teams,
        schedule={"step_durations": {"ws.prestage": 0, "ws.image": "1m", "ws.verify": 0},
                  "split": {"min_visit": "1h"}}))
    s = make_schedule(inv, time_limit=2)
    check_visits(s)
    assert s.verdict.fits and not s.solution.unscheduled
    big = s.problem.sites["BIG"]
    assert len(big) == 2  # 5 hours of work, 4-hour openings: Saturday and Sunday morning
    days = [s.problem.local(s.solution.visits[j].start).strftime("%a %H:%M") for j in big]
    assert days == ["Sat 08:00", "Sun 08:00"]
    data = s.to_dict()
    slot = data["slots"]["BIG"]
    assert [v["visit"] for v in slot["visits"]] == [1, 2]
    assert slot["offset_s"] == slot["visits"][0]["offset_s"]  # what runs follow today: the first visit
    from bigbang.schedule.store import slots_of

    assert slots_of(data)["BIG"] == ("t1", slot["visits"][0]["offset_s"], 0)  # readable by the current consumers
    assert "split into 2 visits" in slot["split"] and "4h00" in slot["split"]
    assert data["splits"][0]["location"] == "BIG"
    assert any("BIG" in d and "split" in d for d in s.verdict.details)
    assert "visits" not in data["slots"]["SMALL"] or len(data["slots"]["SMALL"]["visits"]) == 1
    # the bound counts the location's whole work however it is split: never above the schedule
    assert s.makespan >= s.lower_bound.minutes > 0


def test_minimum_visit_length_is_respected(tmp_path):
    teams = [{"id": "t1", "name": "T1", "capacity": {"parallel_locations": 1, "parallel_devices": 1}}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [
        {"id": "BIG", "ws": 300, "access_hours": SAT_SUN_MORNINGS}], teams=teams,
        schedule={"step_durations": {"ws.prestage": 0, "ws.image": "1m", "ws.verify": 0},
                  "split": {"min_visit": "3h", "max_visits": 2}}))  # 2 visits of 2h30 each would be too short
    s = make_schedule(inv, time_limit=1)
    assert not s.verdict.fits
    assert [s.problem.jobs[j].id for j in s.solution.unscheduled] == ["BIG"]


def test_several_crews_at_once_when_the_inventory_allows_it(tmp_path):
    teams = [{"id": "t1", "name": "T1", "capacity": {"parallel_locations": 2, "parallel_devices": 1}}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [
        {"id": "BIG", "ws": 300, "access_hours": SAT_SUN_MORNINGS}], teams=teams,
        schedule={"step_durations": {"ws.prestage": 0, "ws.image": "1m", "ws.verify": 0},
                  "split": {"min_visit": "1h", "crews_at_once": 2, "devices_per_crew": 100}}))
    s = make_schedule(inv, time_limit=2)
    check_visits(s)
    visits = [s.solution.visits[j] for j in s.problem.sites["BIG"]]
    assert len(visits) == 2 and visits[0].crew != visits[1].crew  # two lanes, two crews
    assert visits[0].start == visits[1].start  # at the same time, Saturday 08:00
    assert s.makespan == visits[0].start + 150
    assert "2 crews at once" in s.problem.jobs[s.problem.sites["BIG"][0]].split_reason


@pytest.fixture(scope="module")
def hoglandet(tmp_path_factory):
    from bigbang.inventory.generate import PRESETS, generate, write

    root = tmp_path_factory.mktemp("hoglandet") / "inv"
    write(generate(PRESETS["hoglandet"], seed=1), root)
    return root


def test_hoglandet_fits_with_split_town_halls(hoglandet):
    s = make_schedule(load_inventory(hoglandet), seed=1, time_limit=0, what_if=False)
    check_visits(s)
    assert s.verdict.fits, s.verdict.summary
    assert not s.solution.unscheduled
    split = {site for site, members in s.problem.sites.items() if len(members) > 1}
    assert {"ANE-204", "GRI-237", "HOL-056", "LAN-176"} <= split  # the town halls that need 16-18 h
    for site in split:
        assert s.problem.local(s.solution.visits[s.problem.sites[site][0]].start).strftime("%a") != \
            s.problem.local(s.solution.visits[s.problem.sites[site][-1]].start).strftime("%a")  # across days
    assert s.makespan >= s.lower_bound.minutes and s.ratio <= 1.03


# ---------------------------------------------------------------- risk

def test_risk_on_the_demo_is_reproducible_and_prints_probability_and_percentiles(bigbang, tmp_path):
    from tests.conftest import DEMO

    inv = tmp_path / "demo"
    shutil.copytree(DEMO, inv)
    runs = [bigbang("schedule", inv, "--risk", "100", "--seed", "3", "--out", tmp_path / f"out{k}") for k in (1, 2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert "probability of finishing inside the window" in r.stdout
        assert "P50 end of the weekend" in r.stdout and "P90" in r.stdout
    assert runs[0].stdout.replace("out1", "out2") == runs[1].stdout  # the same seed, the same numbers
    assert (tmp_path / "out1" / "risk.svg").read_text().startswith("<svg")
    r = bigbang("schedule", inv, "--risk", "100", "--seed", "3", "--json", "--out", tmp_path / "out3")
    risk = json.loads(r.stdout)["risk"]
    assert risk["trials"] == 100 and 0 <= risk["p_fit"] <= 1 and len(risk["ends_min"]) == 100
    assert risk["p50_end_min"] <= risk["p90_end_min"]
    assert risk["p50_end"] in runs[0].stdout


def test_risk_counts_retries_and_late_locations(tmp_path):
    from bigbang.schedule.risk import simulate

    # one crew, 8 hours of window, 7h30 planned; a 50 % failure rate makes it late in most trials
    path = write_inventory(tmp_path / "inv", [{"id": f"L{i}", "ws": 30} for i in range(3)],
                           window=("2026-11-28T08:00", "2026-11-28T16:00"),
                           teams=[{"id": "t1", "name": "T1", "capacity": {"parallel_locations": 1,
                                                                           "parallel_devices": 2}}])
    text = (path / "inventory.yaml").read_text()
    (path / "inventory.yaml").write_text(text + "rehearsal:\n  failure_rate: 0.5\n  steps:\n"
                                         "    ws.image: {duration: 4m, jitter: 0.1}\n")
    inv = load_inventory(path)
    s = make_schedule(inv, time_limit=0)
    calm = simulate(s, inv, 50, seed=1)
    again = simulate(s, inv, 50, seed=1)
    assert calm.ends == again.ends and calm.p_fit == again.p_fit
    assert calm.retries_per_trial > 10
    assert calm.p50_min > s.makespan  # retries cost time the plan does not count
    assert calm.p_fit < 1 and calm.late_locations and calm.late_locations[0][0].startswith("L")
    assert simulate(s, inv, 50, seed=2).ends != calm.ends


# ---------------------------------------------------------------- a tighter bound

def test_energy_bound_counts_travel_without_the_solver(tmp_path):
    inv = load_inventory(write_inventory(
        tmp_path / "inv", [{"id": "A", "ws": 30}, {"id": "B", "ws": 20}],
        schedule={"travel": {"A": {"B": "25m"}}}))
    s = make_schedule(inv, time_limit=0)
    assert {b.name: b.minutes for b in s.bounds}["energy"] == 75 == s.makespan  # 50 of work + 25 of travel


def test_bounds_stay_below_the_schedule_with_travel_and_splits(tmp_path):
    import random

    rng = random.Random(5)
    locations = [{"id": f"L{i}", "ws": rng.randint(20, 300), "access_hours": SAT_SUN_MORNINGS if i % 2 else [],
                  "coordinates": [56 + rng.uniform(0, 0.3), 8.5 + rng.uniform(0, 0.3)]} for i in range(8)]
    teams = [{"id": "t1", "name": "T1", "capacity": {**FAST, "parallel_locations": 2}, "base": [56.1, 8.6]}]
    inv = load_inventory(write_inventory(tmp_path / "inv", locations, teams=teams,
                                         schedule={"split": {"min_visit": "30m"}}))
    s = make_schedule(inv, seed=1, time_limit=3)
    check_visits(s)
    assert not s.solution.unscheduled
    assert s.makespan >= s.lower_bound.minutes


# ---------------------------------------------------------------- re-solving with fixed work

def test_resolve_keeps_fixed_work_and_starts_the_rest_from_now(tmp_path):
    from bigbang.schedule.replan import FixedWork, resolve

    locations = [{"id": f"L{i}", "ws": 40 + 10 * i} for i in range(6)]
    teams = [{"id": "t1", "name": "T1", "capacity": {**FAST, "parallel_locations": 2}}]
    inv = load_inventory(write_inventory(tmp_path / "inv", locations, teams=teams))
    s = make_schedule(inv, seed=1, time_limit=0)
    p = s.problem
    # L5 done on crew t1#2 (it really started late), L0 under way on t1#1; re-solve at minute 100
    fixed = [FixedWork("L5", "t1#2", 5, 100), FixedWork("L0", "t1#1", 60)]
    now = 100
    sol = resolve(p, fixed, now, seed=1)
    for f in fixed:
        v = sol.visits[p.job_index[f.job]]
        assert (p.crews[v.crew].id, v.start) == (f.crew, f.start_min)
    assert sol.visits[p.job_index["L0"]].end == 60 + 40  # under way: its estimate, ending no earlier than now
    fixed_ids = {f.job for f in fixed}
    assert not sol.unscheduled
    for v in sol.visits:
        if p.jobs[v.job].id not in fixed_ids:
            assert v.start >= now
    for c, seq in enumerate(sol.sequences):  # no crew does two things at once
        spans = sorted((sol.visits[j].start, sol.visits[j].end) for j in seq)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (c, spans)
    with pytest.raises(Exception, match="unknown crew"):
        resolve(p, [FixedWork("L1", "nope", 0, 10)], now)


# ---------------------------------------------------------------- technicians as people

def test_skills_decide_which_crew_takes_a_location_and_a_missing_skill_is_named(tmp_path):
    teams = [{"id": "t1", "name": "T1", "capacity": {**FAST, "parallel_locations": 2},
              "technicians": [{"id": "a", "name": "Anna", "skills": ["network"]},
                              {"id": "b", "name": "Bo", "skills": []}]}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [{"id": f"L{i}", "ws": 60} for i in range(4)],
                                         teams=teams, schedule={"skills": {"L0": ["network"], "L1": ["network"]}}))
    s = make_schedule(inv, time_limit=1)
    check_constraints(s)
    p = s.problem
    assert [c.people for c in p.crews] == [("Anna",), ("Bo",)]
    for lid in ("L0", "L1"):
        assert p.crews[s.solution.visits[p.job_index[lid]].crew].people == ("Anna",)
    inv = load_inventory(write_inventory(tmp_path / "inv2", [{"id": "L0", "ws": 60}], teams=teams,
                                         schedule={"skills": {"L0": ["network", "electrician"]}}))
    s = make_schedule(inv, time_limit=1)
    assert not s.verdict.fits
    assert "electrician" in s.verdict.summary
    assert any("give 1 skill (electrician) to Anna" in r for r in s.verdict.remedies)


def test_rest_between_shifts_and_maximum_working_time_cut_the_shifts(tmp_path):
    shifts = [{"days": ["fri"], "from": "17:00", "to": "24:00"}, {"days": ["sat"], "from": "07:00", "to": "23:00"}]
    teams = [{"id": "t1", "name": "T1", "capacity": FAST,
              "technicians": [{"id": "a", "name": "Anna", "shifts": shifts, "max_hours": "10h"}]}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [{"id": "L0", "ws": 60}], teams=teams))
    s = make_schedule(inv, time_limit=1)
    p = s.problem
    local = [(p.local(a).strftime("%a %H:%M"), p.local(b).strftime("%a %H:%M")) for a, b in p.crews[0].availability
             if a < p.window]
    assert local == [("Fri 17:00", "Sat 00:00"), ("Sat 11:00", "Sat 21:00")]  # 11 h rest, then 10 h at most
    notes = " | ".join(p.people_notes)
    assert "Anna" in notes and "11h00 rest" in notes and "max_hours 10h00" in notes
    assert any("Anna" in d for d in s.verdict.details)


def test_a_technicians_home_base_sets_the_first_travel(tmp_path):
    teams = [{"id": "t1", "name": "T1", "capacity": FAST, "base": [56.5, 8.6],
              "technicians": [{"id": "a", "name": "Anna", "base": [56.0, 8.6]}]}]
    inv = load_inventory(write_inventory(tmp_path / "inv", [{"id": "L0", "ws": 60, "coordinates": [56.1, 8.6]}],
                                         teams=teams, schedule={"travel_default": "15m"}))
    p = make_schedule(inv, time_limit=0).problem
    assert p.base_travel[0][0] == 22  # from Anna's home (11.1 km away), not from the team's base
