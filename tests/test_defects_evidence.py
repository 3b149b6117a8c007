"""Auto-resolution only on evidence: a rehearsal with a blocked location and a failing server.

Nothing of a never-started, blocked or failed device is resolved by the collection; after a resume
that fixes them (the injected failures removed, failed steps retried) the next collection resolves them.
Once in this process (the core, without Prefect), once through the real CLI (`bigbang run`, `bigbang
defects collect`, `bigbang run --resume`: separate processes on one ledger, Prefect's ephemeral server).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from bigbang.defects.collect import collect
from bigbang.defects.triage import Observation
from bigbang.inventory import load_inventory
from bigbang.session import RunSession
from bigbang.store.defects import DefectQueue
from tests.helpers import finish
from tests.test_defects_helpers import PXE, demo_inventory, rehearse

DOWN = "guest customisation timed out"


def blocked_inventory(tmp):
    inv = demo_inventory(tmp)
    path = inv / "rollout.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # srv-ctxsf01 never comes up: HST-001 and HST-014 need it and are blocked; HST-027 runs, one PXE failure.
    data["rehearsal"]["inject"] = [{"target": "srv-ctxsf01", "step": "srv.provision", "message": DOWN},
                                   {"target": "nor-ws-101", "step": "ws.image", "message": PXE}]
    data["rollout"]["failure_policy"]["halt_rollout"]["failed_locations_percent"] = 100  # HST-027 carries on
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return inv, path, data


def test_blocked_location_and_failed_server_stay_open_until_a_resume_fixes_them(tmp_path):
    inv, path, data = blocked_inventory(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = rehearse(inv, url)
    run_id = session.run_id
    steps = session.ledger.step_results(run_id)
    assert steps["srv-ctxsf01:srv.provision"].status == "failed"
    assert steps["hst-ws-103:ws.image"].status == "skipped"  # never started: its location was blocked
    assert steps["nor-ws-102:ws.verify"].status == "succeeded"
    blocked = {d.hostname for loc in session.inventory.locations if loc.id in ("HST-001", "HST-014")
               for d in loc.devices}

    first = collect(session=session)
    queue = DefectQueue(session.ledger.engine)
    assert first.errors == [] and first.probed > 0
    rows = {d["target"]: d for d in queue.list(run_id=run_id, state="all", limit=None)}
    assert {"srv-ctxsf01", "nor-ws-101"} | blocked <= set(rows)
    assert "nor-ws-102" not in rows  # a device that worked is no defect
    assert first.filed["resolved"] == 0
    assert [d["target"] for d in rows.values() if d["state"] == "resolved"] == []
    # The probe read the simulated state: the blocked devices and the server are not in their target state.
    probe = queue.observations(target="hst-ws-103", source="probe")
    assert probe and probe[0]["failing"] == 1 and "never succeeded" in probe[0]["message"]
    assert queue.observations(target="srv-ctxsf01", source="probe")[0]["failing"] == 1
    again = collect(session=session)
    assert again.filed["resolved"] == 0
    session.close()

    # The fix: the failures are gone (the server was repaired, the PXE switch port enabled); resume.
    data["rehearsal"]["inject"] = []
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    resumed = RunSession.resume(run_id, ledger_url=url, retry_failed=True, accept_inventory_changes=True)
    try:
        finish(resumed)
        resumed.ledger.set_run_status(run_id, "completed")
        assert resumed.ledger.step_results(run_id)["hst-ws-103:ws.verify"].status == "succeeded"
        third = collect(session=resumed)
        assert third.errors == []
        rows = {d["target"]: d for d in queue.list(run_id=run_id, state="all", limit=None)}
        still = sorted(t for t, d in rows.items() if d["state"] != "resolved")
        assert still == [], still
        assert third.filed["resolved"] == len(rows)
        note = [h["text"] for h in queue.history(rows["srv-ctxsf01"]["key"]) if h["action"] == "resolved"][0]
        assert note.startswith("probe srv.verify passed") and "succeeded since" in note

        # A resolved defect whose device fails again reopens under the same key.
        key = rows["nor-ws-101"]["key"]
        later = Observation("probe:manual:nor-ws-101", "probe", "nor-ws-101", "ws.verify", "device not joined",
                            observed_at=queue.get(key)["resolved_at"] + 60, location_id="HST-027")
        assert queue.apply([later], resumed.inventory, run_id=run_id).reopened == 1
        assert queue.get(key)["state"] == "new" and queue.get(key)["reopened"] == 1
    finally:
        resumed.close()


def test_a_passing_probe_after_a_recorded_fix_resolves(tmp_path):
    """Live-like: the technician fixed a device by hand and says so; the next passing probe resolves it."""
    session = rehearse(demo_inventory(tmp_path), f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        collect(session=session, with_probe=False)
        queue = DefectQueue(session.ledger.engine)
        d = [x for x in queue.list(run_id=session.run_id, limit=None) if x["target"] == "hst-tc-203"][0]
        ok = Observation("probe:manual:1", "probe", "hst-tc-203", "tc.verify", "profile=new",
                         observed_at=d["last_seen"] + 10, failing=False, location_id="HST-001")
        assert queue.apply([ok], session.inventory, run_id=session.run_id).resolved == 0  # no evidence yet
        queue.mark_fixed(d["key"], "flash module replaced, firmware flashed by hand", "sune")
        import time
        ok2 = Observation("probe:manual:2", "probe", "hst-tc-203", "tc.verify", "profile=new",
                          observed_at=time.time() + 1, failing=False, location_id="HST-001")
        assert queue.apply([ok2], session.inventory, run_id=session.run_id).resolved == 1
        assert "verified after the recorded fix" in queue.history(d["key"])[-1]["text"]
    finally:
        session.close()


def _queue(bigbang, run_id: str, ledger: str) -> dict[str, dict]:
    listed = bigbang("defects", "list", "--run", run_id, "--status", "all", "--limit", "1000", "--json",
                     "--ledger", ledger, check=True)
    return {d["target"]: d for d in json.loads(listed.stdout)}


@pytest.mark.engine
def test_the_evidence_rule_through_the_command_line(bigbang, tmp_path):
    """The same story as above, as support staff live it: `bigbang run`, `bigbang defects collect`, a resume
    that fixes the failures, and another collection, each its own process on one ledger."""
    inv, path, data = blocked_inventory(tmp_path)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    run_id = "run-evidence-cli"
    inventory = load_inventory(inv)
    blocked = {d.hostname for loc in inventory.locations if loc.id in ("HST-001", "HST-014") for d in loc.devices}

    rehearsal = bigbang("run", inv, "--mode", "rehearsal", "--zero-duration", "--quiet", "--ledger", ledger,
                        "--run-id", run_id)
    assert rehearsal.returncode == 1, rehearsal.stdout + rehearsal.stderr  # a failed server, blocked locations
    collected = bigbang("defects", "collect", "--run", run_id, "--ledger", ledger, check=True)
    assert re.search(r"\b0 resolved\b", collected.stdout), collected.stdout
    rows = _queue(bigbang, run_id, ledger)
    assert {"srv-ctxsf01", "nor-ws-101"} | blocked <= set(rows)  # never started, blocked, failed: all defects
    assert "nor-ws-102" not in rows  # a device that worked is no defect
    assert [t for t, d in rows.items() if d["state"] == "resolved"] == []

    data["rehearsal"]["inject"] = []  # the server repaired, the PXE switch port enabled
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    resumed = bigbang("run", "--resume", run_id, "--retry-failed", "--accept-inventory-changes", "--quiet",
                      "--ledger", ledger)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    fixed = bigbang("defects", "collect", "--run", run_id, "--ledger", ledger, check=True)
    assert re.search(rf"\b{len(rows)} resolved\b", fixed.stdout), fixed.stdout
    queue = DefectQueue.open(ledger)
    after = {d["target"]: d for d in queue.list(run_id=run_id, state="all", limit=None)}
    assert set(after) == set(rows)  # the same defects, none new
    assert sorted(t for t, d in after.items() if d["state"] != "resolved") == []
    note = [h["text"] for h in queue.history(after["srv-ctxsf01"]["key"]) if h["action"] == "resolved"][0]
    assert note.startswith("probe srv.verify passed") and "succeeded since" in note
