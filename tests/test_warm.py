"""The warm local Prefect server: the first rehearsal starts it, the next ones use it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bigbang import warm
from tests.conftest import DEMO

pytestmark = pytest.mark.engine


def test_second_rehearsal_uses_the_warm_server_and_it_stops_when_asked(bigbang, bb_env, tmp_path):
    env = {**bb_env, "BIGBANG_WARM_SERVER": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    state = tmp_path / "prefect" / warm.STATE_NAME
    try:
        first = bigbang("run", DEMO, "--quiet", "--compression", "max", env=env)
        assert first.returncode in (0, 1), first.stderr[-2000:]  # the demo fails one device on purpose
        assert "(warm)" not in first.stderr  # cold: Prefect's embedded server, as before
        deadline = time.monotonic() + 180
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(1)
        data = json.loads(state.read_text())
        assert data["url"].startswith("http://127.0.0.1:") and warm.healthy(data["url"])

        second = bigbang("run", DEMO, "--quiet", "--compression", "max", env=env)
        assert second.returncode in (0, 1), second.stderr[-2000:]
        assert f"Prefect {data['url']} (warm)" in second.stderr
        runs = json.loads(bigbang("runs", "--json", env=env).stdout)
        assert [r["status"] for r in runs[:2]] == ["completed", "completed"]
    finally:
        stopped = bigbang_stop(env)
    assert stopped
    deadline = time.monotonic() + 30
    while _alive(data["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(data["pid"]) and not state.exists()


def bigbang_stop(env: dict[str, str]) -> bool:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return warm.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _alive(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has stopped; only its exit status is left


def test_a_second_server_started_while_the_first_boots_steps_aside_and_stop_reaches_a_booting_one(bb_env, tmp_path):
    env = {**bb_env, "BIGBANG_WARM_SERVER": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    serve = [sys.executable, "-m", "bigbang.warm", "--serve"]
    first = subprocess.Popen(serve, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = tmp_path / "prefect" / warm.LOCK_NAME
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.read_text().strip() == str(first.pid)
        assert not (tmp_path / "prefect" / warm.STATE_NAME).exists()  # still booting: no state file yet

        second = subprocess.run(serve, env=env, stdin=subprocess.DEVNULL, timeout=60)
        assert second.returncode == 0 and first.poll() is None  # it stepped aside; the first one goes on
        assert not with_env(env, warm.start_in_background)()  # nor does a run start another

        assert with_env(env, warm.stop)()  # found through the lock, before it has a state file
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not with_env(env, warm.stop)()  # nothing left to stop


def with_env(env: dict[str, str], function):
    def call():
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            return function()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    return call
