"""What each location's task run waits for in the weekend flow (flows/weekend.py: location_upstream): only
the upstream futures not implied by another, and never fewer than its servers and crew need."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bigbang.inventory import load_inventory
from bigbang.inventory.generate import PRESETS, generate, write
from bigbang.plan import build_plan
from flows.weekend import location_upstream

DEMO = Path(__file__).resolve().parent.parent / "inventories" / "demo"


def _finished_before_start(plan, upstream) -> dict[str, set[int]]:
    """The waves known finished when each location starts, following only the futures it waits for (a wave
    waits for the one before it; a location finished means what it waited for finished)."""
    known: dict[str, set[int]] = {}
    by_id = {loc.id: loc for loc in plan.locations}

    def done_when_finished(loc_id: str) -> set[int]:
        if loc_id not in known:
            wave, after = upstream[loc_id]
            waves = set(range(wave + 1)) if wave is not None else set()
            if after:
                waves |= done_when_finished(after)
            known[loc_id] = waves
        return known[loc_id]

    return {loc_id: done_when_finished(loc_id) for loc_id in by_id}


def _loc(loc_id: str, waves: tuple[int, ...], after: str | None = None):
    return SimpleNamespace(id=loc_id, waits_for_waves=waves, after_location=after)


def test_a_crew_location_after_one_with_the_same_waves_waits_for_that_one_alone():
    plan = SimpleNamespace(locations=[_loc("A", (0, 3)), _loc("B", (3,), "A"), _loc("C", (1,), "B"), _loc("D", ())])
    assert location_upstream(plan) == {"A": (3, None), "B": (None, "A"), "C": (None, "B"), "D": (None, None)}


def test_a_location_needing_a_later_wave_than_its_predecessor_waits_for_both():
    plan = SimpleNamespace(locations=[_loc("A", (1,)), _loc("B", (0, 2), "A"), _loc("C", (), "B")])
    assert location_upstream(plan) == {"A": (1, None), "B": (2, "A"), "C": (None, "B")}


def test_every_location_still_waits_for_all_its_waves_and_its_crew(tmp_path):
    write(generate(PRESETS["holstebro"], seed=3), tmp_path / "holstebro")
    for inventory in (DEMO, tmp_path / "holstebro"):
        plan = build_plan(load_inventory(inventory))
        upstream = location_upstream(plan)
        finished = _finished_before_start(plan, upstream)
        for loc in plan.locations:
            assert set(loc.waits_for_waves) <= finished[loc.id], (inventory.name, loc.id)
            assert upstream[loc.id][1] == loc.after_location, (inventory.name, loc.id)
        if inventory != DEMO:
            futures = sum((wave is not None) + (after is not None) for wave, after in upstream.values())
            listed = sum(len(loc.waits_for_waves) + bool(loc.after_location) for loc in plan.locations)
            assert futures <= len(plan.locations) < listed, (futures, listed)
