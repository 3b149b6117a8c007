"""The Prefect UI as an ops lead's second screen.

`bigbang server` on a port that is not Prefect's 4200, a small rehearsal run against it, then
the weekend's flow run opened in Chromium: the UI reaches the API, draws the run's graph and
lists its task runs, shows one log line per phase, server wave and location, and has the
report and the per-location table on its Artifacts tab. Also the run log's lines themselves.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from bigbang import run_log
from bigbang.commands.server import server_env, ui_api_url, ui_origin
from bigbang.errors import ConfigError
from bigbang.runner import LocationResult, PhaseResult
from bigbang.status import LocationStatus
from tests.conftest import DEMO
from tests.helpers import wait_for
from tests.peers import free_port
from tests.peers.browser import CHROMIUM
from tests.peers.prefect_server import CLIENT_ENV, api_post, stop_group, wait_until_healthy

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
RUN_ID = "run-ui-second-screen"


# ---------------------------------------------------------------- the lines and settings, no engine

def test_the_run_log_says_one_line_per_piece_with_its_counts():
    wave = PhaseResult("servers wave 2", succeeded=tuple(f"srv-{i}" for i in range(11)), failed=("srv-db",),
                       reasons={"srv-db": "vm.create failed: datastore full"})
    assert run_log.phase_finished(wave) == ("servers wave 2: 11 of 12 servers done, 1 failed; "
                                            "srv-db: vm.create failed: datastore full")
    assert run_log.phase_finished(PhaseResult("prechecks", succeeded=("a", "b"))) == \
        "prechecks: 2 of 2 servers done, 0 failed"
    halted = LocationResult("HST-014", LocationStatus.HALTED, "3 of 5 devices failed (60% > 20%)", 5, 3, 2)
    assert run_log.location_finished(halted) == ("location HST-014 halted: 3 of 5 devices failed (60% > 20%); "
                                                 "5 devices, 3 failed, 2 skipped")
    crashed = run_log.location_from_ledger("HST-001", {"status": "crashed", "reason": "worker died",
                                                       "devices": 10, "devices_failed": None,
                                                       "devices_skipped": None})
    assert run_log.location_finished(crashed) == "location HST-001 crashed: worker died; 10 devices, 0 failed, 0 skipped"


def test_artifact_keys_are_what_prefect_accepts():
    assert run_log.artifact_key("Run_2026-11-28T18:00--Ø") == "bigbang-run-2026-11-28t18-00"
    assert run_log.artifact_key(RUN_ID) == "bigbang-run-ui-second-screen"


@mock.patch.dict(os.environ)  # server_env applies bigbang's Prefect defaults to this process's environment
def test_the_ui_calls_the_api_where_it_was_loaded_from_unless_told(monkeypatch):
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_UI_API_URL", raising=False)
    # relative by default: any port, host name or proxy the browser came through
    assert server_env(None, None, origin=ui_origin("127.0.0.1", 4321))["PREFECT_UI_API_URL"] == "/api"
    # --ui-origin: a proxy under a path; CORS gets its origin only, and it wins over the environment
    monkeypatch.setenv("PREFECT_UI_API_URL", "http://127.0.0.1:4200/api")
    given = "https://ops.example.dk/prefect/"
    env = server_env(None, None, origin=ui_origin("0.0.0.0", 4200, given), ui_url=ui_api_url(given))
    assert env["PREFECT_UI_API_URL"] == "https://ops.example.dk/prefect/api"
    assert env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] == "https://ops.example.dk"
    # without it, the operator's own setting is kept
    assert server_env(None, None)["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"
    with pytest.raises(ConfigError):
        ui_origin("127.0.0.1", 4200, "prefect.example.dk")


# ---------------------------------------------------------------- the UI in a browser

class BigbangServer:
    """`bigbang server --port PORT` on loopback with its own Prefect home (SQLite), in its own session."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.home = tempfile.mkdtemp(prefix="bigbang-ui-server-")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + "/api"
        self.log_path = Path(self.home) / "server.log"
        self.env = dict(env, PREFECT_HOME=self.home)
        for key in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL"):
            self.env.pop(key, None)  # the server derives the UI's own
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> BigbangServer:
        self.process = subprocess.Popen([sys.executable, "-m", "bigbang", "server", "--port", str(self.port)],
                                        env=self.env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until_healthy(self, "bigbang server", timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:] if self.log_path.exists() else ""

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """A `bigbang run` as an ops lead starts it: logs to the API on (the UI's Logs tab), Prefect's logging
        level left to bigbang's default."""
        env = dict(base)
        env.update(CLIENT_ENV, PREFECT_API_URL=self.api_url, PREFECT_LOGGING_TO_API_ENABLED="true",
                   PREFECT_HOME=os.path.join(self.home, "client"))
        env.pop("PREFECT_LOGGING_LEVEL")
        return env

    def stop(self) -> None:
        stop_group(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


def _complete_log(api_url: str, flow_run_id: str) -> list[str] | None:
    logs = api_post(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                              "sort": "TIMESTAMP_ASC"})
    messages = [log["message"] for log in logs]  # type: ignore[union-attr]
    return messages if any(m.startswith(f"run {RUN_ID} completed") for m in messages) else None


def _green_pixels(png: bytes) -> int:
    """Pixels of the Completed state's green: the graph's task-run bars are drawn on a canvas."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for r, g, b in image.getdata() if g > 140 and r < 110 and b < 130 and g - r > 60)


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_the_weekend_flow_run_in_the_prefect_ui_on_another_port(tmp_path, bb_env, chromium):  # noqa: F811
    assert Path(CHROMIUM).exists()
    port = free_port()
    assert port != 4200
    server = BigbangServer(bb_env, port).start()
    try:
        banner = server.log()
        assert f"http://127.0.0.1:{port}" in banner and f"PREFECT_API_URL={server.api_url}" in banner
        with urllib.request.urlopen(server.url + "/ui-settings", timeout=10) as response:
            assert b'"api_url":"/api"' in response.read()

        run = subprocess.run(
            [sys.executable, "-m", "bigbang", "run", str(DEMO), "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}",
             "--run-id", RUN_ID, "--zero-duration", "--quiet"],
            env=server.client_env(bb_env), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"  # the demo's injected thin-client failure
        # The run log goes to the UI, not to the terminal (which has its own summary)
        assert "servers wave" not in run.stderr and "Task run" not in run.stderr, run.stderr

        flow_runs = api_post(server.api_url, "/flow_runs/filter",
                             {"flow_runs": {"name": {"any_": [RUN_ID]}}, "limit": 5})
        assert isinstance(flow_runs, list) and len(flow_runs) == 1
        flow_run_id = flow_runs[0]["id"]
        # Logs arrive in batches, also after the run's process has exited: wait for the run's last line
        messages = wait_for(lambda: _complete_log(server.api_url, flow_run_id), 60, "the run's last log line")
        ours = [m for m in messages if m.startswith(("run ", "prechecks", "servers wave", "location "))]
        # One line per phase, server wave and location, and the run's first and last: never per device step
        assert len(ours) == 2 + 2 + 4 + 3, ours
        assert "prechecks: 6 of 6 servers done, 0 failed" in ours
        assert "servers wave 2: 2 of 2 servers done, 0 failed" in ours
        assert ("location HST-001 completed with failures: 1 of 10 devices failed (10% <= 30%); "
                "10 devices, 1 failed, 0 skipped") in ours
        assert ours[-1].startswith(f"run {RUN_ID} completed: 3 locations (2 succeeded, 1 completed with failures)")
        assert not any("sqlite:" in m or "ledger.db" in m for m in messages)
        task_lines = [log["message"] for log in api_post(server.api_url, "/logs/filter", {  # type: ignore[union-attr]
            "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}) if log["task_run_id"]]
        assert any(m.startswith("location HST-001 ") for m in task_lines)  # the location's own line is there,
        assert not any(m.startswith("Finished in state") for m in task_lines)  # Prefect's per-task one is not

        SCREENSHOTS.mkdir(exist_ok=True)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/runs/flow-run/{flow_run_id}")
        page.wait_for_selector(".flow-run-graph canvas", timeout=60_000)
        page.wait_for_selector(f"text={RUN_ID} completed", timeout=60_000)  # the Logs tab is the first
        wait_for(lambda: _green_pixels(page.locator(".flow-run-graph canvas").screenshot()) > 500, 30,
                  "the graph's task-run bars")
        page.screenshot(path=str(SCREENSHOTS / "prefect-flow-run.png"), full_page=True)
        body = page.inner_text("body")
        assert "Can't connect to Server API" not in body
        assert "8 Task runs" in body
        for line in ("prechecks started: 7 checks on 6 servers", "servers wave 4: 1 of 1 server done, 0 failed",
                     "location HST-027 succeeded"):
            assert line in body, line

        page.click("[role=tablist] li#task-runs")
        page.wait_for_selector("text=location-HST-001", timeout=30_000)
        task_runs = page.inner_text("body")
        for name in ("prechecks", "servers-wave-1", "servers-wave-4", "location-HST-014", "location-HST-027"):
            assert name in task_runs, name

        page.click("[role=tablist] li#artifacts")
        page.wait_for_selector(f"text=bigbang-{RUN_ID}-locations", timeout=30_000)
        artifacts = page.inner_text("body")
        assert f"bigbang report for {RUN_ID}" in artifacts and f"per-location status of {RUN_ID}" in artifacts
        page.screenshot(path=str(SCREENSHOTS / "prefect-flow-run-artifacts.png"), full_page=True)
        assert "Can't connect to Server API" not in artifacts
        page.close()

        # Reached by another name (a browser's origin CORS does not list): the UI still finds its API
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://localhost:{port}/runs/flow-run/{flow_run_id}")
        page.wait_for_selector(f"text={RUN_ID} completed", timeout=60_000)
        assert "Can't connect to Server API" not in page.inner_text("body")
        page.close()
    finally:
        server.stop()
