"""`bigbang run`'s exit codes (README, "Exit codes"): 2 usage or inventory error, 3 the engine cannot be reached.

0 and 1 are shown by real runs: tests/test_rehearsal_engine.py (the demo's injected failure exits 1) and
tests/test_vsphere_datacenters.py (a live run whose servers fail exits 1 and names them).
"""

from __future__ import annotations

import socket
import time

from tests.conftest import DEMO


def test_usage_and_inventory_errors_exit_2(bigbang, tmp_path):
    assert bigbang("run", DEMO, "--mode", "sideways").returncode == 2  # argparse
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: {name: x}\nlocations: [{id: L1}]\n")
    proc = bigbang("run", bad, "--quiet")
    assert proc.returncode == 2 and "error: inventory has" in proc.stderr and "Traceback" not in proc.stderr
    proc = bigbang("run", "--resume", "run-nope")
    assert proc.returncode == 2 and "no run run-nope" in proc.stderr


def test_an_unreachable_prefect_api_exits_3_with_the_resume_command(bigbang, bb_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    env = dict(bb_env, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    started = time.monotonic()
    proc = bigbang("run", DEMO, "--quiet", "--zero-duration", "--run-id", "run-noapi",
                   "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}", env=env, timeout=300)
    print(f"unreachable API detected in {time.monotonic() - started:.1f} s")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"cannot reach the Prefect API (http://127.0.0.1:{port}/api)" in proc.stderr
    assert "bigbang run --resume run-noapi" in proc.stderr and "Traceback" not in proc.stderr
