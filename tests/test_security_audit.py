"""The field audit trail is a hash chain `bigbang audit verify` checks; shell changes need an ops lead."""

from __future__ import annotations

import subprocess
import threading

import pytest
from sqlalchemy import text

from bigbang.session import RunOptions, RunSession
from bigbang.store.field import Actor, FieldStore
from bigbang.store.ledger import Ledger
from tests.peers.browser import gated_inventory
from tests.peers.postgres import postgres  # noqa: F401 - fixture

LOCATION = "HST-014"  # team-syd: aha, sni
ACTOR = Actor("aha", "technician", "test")


@pytest.fixture
def field(tmp_path):
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(inventory, RunOptions(mode="rehearsal", zero_duration=True), ledger_url=ledger_url)
    yield inventory, ledger_url, session
    session.close()


def fill(store: FieldStore, run_id: str, n: int = 5) -> None:
    for i in range(n):
        assert store.set_check(run_id, LOCATION, f"item-{i}", True, ACTOR, f"request-key-{i:04d}")


def test_an_untouched_trail_verifies_and_every_tampering_is_found(tmp_path, bigbang):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = FieldStore(Ledger(url))
    fill(store, "run-a")
    assert store.verify_chain().ok and store.verify_chain().rows == 5
    r = bigbang("audit", "verify", "--ledger", url)
    assert r.returncode == 0 and "audit trail intact: 5 rows" in r.stdout, r.stderr

    with store.engine.begin() as conn:  # someone edits a row in the database
        conn.execute(text("UPDATE field_audit SET actor = 'sni' WHERE id = 3"))
    report = store.verify_chain()
    assert (report.ok, report.broken_at) == (False, 3) and "content does not match" in report.reason
    r = bigbang("audit", "verify", "--ledger", url)
    assert r.returncode == 1 and "audit trail BROKEN at row 3" in r.stdout and "2 rows before it" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE field_audit SET actor = 'aha' WHERE id = 3"))
    assert store.verify_chain().ok

    with store.engine.begin() as conn:  # ... removes one
        conn.execute(text("DELETE FROM field_audit WHERE id = 2"))
    report = store.verify_chain()
    assert report.broken_at == 3 and "link" in report.reason


def test_a_row_slipped_in_or_rehashed_alone_is_found(tmp_path):
    store = FieldStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    fill(store, "run-a", 3)
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO field_audit (request_key, at, actor, role, source, action, run_id, "
                          "location_id, subject, detail) VALUES ('forged-key-1', 1, 'mkr', 'technician', 'x', "
                          "'signoff', 'run-a', 'HST-014', 'HST-014', '{}')"))
    report = store.verify_chain()
    assert report.broken_at == 4 and "no hash" in report.reason
    # a forger who recomputes the changed row's own hash still breaks the next row's link
    from bigbang.store.field import row_hash

    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM field_audit WHERE id = 4"))
        rows = conn.execute(text("SELECT * FROM field_audit ORDER BY id")).mappings().all()
        forged = {**dict(rows[0]), "actor": "mkr"}
        conn.execute(text("UPDATE field_audit SET actor = 'mkr', hash = :h WHERE id = 1"),
                     {"h": row_hash(forged, None)})
    report = store.verify_chain()
    assert report.broken_at == 2 and "link" in report.reason


def test_concurrent_appends_on_postgresql_keep_one_chain(postgres):  # noqa: F811
    store = FieldStore(Ledger(postgres.create_database()))
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(15):
                store.set_check("run-pg", LOCATION, f"item-{w}-{i}", True, ACTOR, f"key-{w:02d}-{i:04d}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = store.verify_chain()
    assert report.ok and report.rows == 90, report


def test_shell_changes_on_someones_behalf_need_an_ops_leads_credential(field, bigbang, bb_env):
    inventory, ledger_url, session = field
    run = ["--run", session.run_id, "--ledger", ledger_url]
    for key in ("BIGBANG_OPS_LEAD", "BIGBANG_OPS_LEAD_PASSWORD"):
        bb_env.pop(key, None)
    r = bigbang("check", LOCATION, "location.arrive", *run, "--by", "aha")
    assert r.returncode == 1 and "needs an ops lead's credential" in r.stderr
    r = bigbang("check", LOCATION, "location.arrive", *run, "--by", "aha", "--lead", "sni",
                env={**bb_env, "BIGBANG_OPS_LEAD_PASSWORD": "demo-sni"})
    assert r.returncode == 1 and "'sni' is not an ops lead" in r.stderr
    r = bigbang("check", LOCATION, "location.arrive", *run, "--by", "aha", "--lead", "ops",
                env={**bb_env, "BIGBANG_OPS_LEAD_PASSWORD": "wrong-password-1"})
    assert r.returncode == 1 and "wrong password for ops lead ops" in r.stderr
    r = bigbang("check", LOCATION, "location.arrive", *run, "--by", "aha", "--lead", "ops", "--password", "demo-ops")
    assert r.returncode == 2  # no option takes a password
    assert FieldStore(session.ledger).audit(session.run_id) == []

    r = bigbang("check", LOCATION, "location.arrive", *run, "--by", "aha", "--lead", "ops",
                env={**bb_env, "BIGBANG_OPS_LEAD_PASSWORD": "demo-ops"})
    assert r.returncode == 0, r.stderr
    r = bigbang("signoff", LOCATION, *run, "--by", "ops", "--force", "--note", "the rest is checked tomorrow",
                env={**bb_env, "BIGBANG_OPS_LEAD_PASSWORD": "demo-ops"})  # an ops lead acting as themself
    assert r.returncode == 0, r.stderr
    audit = FieldStore(session.ledger).audit(session.run_id)
    assert [(a["actor"], a["action"]) for a in audit] == [("aha", "check"), ("ops", "signoff")]
    assert all(a["source"].startswith("cli ") and a["source"].endswith("entered by ops lead ops") for a in audit)
    assert FieldStore(session.ledger).verify_chain().ok


def test_a_checkin_from_the_shell_needs_an_ops_leads_credential_and_names_the_lead(field, bigbang, bb_env):
    inventory, ledger_url, session = field
    for key in ("BIGBANG_OPS_LEAD", "BIGBANG_OPS_LEAD_PASSWORD"):
        bb_env.pop(key, None)
    checkin = ["schedule", "checkin", session.run_id, LOCATION, "--by", "aha", "--ledger", ledger_url]
    refusals = [
        ([], {}, "error: changing a run from the shell as aha needs an ops lead's credential"),
        (["--lead", "ops"], {"BIGBANG_OPS_LEAD_PASSWORD": "wrong-password-1"}, "error: wrong password for ops lead ops"),
        (["--lead", "sni"], {"BIGBANG_OPS_LEAD_PASSWORD": "demo-sni"}, "error: 'sni' is not an ops lead"),
        (["--lead", "ops"], {}, "error: no password for ops lead ops"),  # no terminal to ask on
    ]
    for extra, env, line in refusals:
        r = bigbang(*checkin, *extra, env={**bb_env, **env}, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and r.stdout == "", (extra, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(line), r.stderr
    assert not session.ledger.checked_in(session.run_id, LOCATION)
    assert FieldStore(session.ledger).audit(session.run_id) == []

    r = bigbang(*checkin, "--lead", "ops", env={**bb_env, "BIGBANG_OPS_LEAD_PASSWORD": "demo-ops"})
    assert r.returncode == 0 and r.stdout.strip() == f"{LOCATION} checked in by aha", r.stderr
    assert session.ledger.checked_in(session.run_id, LOCATION)
    event = [e for e in session.ledger.events(session.run_id) if e["kind"] == "location.checked_in"]
    assert len(event) == 1 and event[0]["message"].startswith("by aha (cli ")
    assert event[0]["message"].endswith("entered by ops lead ops)")
    audit = FieldStore(session.ledger).audit(session.run_id)
    assert [(a["actor"], a["action"], a["location_id"]) for a in audit] == [("aha", "checkin", LOCATION)]
    assert audit[0]["source"].startswith("cli ") and audit[0]["source"].endswith("entered by ops lead ops")
