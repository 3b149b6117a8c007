"""Reports are rendered from the ledger alone: same answer during, after, or long after a run."""

from __future__ import annotations

import json

from bigbang.report import render_report
from tests.helpers import copy_demo, rehearse


def test_report_names_failures_blocks_halts_and_what_to_retry(tmp_path, bigbang, bb_env):
    def edit(files):
        files["rollout.yaml"]["rehearsal"]["failure_rate"] = 0.0
        files["rollout.yaml"]["rollout"]["failure_policy"]["halt_rollout"] = {}
        files["rollout.yaml"]["rehearsal"]["inject"] = [
            {"target": "srv-ctxsf01", "step": "srv.provision", "message": "clone failed: datastore full"},
            {"target": "nor-ws-105", "step": "ws.image", "message": "PXE timeout"},
        ]
    ledger_url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    session = rehearse(copy_demo(tmp_path, edit), ledger_url)
    session.ledger.set_run_status(session.run_id, "completed")
    files = render_report(session.ledger, session.run_id, tmp_path / "reports")
    md = files.markdown.read_text()
    assert "| HST-001 | Holstebro Rådhus | team-nord | high | blocked |" in md
    assert "required servers not ready: srv-ctxsf01 (skipped: srv.provision failed: clone failed: datastore full)" in md
    assert "| srv-ctxsf01 | srv.provision | 3 | clone failed: datastore full |" in md
    assert "| HST-027 | nor-ws-105 | ws.image | 3 | PXE timeout |" in md
    assert f"bigbang run --resume {session.run_id} --retry-failed" in md
    data = json.loads(files.json.read_text())
    assert data["failed_devices"] == ["nor-ws-105"]
    assert data["devices"]["skipped"] == 19  # the two locations that need the StoreFront
    html = files.html.read_text()
    assert '<span class="status blocked">blocked</span>' in html and "PXE timeout" in html

    # the CLI renders the same report again, from the ledger only
    env_ledger = ["--ledger", ledger_url, "--out", tmp_path / "again"]
    out = bigbang("report", session.run_id, *env_ledger, check=True)
    again = (tmp_path / "again" / session.run_id / "summary.md").read_text()
    assert str(tmp_path / "again" / session.run_id / "summary.html") in out.stdout
    strip = lambda text: text.rsplit("_Generated", 1)[0]  # noqa: E731
    assert strip(again) == strip(md)


def test_a_finished_run_renders_its_report_once_for_the_flow_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGBANG_REPORTS", str(tmp_path / "reports"))
    session = rehearse(copy_demo(tmp_path), f"sqlite:///{tmp_path / 'ledger.db'}")
    session.finish()
    files = session.report()
    assert session.report() is files  # the flow's artifacts and the command's summary: one rendering
    assert files.directory == tmp_path / "reports" / session.run_id and files.markdown.exists()
    assert files.data["run"]["run_id"] == session.run_id
    assert json.loads(files.json.read_text())["steps"] == files.data["steps"]  # the data the files show
    session.finish()  # a run finished again (a resume) gets a new report
    assert session.report() is not files
    session.close()
