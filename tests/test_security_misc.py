"""Password hashes at OWASP cost, insecure transport options warned about, files readable by their owner only."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from bigbang.web.passwords import cost_problem, hash_password, verify_password
from tests.conftest import DEMO

LOW = [
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # the old default
    "scrypt$131072$4$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # r below 8
    "scrypt$4096$8$20$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # N below 2^13
    "pbkdf2_sha256$599999$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "pbkdf2_sha256$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
]


def test_new_hashes_meet_the_floor_and_weak_ones_never_verify():
    stored = hash_password("a-long-passphrase")
    assert cost_problem(stored) is None and verify_password("a-long-passphrase", stored)
    n, r, p = (int(x) for x in stored.split("$")[1:4])
    assert r >= 8 and n * p >= 2**14 * 5
    for weak in LOW:
        assert cost_problem(weak) and "below current guidance" in cost_problem(weak)
    import base64
    import hashlib
    import os

    salt = os.urandom(16)
    for iterations, ok in ((600_000, True), (100_000, False)):
        digest = hashlib.pbkdf2_hmac("sha256", b"pw-twelve-chars", salt, iterations)
        made = f"pbkdf2_sha256${iterations}${base64.urlsafe_b64encode(salt).decode().rstrip('=')}$" \
               f"{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"
        assert verify_password("pw-twelve-chars", made) is ok


@pytest.mark.parametrize("weak", LOW)
def test_validation_refuses_a_hash_below_the_floor(tmp_path, bigbang, weak):
    inv = tmp_path / "inv"
    shutil.copytree(DEMO, inv)
    teams = inv / "teams.yaml"
    text = teams.read_text()
    first = next(line for line in text.splitlines() if "password_hash:" in line)
    teams.write_text(text.replace(first, first.split("password_hash:")[0] + "password_hash: " + weak, 1))
    r = bigbang("validate", inv)
    assert r.returncode == 1 and "below current guidance" in r.stderr + r.stdout


def test_hash_password_needs_twelve_characters(bigbang):
    r = bigbang("hash-password", input="elevenchars\n")
    assert r.returncode == 1 and "at least 12 characters" in r.stderr
    r = bigbang("hash-password", input="twelve-chars\n")
    assert r.returncode == 0 and cost_problem(r.stdout.strip()) is None


INSECURE = """\
connectors:
  winrm:
    scheme: http
    transport: basic
  vsphere:
    insecure: true
  ssh:
    trust_on_first_use: true
support:
  ticket_system:
    kind: rt
    url: http://rt.example.org
    user: bigbang
    password: {env: RT_PASSWORD}
"""
EXPECTED = ["connectors.winrm: basic authentication over HTTP", "connectors.vsphere.insecure: true",
            "connectors.ssh.trust_on_first_use: true", "support.ticket_system.url: Request Tracker over plain HTTP"]


@pytest.mark.engine
def test_insecure_options_are_warned_about_and_files_are_owner_only(tmp_path, bigbang, bb_env):
    inv = tmp_path / "inv"
    shutil.copytree(DEMO, inv)
    r = bigbang("validate", inv)
    assert r.returncode == 0 and "insecure" not in r.stdout + r.stderr  # the demo is clean
    (inv / "zz-insecure.yaml").write_text(INSECURE)
    for command in (["validate", inv], ["plan", inv], ["plan", inv, "--json"]):
        r = bigbang(*command)
        assert r.returncode == 0, r.stderr
        for expected in EXPECTED:
            assert f"warning: insecure option {expected}" in r.stderr, (command, r.stderr)
    state = tmp_path / "state"
    r = bigbang("run", inv, "--compression", "max", "--zero-duration", "--quiet")
    assert r.returncode in (0, 1), r.stderr[-2000:]  # 1: the demo fails one device on purpose
    for expected in EXPECTED:
        assert f"warning: insecure option {expected}" in " ".join((r.stdout + r.stderr).split())

    ledger = state / "ledger.db"
    reports = Path(bb_env["BIGBANG_REPORTS"])
    assert ledger.is_file() and reports.is_dir()
    files = [ledger, *[p for p in reports.rglob("*") if p.is_file()]]
    dirs = [state, reports, *[p for p in reports.rglob("*") if p.is_dir()]]
    assert any(p.name == "summary.json" for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    for path in dirs:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
