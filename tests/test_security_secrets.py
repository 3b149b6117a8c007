"""No secret or password-bearing URL in any flow-run parameter, task run, artifact, log, event or report.

A rehearsal of the demo runs on a real Prefect server (PostgreSQL, Redis) with a PostgreSQL ledger whose
URL carries a password; everything the server holds about it is then read back over its REST API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigbang.errors import ConfigError
from bigbang.ledger_ref import is_reference, ledger_reference, resolve_ledger
from tests.conftest import DEMO
from tests.peers.postgres import postgres  # noqa: F401 - fixture
from tests.peers.prefect_server import api_post, prefect_server  # noqa: F401 - fixture
from tests.peers.redis import redis  # noqa: F401 - fixture

PASSWORD = "Hemmelig-ledger-pw-7f3a"

pytestmark = pytest.mark.engine


def with_password(url: str) -> str:
    # the test cluster trusts loopback, so the password is accepted and ignored: it only has to not leak
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.mark.timeout(480)
def test_a_ledger_password_never_reaches_the_prefect_server(tmp_path, bb_env, prefect_server, postgres):  # noqa: F811
    ledger_url = with_password(postgres.create_database())
    env = prefect_server.client_env(bb_env)
    env["BIGBANG_REPORTS"] = str(tmp_path / "reports")
    run_id = "run-no-secrets"
    done = subprocess.run([sys.executable, "-m", "bigbang", "run", str(DEMO), "--ledger", ledger_url,
                           "--compression", "max", "--quiet", "--run-id", run_id], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: the demo fails one device on purpose
    assert PASSWORD not in done.stdout + done.stderr

    api = prefect_server.api_url
    flow_runs = api_post(api, "/flow_runs/filter", {"flow_runs": {"name": {"like_": f"{run_id}%"}}, "limit": 200})
    assert isinstance(flow_runs, list) and flow_runs, "the weekend flow run is on the server"
    weekend = [r for r in flow_runs if r["name"] == run_id]
    assert len(weekend) == 1
    params = weekend[0]["parameters"]
    assert params["run_id"] == run_id
    assert params["ledger_url"] and PASSWORD not in params["ledger_url"] and "***" in params["ledger_url"]
    ids = [r["id"] for r in flow_runs]
    task_runs = api_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200})
    assert isinstance(task_runs, list) and len(task_runs) >= 3  # prechecks, server waves, locations
    artifacts = api_post(api, "/artifacts/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200})
    assert isinstance(artifacts, list) and artifacts, "the report is attached as artifacts"
    logs = api_post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200})
    events = api_post(api, "/events/filter", {"filter": {"any_resource": {"id_prefix": ["prefect.flow-run."]}},
                                              "limit": 50})
    everything = json.dumps([flow_runs, task_runs, artifacts, logs, events])
    assert run_id in everything
    assert PASSWORD not in everything

    reports = list(Path(tmp_path / "reports").rglob("*"))
    assert any(p.name == "summary.json" for p in reports)
    for path in reports:
        if path.is_file():
            assert PASSWORD not in path.read_text(encoding="utf-8", errors="replace"), path


def test_a_reference_resolves_in_its_own_process_and_from_a_workers_environment(monkeypatch):
    full = f"postgresql+psycopg://bigbang:{PASSWORD}@db.example:5432/bigbang"
    ref = ledger_reference(full)
    assert ref == "postgresql+psycopg://bigbang:***@db.example:5432/bigbang"
    assert is_reference(ref) and PASSWORD not in ref
    assert resolve_ledger(ref) == full  # this process made it
    assert ledger_reference("sqlite:////tmp/ledger.db") == "sqlite:////tmp/ledger.db"
    assert ledger_reference(None) is None and resolve_ledger(None) is None

    # a worker: another process, which knows the URL only from its own environment
    other = f"postgresql+psycopg://bigbang:{PASSWORD}@db2.example/bigbang"
    worker_ref = "postgresql+psycopg://bigbang:***@db2.example/bigbang"
    monkeypatch.delenv("BIGBANG_LEDGER_URL", raising=False)
    with pytest.raises(ConfigError, match="needs its password"):
        resolve_ledger(worker_ref)
    monkeypatch.setenv("BIGBANG_LEDGER_URL", other)
    assert resolve_ledger(worker_ref) == other
    monkeypatch.setenv("BIGBANG_LEDGER_URL", "postgresql+psycopg://bigbang:x@elsewhere/bigbang")
    with pytest.raises(ConfigError, match="not the run's ledger"):
        resolve_ledger(worker_ref)
