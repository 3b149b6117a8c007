"""The sign-off gate inside the real Prefect flow: `bigbang run` (its own process, Prefect's ephemeral
engine) waits at each location's gate until a technician of that location's team signs it off in the
field app; then the location verifies and the flow goes on to the team's next location."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from bigbang.store.ledger import Ledger
from bigbang.web.app import create_app
from tests.peers.browser import gated_inventory

pytestmark = pytest.mark.engine

TECHNICIAN = {"team-nord": "mkr", "team-syd": "sni"}


def _client(app, username: str) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": username, "password": f"demo-{username}", "csrf_token": token})
    return client


def test_the_flow_waits_for_each_sign_off_from_the_field_app(tmp_path, bb_env):
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run_id = "run-field-gate"
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "run", str(inventory), "--run-id", run_id, "--ledger",
                             ledger_url, "--zero-duration", "--quiet"], env=bb_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ledger = Ledger(ledger_url)
        deadline = time.monotonic() + 300
        while ledger.get_run(run_id) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        app = create_app(inventory, ledger_url, run_id)
        field = app.state.field
        clients = {team: _client(app, name) for team, name in TECHNICIAN.items()}
        signed_order = []
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the run did not finish within 300 s"
            for loc in field.plan.locations:
                if loc.id in signed_order:
                    continue
                client = clients[loc.team]
                page = client.get(f"/l/{loc.id}").text
                if 'id="signoff-form"' in page:
                    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
                    key = re.search(r'id="signoff-form">\s*<input[^>]*>\s*<input type="hidden" '
                                    r'name="request_key" value="([^"]+)"', page).group(1)
                    r = client.post(f"/l/{loc.id}/signoff", data={"csrf_token": token, "request_key": key,
                                                                   "note": "engine test"}, follow_redirects=False)
                    assert r.status_code == 303, r.text
                    signed_order.append(loc.id)
            time.sleep(0.3)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err[-3000:]  # the demo's injected thin client failure: exit 1
    assert sorted(signed_order) == sorted(loc.id for loc in field.plan.locations)
    # the team's chain: HST-027 could only wait for its sign-off after HST-014 was signed off
    assert signed_order.index("HST-014") < signed_order.index("HST-027")
    steps = ledger.step_results(run_id)
    for loc in field.plan.locations:
        signoff = steps[loc.signoff.id]
        assert signoff.status == "succeeded" and signoff.facts["signed_by"] == TECHNICIAN[loc.team]
        assert steps[loc.verify.id].status == "succeeded"
        assert ledger.signoff(run_id, loc.id)["note"] == "engine test"
