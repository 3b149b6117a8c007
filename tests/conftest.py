"""Shared fixtures. Peer fixtures live in tests/peers/<peer>.py; import them where used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# One Chromium for the whole session, shared by every browser test: Playwright's sync API cannot be started
# twice in one thread, which a fixture imported into several test modules (one instance each) would do.
from tests.peers.browser import chromium  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent

# No test leaves a warm Prefect server behind: tests/test_warm.py turns it on for itself and stops it.
os.environ["BIGBANG_WARM_SERVER"] = "0"
DEMO = ROOT / "inventories" / "demo"


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home per test session: the ephemeral database is migrated once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def bb_env(tmp_path, prefect_home) -> dict[str, str]:
    """Environment for running the `bigbang` CLI in a subprocess, isolated in tmp_path."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        BIGBANG_HOME=str(tmp_path / "state"),
        BIGBANG_REPORTS=str(tmp_path / "reports"),
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        COLUMNS="200",
        BIGBANG_WARM_SERVER="0",  # each test pays Prefect's start-up; tests/test_warm.py tries the warm server
    )
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture
def bigbang(bb_env, tmp_path):
    """Run `python -m bigbang ARGS` and return the CompletedProcess."""

    def run(*args: str, check: bool | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "bigbang", *map(str, args)], env=kw.pop("env", bb_env),
                              cwd=kw.pop("cwd", tmp_path), capture_output=True, text=True, timeout=timeout, **kw)
        if check:
            assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    return run
