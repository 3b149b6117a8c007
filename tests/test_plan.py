"""The plan is a pure, deterministic function of the inventory; the demo's plan is pinned by a golden file."""

from __future__ import annotations

import json
import os

from bigbang.inventory import load_inventory
from bigbang.plan import build_plan
from tests.helpers import DEMO, ROOT

GOLDEN = ROOT / "tests" / "golden" / "demo-plan.json"


def comparable(plan_dict: dict) -> dict:
    plan_dict = dict(plan_dict)
    plan_dict.pop("inventory_digest")  # bytes of the files, not the plan
    return plan_dict


def test_demo_plan_matches_golden_file():
    plan = build_plan(load_inventory(DEMO), "rehearsal")
    current = comparable(json.loads(plan.to_json()))
    if os.environ.get("BIGBANG_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(GOLDEN.read_text()), "plan changed; rerun with BIGBANG_UPDATE_GOLDEN=1 if intended"


def test_plan_is_deterministic_and_ordered_by_dependencies():
    inv = load_inventory(DEMO)
    a, b = build_plan(inv), build_plan(load_inventory(DEMO))
    assert a.to_json() == b.to_json() and a.digest == b.digest
    wave_of = {s.name: s.wave for s in a.servers}
    for srv in a.servers:
        assert all(wave_of[d] < srv.wave for d in srv.depends_on)
    for loc in a.locations:
        needed = {wave_of[r] for r in loc.requires}
        assert set(loc.waits_for_waves) == needed
        ids = [s.id for s in loc.steps()]
        assert ids[0] == f"{loc.id}:loc.precheck" and ids[-2:] == [f"{loc.id}:loc.signoff", f"{loc.id}:loc.verify"]
    # team-syd works one location at a time: the second waits for the first
    syd = [loc for loc in a.locations if loc.team == "team-syd"]
    assert syd[0].after_location is None and syd[1].after_location == syd[0].id


def test_live_plan_names_real_connectors():
    plan = build_plan(load_inventory(DEMO), "live")
    kinds = {(s.kind, s.connector) for s in plan.steps()}
    assert ("srv.provision", "vsphere") in kinds and ("ws.image", "winrm") in kinds and ("tc.reassign", "ssh") in kinds
    assert ("loc.verify", "bigbang") in kinds


def test_slots_reassign_teams_and_order():
    inv = load_inventory(DEMO)
    plan = build_plan(inv, slots={"HST-027": ("team-nord", 3600.0), "HST-001": ("team-nord", 0.0),
                                  "HST-014": ("team-syd", 0.0)})
    nord = [loc for loc in plan.locations if loc.team == "team-nord"]
    assert [loc.id for loc in nord] == ["HST-001", "HST-027"]
    assert nord[1].after_location == "HST-001" and nord[1].start_offset == 3600.0


def test_plan_cli_tables_and_json(bigbang):
    out = bigbang("plan", DEMO, check=True)
    for text in ("Phases", "Servers, in dependency waves", "srv-ctxsf01", "HST-014 devices", "lys-tc-206",
                 "tc.reassign → tc.verify", "wave 4"):
        assert text in out.stdout, text
    js = bigbang("plan", DEMO, "--json", check=True)
    data = json.loads(js.stdout)
    assert [p["name"] for p in data["phases"]] == ["prechecks", "servers", "locations", "verify"]
    assert sum(p["steps"] for p in data["phases"]) == 104
