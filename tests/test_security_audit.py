"""The field audit trail is a hash chain `bigbang audit verify` checks; shell changes need an ops lead."""

from __future__ import annotations

import subprocess
import threading

import pytest
from sqlalchemy import text

from bigbang.errors import ConfigError
from bigbang.session import RunOptions, RunSession
from bigbang.store.audit_chain import Head, key_id
from bigbang.store.field import Actor, FieldStore, row_hash
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


def sql(store: FieldStore, statement: str, **params) -> None:
    with store.engine.begin() as conn:  # someone with access to the database, outside bigbang
        conn.execute(text(statement), params)


def test_an_untouched_trail_verifies_and_every_tampering_is_found(tmp_path, bigbang):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = FieldStore(Ledger(url))
    fill(store, "run-a")  # row 1 is the marker where the head starts, rows 2-6 the check-offs
    report = store.verify_chain()
    assert report.ok and report.rows == 6 and report.head is not None and report.head.row_count == 6
    r = bigbang("audit", "verify", "--ledger", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"audit trail intact: 6 rows; head 6:{report.last_hash}, not signed (no audit key: " \
                               "BIGBANG_AUDIT_KEY_FILE)"

    sql(store, "UPDATE field_audit SET actor = 'sni' WHERE id = 3")  # someone edits a row in the database
    report = store.verify_chain()
    assert (report.ok, report.broken_at) == (False, 3) and "content does not match" in report.reason
    r = bigbang("audit", "verify", "--ledger", url)
    assert r.returncode == 1 and "audit trail BROKEN at row 3" in r.stdout and "2 rows before it" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1
    sql(store, "UPDATE field_audit SET actor = 'aha' WHERE id = 3")
    assert store.verify_chain().ok

    sql(store, "DELETE FROM field_audit WHERE id = 2")  # ... removes one
    report = store.verify_chain()
    assert report.broken_at == 3 and "link" in report.reason


def test_a_row_slipped_in_or_rehashed_alone_is_found(tmp_path):
    store = FieldStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    fill(store, "run-a", 3)
    sql(store, "INSERT INTO field_audit (request_key, at, actor, role, source, action, run_id, location_id, subject, "
               "detail) VALUES ('forged-key-1', 1, 'mkr', 'technician', 'x', 'signoff', 'run-a', 'HST-014', "
               "'HST-014', '{}')")
    report = store.verify_chain()
    assert report.broken_at == 5 and "no hash" in report.reason
    # a forger who recomputes the changed row's own hash still breaks the next row's link
    sql(store, "DELETE FROM field_audit WHERE id = 5")
    with store.engine.connect() as conn:
        row = dict(conn.execute(text("SELECT * FROM field_audit WHERE id = 2")).mappings().one())
    sql(store, "UPDATE field_audit SET actor = 'mkr', hash = :h WHERE id = 2",
        h=row_hash({**row, "actor": "mkr"}, row["prev_hash"]))
    report = store.verify_chain()
    assert report.broken_at == 3 and "link" in report.reason


def test_rows_deleted_from_the_end_are_found_by_the_head(tmp_path, bigbang):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = FieldStore(Ledger(url))
    fill(store, "run-a")
    sql(store, "DELETE FROM field_audit WHERE id > 4")  # the last two check-offs
    report = store.verify_chain()
    assert (report.ok, report.broken_at, report.rows) == (False, None, 4)
    assert report.reason == "2 rows missing: the head records 6 rows ending with row 6, the trail has 4 ending with row 4"
    r = bigbang("audit", "verify", "--ledger", url)
    assert r.returncode == 1 and r.stdout.strip() == ("audit trail BROKEN at its end: 2 rows missing: the head records "
                                                      "6 rows ending with row 6, the trail has 4 ending with row 4; "
                                                      "the 4 rows there link up"), r.stdout

    # a later change does not paper over it: the head keeps counting from what it recorded
    assert store.set_check("run-a", LOCATION, "item-9", True, ACTOR, "request-key-0009")
    assert "2 rows missing: the head records 7 rows" in store.verify_chain().reason


def test_a_deleted_head_is_found_by_its_marker(tmp_path):
    store = FieldStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    fill(store, "run-a", 3)
    sql(store, "DELETE FROM field_audit WHERE id = 4")
    sql(store, "DELETE FROM field_audit_head")  # the head too, so that nothing records the fourth row
    report = store.verify_chain()
    assert not report.ok and report.broken_at is None and "the head record is missing" in report.reason
    assert store.set_check("run-a", LOCATION, "item-9", True, ACTOR, "request-key-0009")  # starts a head again
    report = store.verify_chain()
    assert report.row["action"] == "audit.head" and "the head record was removed before this row" in report.reason


def test_the_head_given_back_finds_a_trail_rolled_back_as_a_whole(tmp_path, bigbang):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = FieldStore(Ledger(url))
    fill(store, "run-a", 3)
    witness = store.verify_chain().head.witness  # e.g. written into the run's report, or a witness file
    rows, digest = witness.split(":")
    assert store.set_check("run-a", LOCATION, "item-9", True, ACTOR, "request-key-0009")
    assert store.verify_chain((int(rows), digest[:16])).ok  # rows added since do not matter
    r = bigbang("audit", "verify", "--ledger", url, "--expect-head", witness)
    assert r.returncode == 0 and "audit trail intact: 5 rows; head 5:" in r.stdout, r.stdout + r.stderr

    sql(store, "DELETE FROM field_audit")  # everything, head included: a trail from before bigbang kept a head
    sql(store, "DELETE FROM field_audit_head")
    assert store.verify_chain().ok
    r = bigbang("audit", "verify", "--ledger", url, "--expect-head", witness)
    assert r.returncode == 1 and r.stdout.strip() == ("audit trail BROKEN at its end: 4 rows missing at the end: the "
                                                      "expected head is row 4, the trail has 0 rows; the 0 rows there "
                                                      "link up"), r.stdout
    r = bigbang("audit", "verify", "--ledger", url, "--expect-head", "4:xyz")
    assert r.returncode == 1 and r.stderr.startswith("error: --expect-head '4:xyz' is not ROWS:HASH"), r.stderr


def test_a_keyed_trail_cannot_be_recomputed_without_its_key(tmp_path, bigbang, bb_env, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    key_file = tmp_path / "audit.key"
    key_file.write_text("correct horse battery staple\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("BIGBANG_AUDIT_KEY_FILE", str(key_file))
    store = FieldStore(Ledger(url))
    fill(store, "run-a")
    report = store.verify_chain()
    assert report.ok and report.head.key_id == key_id(b"correct horse battery staple") == report.key_id
    keyed = {**bb_env, "BIGBANG_AUDIT_KEY_FILE": str(key_file)}
    r = bigbang("audit", "verify", "--ledger", url, env=keyed)
    assert r.returncode == 0 and r.stdout.strip().endswith(f"signed with audit key {report.key_id}"), r.stdout

    # a forger drops the last row and fixes the head, with every hash recomputed as the code does, but
    # without the key: the head's signature gives it away
    sql(store, "DELETE FROM field_audit WHERE id = 6")
    with store.engine.connect() as conn:
        last = dict(conn.execute(text("SELECT * FROM field_audit WHERE id = 5")).mappings().one())
    forged = Head(5, 5, last["hash"], report.key_id)
    sql(store, "UPDATE field_audit_head SET row_count = 5, last_id = 5, last_hash = :h, signature = :s",
        h=last["hash"], s=forged.signature(b"a key that is not the audit key"))
    assert store.verify_chain().reason == "the head record does not match its signature (changed outside bigbang)"
    # ... or rewrites a row and rehashes it: without the key its hash does not match
    sql(store, "UPDATE field_audit SET actor = 'mkr', hash = :h WHERE id = 3",
        h=row_hash({**last, "id": 3, "actor": "mkr"}, last["prev_hash"]))
    report = store.verify_chain()
    assert report.broken_at == 3 and "content does not match" in report.reason

    r = bigbang("audit", "verify", "--ledger", url)  # no key: it cannot say, and says so in one line
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: the audit trail is signed with audit key {key_id(b'correct horse battery staple')}")
    monkeypatch.delenv("BIGBANG_AUDIT_KEY_FILE")
    with pytest.raises(ConfigError, match="no audit key is set"):  # nor does it write plain rows after keyed ones
        FieldStore(Ledger(url)).set_check("run-a", LOCATION, "item-9", True, ACTOR, "request-key-0009")
    key_file.chmod(0o644)
    monkeypatch.setenv("BIGBANG_AUDIT_KEY_FILE", str(key_file))
    with pytest.raises(ConfigError, match="is readable by others"):
        FieldStore(Ledger(url)).verify_chain()


def test_a_trail_from_before_the_head_stays_readable_and_gets_one(tmp_path, monkeypatch):
    store = FieldStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    sql(store, "INSERT INTO field_audit (request_key, at, actor, role, source, action, run_id, location_id, subject, "
               "detail) VALUES ('before-the-chain', 1, 'aha', 'technician', 'x', 'check', 'run-a', 'HST-014', "
               "'x', '{}')")
    prev = None
    for i in range(2, 4):  # rows as bigbang wrote them before it kept a head: plain chain hashes, no marker
        values = dict(id=i, request_key=f"old-key-{i:04d}", at=float(i), actor="aha", role="technician", source="x",
                      action="check", run_id="run-a", location_id=LOCATION, subject=f"item-{i}", detail="{}")
        prev, h = row_hash(values, prev), prev
        sql(store, "INSERT INTO field_audit (id, request_key, at, actor, role, source, action, run_id, location_id, "
                   "subject, detail, prev_hash, hash) VALUES (:id, :request_key, :at, :actor, :role, :source, "
                   ":action, :run_id, :location_id, :subject, :detail, :p, :h)", **values, p=h, h=prev)
    report = store.verify_chain()
    assert (report.ok, report.rows, report.unchained, report.head) == (True, 3, 1, None)
    monkeypatch.setenv("BIGBANG_AUDIT_KEY", "a key set with the upgrade")
    store = FieldStore(store.ledger)  # the upgraded bigbang, started with the key
    fill(store, "run-a", 1)  # the first change after the upgrade starts the head (signed) behind the old rows
    report = store.verify_chain()
    assert report.ok and (report.rows, report.head.row_count, report.unchained) == (5, 5, 1) and report.key_id
    assert [a["action"] for a in store.audit("run-a")] == ["check"] * 4  # the marker belongs to no run


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
    assert report.ok and report.rows == 91, report  # and the marker where the head starts


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
