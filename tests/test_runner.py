"""The runner without the Prefect engine: retries, thresholds, blocked locations, halts, resume."""

from __future__ import annotations

import pytest
import yaml

from bigbang.errors import LiveModeUnavailable, RunError
from bigbang.store.ledger import Ledger
from bigbang.session import RunOptions, RunSession
from tests.helpers import copy_demo, finish, rehearse, servers_ready


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def inject(*entries):
    def edit(files):
        files["rollout.yaml"]["rehearsal"]["inject"] = list(entries)
        files["rollout.yaml"]["rehearsal"]["failure_rate"] = 0.0
    return edit


def statuses(ledger: Ledger, run_id: str) -> dict[str, str]:
    return {sid: r.status for sid, r in ledger.step_results(run_id).items()}


def test_clean_rehearsal_succeeds_every_step_once(tmp_path, ledger_url):
    inv = copy_demo(tmp_path, inject())
    session = rehearse(inv, ledger_url)
    steps = statuses(session.ledger, session.run_id)
    assert len(steps) == session.plan.step_count == 104
    assert set(steps.values()) == {"succeeded"}
    # simulated devices changed once each: prestage, image, reassign, snapshot, provision
    changing = [s for s in session.plan.steps() if s.kind in
                ("ws.prestage", "ws.image", "tc.reassign", "srv.snapshot", "srv.provision")]
    assert session.ledger.sim_effect_counts(session.run_id) == len(changing)
    results = session.ledger.location_results(session.run_id)
    assert {r["status"] for r in results.values()} == {"succeeded"}


def test_retries_absorb_transient_failures(tmp_path, ledger_url):
    inv = copy_demo(tmp_path, inject({"target": "hst-ws-102", "step": "ws.image", "attempts": 2,
                                      "message": "PXE timeout"}))
    session = rehearse(inv, ledger_url)
    rec = session.ledger.step_results(session.run_id)["hst-ws-102:ws.image"]
    assert (rec.status, rec.attempts) == ("succeeded", 3)


def test_threshold_halts_one_location_while_the_others_finish(tmp_path, ledger_url):
    # HST-027 has 11 devices and halts above 30 %: four permanent failures cross it
    failing = ["nor-ws-101", "nor-ws-102", "nor-ws-103", "nor-ws-104"]
    inv = copy_demo(tmp_path, inject(*({"target": h, "step": "ws.image", "message": "disk failure"}
                                       for h in failing)))
    session = rehearse(inv, ledger_url)
    locs = session.ledger.location_results(session.run_id)
    assert locs["HST-027"]["status"] == "halted"
    assert "devices failed" in locs["HST-027"]["reason"]
    assert locs["HST-001"]["status"] == "succeeded" and locs["HST-014"]["status"] == "succeeded"
    steps = session.ledger.step_results(session.run_id)
    assert all(steps[f"{h}:ws.image"].status == "failed" for h in failing)
    assert all(steps[f"{h}:ws.image"].attempts == 3 for h in failing)  # retries 2
    assert all(steps[f"{h}:ws.verify"].status == "skipped" for h in failing)
    skipped = [r for r in steps.values() if r.scope == "HST-027" and r.message.startswith("location halted")]
    assert skipped, "devices not yet started when the threshold was crossed are skipped"
    assert steps["HST-027:loc.verify"].status == "failed"


def test_a_failed_server_blocks_only_the_locations_that_need_it(tmp_path, ledger_url):
    def edit(files):
        inject({"target": "srv-ctxsf01", "step": "srv.provision", "message": "no space"})(files)
        files["rollout.yaml"]["rollout"]["failure_policy"]["halt_rollout"] = {}
    session = rehearse(copy_demo(tmp_path, edit), ledger_url)
    locs = session.ledger.location_results(session.run_id)
    # HST-001 and HST-014 need the StoreFront; HST-027 does not
    assert locs["HST-001"]["status"] == "blocked" and locs["HST-014"]["status"] == "blocked"
    assert "srv-ctxsf01" in locs["HST-001"]["reason"]
    assert locs["HST-027"]["status"] == "succeeded"
    steps = session.ledger.step_results(session.run_id)
    assert steps["srv-ctxsf01:srv.verify"].status == "skipped"
    assert steps["hst-ws-101:ws.image"].status == "skipped"


def test_rollout_halts_when_more_than_its_share_of_locations_fail(tmp_path, ledger_url):
    # the demo halts the rollout above 50 % of locations halted or blocked: 2 of 3 blocked
    inv = copy_demo(tmp_path, inject({"target": "srv-ctxsf01", "step": "srv.provision"}))
    session = rehearse(inv, ledger_url)
    assert session.ledger.halted_reason(session.run_id) == "2 of 3 locations halted or blocked (67% > 50%)"
    assert session.ledger.location_results(session.run_id)["HST-027"]["status"] == "skipped"


def test_rollout_halts_on_a_server_failure_when_the_policy_says_so(tmp_path, ledger_url):
    def edit(files):
        inject({"target": "srv-ctxsf01", "step": "srv.provision"})(files)
        files["rollout.yaml"]["rollout"]["failure_policy"]["halt_rollout"] = {"on_server_failure": True}
    session = rehearse(copy_demo(tmp_path, edit), ledger_url)
    assert "srv-ctxsf01" in session.ledger.halted_reason(session.run_id)
    locs = session.ledger.location_results(session.run_id)
    assert locs["HST-027"]["status"] == "skipped" and "rollout halted" in locs["HST-027"]["reason"]


def test_resume_redoes_nothing_finished_and_retries_failed_only_when_asked(tmp_path, ledger_url):
    inv = copy_demo(tmp_path, inject({"target": "lys-tc-203", "step": "tc.reassign", "message": "flash full"}))
    session = RunSession.start(inv, RunOptions(zero_duration=True), ledger_url=ledger_url)
    runner = servers_ready(session)
    runner.run_location("HST-001")
    session.ledger.flush()
    before = session.ledger.step_results(session.run_id)
    session.close()

    resumed = RunSession.resume(session.run_id, ledger_url=ledger_url)
    finish(resumed)
    after = resumed.ledger.step_results(session.run_id)
    for sid, rec in before.items():  # finished steps untouched: same finish time, same attempts
        assert (after[sid].finished_at, after[sid].attempts) == (rec.finished_at, rec.attempts)
    assert after["lys-tc-203:tc.reassign"].status == "failed"
    assert len(after) == resumed.plan.step_count

    # the failure is fixed: retry only what failed
    def fixed(files):
        files["rollout.yaml"]["rehearsal"]["inject"] = []
    inv2 = copy_demo(tmp_path / "fixed", fixed)
    with pytest.raises(RunError, match="has changed since run .* started"):
        RunSession.resume(session.run_id, inventory_path=_edited(inv2), ledger_url=ledger_url)
    with pytest.raises(RunError, match="settings changed: .*rehearsal.inject"):  # the world was fixed: say so
        RunSession.resume(session.run_id, inventory_path=inv2, ledger_url=ledger_url, retry_failed=True)
    again = RunSession.resume(session.run_id, inventory_path=inv2, ledger_url=ledger_url, retry_failed=True,
                              accept_inventory_changes=True)
    finish(again)
    final = again.ledger.step_results(session.run_id)
    assert final["lys-tc-203:tc.reassign"].status == "succeeded"
    assert final["hst-ws-101:ws.image"].finished_at == before["hst-ws-101:ws.image"].finished_at


def _edited(inventory):
    """The same inventory with one more device: a different plan."""
    import shutil

    target = inventory.parent / "edited"
    shutil.copytree(inventory, target)
    path = target / "locations" / "hst-027-skole.yaml"
    data = yaml.safe_load(path.read_text())
    data["locations"][0]["workstations"].append({"hostname": "nor-ws-199", "serial": "X199",
                                                 "mac": "00:1a:2b:31:27:99"})
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return target


def test_live_mode_refuses_clearly_without_connector_settings(tmp_path, ledger_url):
    def edit(files):
        files["rollout.yaml"].pop("connectors")
    inv = copy_demo(tmp_path, edit)
    with pytest.raises(LiveModeUnavailable, match="live mode needs settings for the 'ssh' connector"):
        RunSession.start(inv, RunOptions(mode="live"), ledger_url=ledger_url)


def test_run_cli_refuses_unknown_resume_in_one_line(bigbang):
    out = bigbang("run", "--resume", "run-nope")
    assert out.returncode == 2  # a usage error (README, "Exit codes")
    assert out.stderr.strip().startswith("error: no run run-nope in the ledger")
    assert "Traceback" not in out.stderr
