"""The weekend flow on Prefect's ephemeral engine, through the real CLI: rehearsal, failures, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigbang.store.ledger import Ledger
from tests.helpers import DEMO, copy_demo

pytestmark = pytest.mark.engine

NOISE = ("Traceback", "Error flushing", "ERROR", "database is locked")
CHANGING = ("ws.prestage", "ws.image", "tc.reassign", "srv.snapshot", "srv.provision")


def test_demo_rehearsal_end_to_end_with_report_and_artifacts(bigbang, bb_env, tmp_path):
    out = bigbang("run", DEMO, "--compression", "20000")
    assert out.returncode == 1, out.stderr  # the demo injects one thin client failure: a run with a failure exits 1
    last = out.stdout.strip().splitlines()
    assert "Devices failed (1): hst-tc-203" in out.stdout and last[-1].startswith("To retry what failed: bigbang run")
    for noise in NOISE:
        assert noise not in out.stderr and noise not in out.stdout, noise
    assert "completed" in out.stdout and "29 devices done, 1 failed" in out.stdout
    run_id = out.stdout.split("Run ", 1)[1].split()[0]
    report = Path(bb_env["BIGBANG_REPORTS"]) / run_id
    md = (report / "summary.md").read_text()
    html = (report / "summary.html").read_text()
    assert "firmware update failed: not enough flash space" in md and "hst-tc-203" in html
    assert f"bigbang run --resume {run_id} --retry-failed" in md
    data = json.loads((report / "summary.json").read_text())
    assert data["devices"] == {"succeeded": 29, "failed": 1}
    assert {loc["id"]: loc["status"] for loc in data["locations"]} == {
        "HST-001": "completed_with_failures", "HST-014": "succeeded", "HST-027": "succeeded"}

    # the same summary is attached to the flow run as Prefect artifacts
    key = "bigbang-" + run_id.replace("_", "-")
    probe = ("import asyncio\nfrom prefect.client.orchestration import get_client\n"
             "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey\n"
             "async def main():\n    async with get_client() as c:\n"
             f"        arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=['{key}'])))\n"
             "        print(arts[0].data)\n"
             "asyncio.run(main())\n")
    art = subprocess.run([sys.executable, "-c", probe], env=bb_env, capture_output=True, text=True, timeout=300)
    assert art.returncode == 0, art.stderr
    assert "hst-tc-203" in art.stdout and run_id in art.stdout

    again = bigbang("report", run_id, check=True)
    assert "summary.html" in again.stdout


def test_threshold_halts_one_location_others_finish_through_the_flow(bigbang, tmp_path):
    def edit(files):
        files["rollout.yaml"]["rehearsal"]["inject"] = [
            {"target": h, "step": "ws.image", "message": "disk failure"}
            for h in ("nor-ws-101", "nor-ws-102", "nor-ws-103", "nor-ws-104")]
    inventory = copy_demo(tmp_path, edit)
    out = bigbang("run", inventory, "--zero-duration", "--seed", "1", "--failure-rate", "0")
    assert out.returncode == 1, out.stderr  # a halted location: the run exits 1 and says so
    table = out.stdout
    assert "HST-027" in table and "halted" in table
    run_id = out.stdout.split("Run ", 1)[1].split()[0]
    ledger = Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}")
    locs = ledger.location_results(run_id)
    assert locs["HST-027"]["status"] == "halted"
    assert locs["HST-001"]["status"] == "succeeded" and locs["HST-014"]["status"] == "succeeded"


def test_killed_run_resumes_without_redoing_or_losing_anything(bb_env, tmp_path):
    ledger_path = tmp_path / "state" / "ledger.db"
    cmd = [sys.executable, "-m", "bigbang", "run", str(DEMO), "--compression", "1500", "--quiet"]
    proc = subprocess.Popen(cmd, env=bb_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    run_id = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        if not ledger_path.exists():
            continue
        ledger = Ledger(f"sqlite:///{ledger_path}")
        runs = ledger.list_runs()
        if runs:
            run_id = runs[0]["run_id"]
            done = [r for r in ledger.step_results(run_id).values()
                    if r.status == "succeeded" and r.scope != "servers"]
            if len(done) >= 25:
                break
        ledger.engine.dispose()
    assert run_id, "the run never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    ledger = Ledger(f"sqlite:///{ledger_path}")
    before = {sid: r for sid, r in ledger.step_results(run_id).items() if r.status == "succeeded"}
    total = 104
    assert 25 <= len([r for r in before.values() if r.scope != "servers"]) and len(before) < total

    resumed = subprocess.run([sys.executable, "-m", "bigbang", "run", "--resume", run_id, "--compression", "20000",
                              "--quiet"], env=bb_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr  # hst-tc-203's injected failure is kept: exit 1
    assert "Traceback" not in resumed.stderr
    after = ledger.step_results(run_id)
    assert len(after) == total
    not_done = {sid: r.status for sid, r in after.items() if r.status != "succeeded"}
    assert not_done == {"hst-tc-203:tc.reassign": "failed", "hst-tc-203:tc.verify": "skipped"}
    for sid, rec in before.items():  # finished before the kill: not run again
        assert after[sid].finished_at == rec.finished_at and after[sid].attempts == rec.attempts, sid
    # every simulated change happened exactly once, across the kill
    changing = [sid for sid in after if sid.split(":")[1] in CHANGING and sid != "hst-tc-203:tc.reassign"]
    assert ledger.sim_effect_counts(run_id) == len(changing)
    assert ledger.get_run(run_id)["status"] == "completed"


def test_weekend_flow_started_by_a_schedule_creates_its_own_run(bb_env, tmp_path):
    """What a scheduled deployment does: no run id, an inventory and a mode."""
    url = f"sqlite:///{tmp_path / 'scheduled.db'}"
    code = ("from bigbang.prefect_env import apply_defaults\napply_defaults()\n"
            "from flows.weekend import weekend\n"
            f"result = weekend(inventory={str(DEMO)!r}, ledger_url={url!r}, mode='rehearsal')\n"
            "print(result['run_id'])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=bb_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    ledger = Ledger(url)
    assert ledger.get_run(run_id)["status"] == "completed"
    assert len(ledger.step_results(run_id)) == 104
