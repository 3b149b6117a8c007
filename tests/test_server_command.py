"""`bigbang server` starts a real, long-lived Prefect server with bigbang's settings."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.peers import free_port

pytestmark = pytest.mark.engine


def test_bigbang_server_serves_the_prefect_api(bb_env, tmp_path):
    port = free_port()
    env = dict(bb_env, PREFECT_HOME=str(tmp_path / "prefect-server-home"))
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "server", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
                    health = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert health == "true", (proc.poll(), health)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/admin/version", timeout=5) as resp:
            assert resp.read().decode().strip('"').startswith("3.8")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    err = proc.stderr.read()
    assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in err
