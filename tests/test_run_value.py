"""The run as one persisted value: a frozen plan, one store, one clock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bigbang.errors import RunError
from bigbang.report import report_data
from bigbang.session import RunOptions, RunSession, frozen_run
from bigbang.status import StepStatus
from tests.helpers import ROOT, copy_demo, finish, rehearse


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bigbang", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _timeline(report: dict) -> list[tuple]:
    """Everything about each step that must not depend on the machine: ids, statuses, attempts, times."""
    return [(s["id"], s["status"], s["attempts"], s["start"], s["end"], s["message"]) for s in report["timeline"]]


def _rehearse(env: dict[str, str], inventory: Path, compression: str) -> dict:
    done = _cli(["run", str(inventory), "--quiet", "--seed", "11", "--failure-rate", "0.12",
                 "--compression", compression], env)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    run_id = json.loads(_cli(["runs", "--json"], env).stdout)[0]["run_id"]
    shown = _cli(["report", run_id, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _busy(seconds: float) -> list[subprocess.Popen]:
    """Both cores kept busy by CPU-bound processes that stop by themselves."""
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2)]


@pytest.mark.engine
def test_same_inputs_give_the_same_timeline_whatever_the_load_and_compression(tmp_path, bb_env):
    def halting(files):  # a location halts on its threshold, so halts too must come out the same
        files["rollout.yaml"]["rollout"]["failure_policy"]["max_fail_percent"] = 10
    inventory = copy_demo(tmp_path, halting)
    quiet = _rehearse(bb_env, inventory, "max")
    burners = _busy(240)
    try:
        busy = _rehearse(bb_env, inventory, "20000")
    finally:
        for p in burners:
            p.kill()
    assert quiet["run"]["plan_digest"] == busy["run"]["plan_digest"]
    assert _timeline(quiet) == _timeline(busy)
    assert [(loc["id"], loc["status"], loc["clock_start"], loc["clock_end"]) for loc in quiet["locations"]] == \
           [(loc["id"], loc["status"], loc["clock_start"], loc["clock_end"]) for loc in busy["locations"]]
    statuses = {s["status"] for s in quiet["timeline"]}
    assert {"succeeded", "failed"} <= statuses  # the seed and rate really made failures to compare
    assert quiet["run"]["timeline_seconds"] > 3600  # hours of simulated weekend, not wall seconds
    assert all(s["start"] is not None and s["end"] >= s["start"] for s in quiet["timeline"]
               if s["status"] != "pending")


def test_report_json_has_every_step_with_times_status_attempts_and_the_plan_digest(tmp_path, ledger_url):
    session = rehearse(copy_demo(tmp_path), ledger_url, zero_duration=False, compression=0)
    data = report_data(session.ledger, session.run_id)
    assert data["run"]["plan_digest"] == session.plan.digest
    assert data["run"]["clock"] == "simulated"
    ids = [s["id"] for s in data["timeline"]]
    assert ids == [s.id for s in session.plan.steps()]
    image = next(s for s in data["timeline"] if s["kind"] == "ws.image")
    assert image["status"] == StepStatus.SUCCEEDED and image["attempts"] >= 1
    # the simulated duration of a re-image (45 min +- jitter), on the simulated clock
    assert 0.7 * 2700 <= image["end"] - image["start"] <= 1.3 * 2700 * (session.plan.retries + 1)


def test_editing_the_inventory_after_start_changes_nothing_the_run_shows(tmp_path, ledger_url):
    inventory = copy_demo(tmp_path)
    session = RunSession.start(inventory, RunOptions(zero_duration=True), ledger_url=ledger_url)
    run_id, steps_before, digest = session.run_id, session.plan.step_count, session.plan.digest
    session.close()

    # an ops lead edits the weekend: one more workstation, and a retry policy change
    loc_file = next(p for p in inventory.rglob("*.yaml") if "HST-001" in p.read_text())
    data = yaml.safe_load(loc_file.read_text())
    loc = next(item for item in _locations(data) if item["id"] == "HST-001")
    extra = dict(loc["workstations"][0], hostname="hst-ws-999", mac="00:16:3e:99:99:99", serial="EXTRA999")
    extra.pop("address", None)
    loc["workstations"].append(extra)
    loc_file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    rollout = inventory / "rollout.yaml"
    r = yaml.safe_load(rollout.read_text())
    r["rollout"]["failure_policy"]["retries"] = 5
    rollout.write_text(yaml.safe_dump(r, sort_keys=False, allow_unicode=True))

    # a worker, the report and the board read the frozen plan
    from bigbang.session import _SESSIONS
    _SESSIONS.clear()
    attached = RunSession.attach(run_id, ledger_url)
    assert (attached.plan.step_count, attached.plan.digest) == (steps_before, digest)
    from bigbang.store import Ledger
    ledger = Ledger(ledger_url)
    assert len(report_data(ledger, run_id)["timeline"]) == steps_before
    from bigbang.web.app import FieldApp
    board = FieldApp(inventory, ledger_url, run_id, "en", None)
    assert "hst-ws-999" not in {d.hostname for loc in board.plan.locations for d in loc.devices}

    # a resume names the changes and refuses
    _SESSIONS.clear()
    with pytest.raises(RunError) as refused:
        RunSession.resume(run_id, ledger_url=ledger_url)
    text = str(refused.value)
    assert "hst-ws-999:ws.image" in text and "policy retries: 2 -> 5" in text
    assert "--accept-inventory-changes" in text
    assert frozen_run(ledger, run_id).plan_version == 1

    # accepted: a new plan version, which the run then follows
    accepted = RunSession.resume(run_id, ledger_url=ledger_url, accept_inventory_changes=True)
    assert accepted.plan_version == 2 and accepted.plan.step_count == steps_before + 3
    finish(accepted)
    assert ledger.step_results(run_id)["hst-ws-999:ws.image"].status == StepStatus.SUCCEEDED
    assert [e["kind"] for e in ledger.events(run_id)].count("run.plan_changed") == 1


def _locations(data):
    return data["locations"] if isinstance(data, dict) and "locations" in data else data


def test_a_resumed_rehearsal_keeps_the_timeline_of_what_was_done(tmp_path, ledger_url):
    inventory = copy_demo(tmp_path)
    whole = rehearse(inventory, ledger_url, zero_duration=False, compression=0, seed=4)
    full = {s["id"]: (s["start"], s["end"]) for s in report_data(whole.ledger, whole.run_id)["timeline"]}

    session = RunSession.start(inventory, RunOptions(compression=0, seed=4), ledger_url=ledger_url)
    from tests.helpers import servers_ready
    runner = servers_ready(session)
    runner.run_location(session.plan.locations[0].id)
    session.ledger.flush()
    session.close()
    resumed = RunSession.resume(session.run_id, ledger_url=ledger_url)
    finish(resumed)
    again = {s["id"]: (s["start"], s["end"]) for s in report_data(resumed.ledger, resumed.run_id)["timeline"]}
    assert again == full


def test_the_clock_plays_a_location_at_the_pace_asked(tmp_path, ledger_url):
    """Compression only paces playback: 3 devices of 100 simulated seconds at 1,000x take about 0.1 s."""
    from bigbang.clock import Pace, SimulatedClock

    clock = SimulatedClock(0.0, Pace(1000.0, time.time()))
    t0 = time.monotonic()
    ends = clock.parallel([100.0, 100.0, 100.0], lambda d: (clock.sleep(d), clock.now())[1], 3, "t")
    elapsed = time.monotonic() - t0
    assert ends == [100.0, 100.0, 100.0]
    assert 0.09 <= elapsed < 2.0
    lanes = SimulatedClock(0.0, Pace(None, time.time()))
    ends = lanes.parallel([30.0, 10.0, 10.0, 10.0], lambda d: (lanes.sleep(d), lanes.now())[1], 2, "t")
    assert ends == [30.0, 10.0, 20.0, 30.0]  # two crews: the short jobs queue behind each other


def test_the_frozen_plan_is_stored_as_the_text_its_digest_is_taken_of_and_reads_back_whole(tmp_path, ledger_url):
    import hashlib
    import sqlite3

    inventory = copy_demo(tmp_path)
    session = RunSession.start(inventory, RunOptions(zero_duration=True), ledger_url=ledger_url)
    run_id, plan = session.run_id, session.plan
    session.close()
    db = sqlite3.connect(ledger_url.removeprefix("sqlite:///"))
    text, digest, inventory_digest = db.execute(
        "SELECT plan, plan_digest, inventory_digest FROM run_plans WHERE run_id = ?", (run_id,)).fetchone()
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest == plan.digest
    assert "inventory_digest" not in json.loads(text) and inventory_digest == plan.inventory_digest
    from bigbang.session import _SESSIONS
    from bigbang.store import Ledger

    _SESSIONS.clear()
    frozen = Ledger(ledger_url).frozen_plan(run_id)
    assert frozen is not None and frozen.plan == plan.to_dict()  # the column's digest put back
    # a plan frozen by an earlier version, its inventory digest inside the text, reads back the same
    with db:
        db.execute("UPDATE run_plans SET plan = ? WHERE run_id = ?",
                   (json.dumps(plan.to_dict(), sort_keys=True), run_id))
    db.close()
    again = Ledger(ledger_url).frozen_plan(run_id)
    assert again is not None and again.plan == plan.to_dict()
    assert frozen_run(Ledger(ledger_url), run_id).plan.digest == digest
