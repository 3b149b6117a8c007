"""The Request Tracker 5 adapter against a real RT (Debian's request-tracker5), over REST2."""

from __future__ import annotations

import time

import pytest

from bigbang.defects.collect import collect
from bigbang.store.defects import DefectQueue
from bigbang.defects.tickets import RequestTracker, TicketSystem, sync_tickets
from bigbang.defects.triage import Observation
from bigbang.inventory.model import TicketSystemSettings
from bigbang.session import RunSession
from tests.test_defects_helpers import demo_inventory, rehearse
from tests.peers.postgres import free_port
from tests.peers.rt import KEY_FIELD, QUEUE, ROOT_PASSWORD, request_tracker  # noqa: F401

PASSWORD_ENV = "BIGBANG_TEST_RT_PASSWORD"


def rt_support(url: str) -> dict:
    return {"ticket_system": {"kind": "rt", "url": url, "queue": QUEUE, "user": "root",
                              "password": {"env": PASSWORD_ENV}, "key_field": KEY_FIELD, "timeout": 5,
                              "fields": {"run_id": "BigBang Run", "resolve_due": "BigBang Resolve By"}}}


def tickets_of(rt, key: str) -> list[dict]:
    """RT's own answer (read with plain requests, not the adapter): the tickets holding this defect key."""
    found = rt.get("tickets", query=f"CF.{{{KEY_FIELD}}} = '{key}'")
    return [rt.get(f"ticket/{item['id']}") for item in found["items"]]


def with_ticket_url(session: RunSession, url: str) -> RunSession:
    inv = session.inventory
    ts = inv.support.ticket_system.model_copy(update={"url": url})
    inv = inv.model_copy(update={"support": inv.support.model_copy(update={"ticket_system": ts})})
    return RunSession(inv, session.plan, session.ledger, session.run_id, session.options)


@pytest.fixture
def rt_session(tmp_path, request_tracker, monkeypatch):  # noqa: F811
    monkeypatch.setenv(PASSWORD_ENV, ROOT_PASSWORD)
    session = rehearse(demo_inventory(tmp_path, support=rt_support(request_tracker.url)),
                       f"sqlite:///{tmp_path / 'ledger.db'}")
    yield session
    session.close()


def test_tickets_are_filed_once_and_follow_resolve_and_reopen(rt_session, request_tracker):  # noqa: F811
    rt = request_tracker
    first = collect(session=rt_session, with_probe=False)
    queue = DefectQueue(rt_session.ledger.engine)
    defects = queue.list(state="all", limit=None)
    assert first.errors == [] and first.sync["created"] == len(defects) == 5
    for d in defects:
        found = tickets_of(rt, d["key"])
        assert len(found) == 1, d["key"]
        ticket = found[0]
        assert ticket["Subject"].startswith(f"[{d['key']}]")
        assert ticket["Status"] == "new"
        assert int(ticket["Priority"]) == rt_session.inventory.support.ticket_system.priorities[d["priority"]]
        assert [cf["values"] for cf in ticket["CustomFields"] if cf["name"] == KEY_FIELD] == [[d["key"]]]
        # Run scoping and the SLA reach RT as custom fields, and the body names the run and the reason.
        assert [cf["values"] for cf in ticket["CustomFields"] if cf["name"] == "BigBang Run"] == [[d["run_id"]]]
        due = [cf["values"] for cf in ticket["CustomFields"] if cf["name"] == "BigBang Resolve By"]
        assert due and due[0][0].startswith(time.strftime("%Y-%m-%d", time.gmtime(d["resolve_due"])))

    # Re-runs file nothing again.
    again = collect(session=rt_session, with_probe=False)
    assert again.sync["created"] == 0 and again.errors == []
    assert all(len(tickets_of(rt, d["key"])) == 1 for d in defects)

    # Our bookkeeping lost (a crash between RT's answer and our commit): the key finds the ticket.
    with rt_session.ledger.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM defect_tickets")
    lost = collect(session=rt_session, with_probe=False)
    assert lost.sync["created"] == 0 and lost.sync["found_existing"] == 5
    assert all(len(tickets_of(rt, d["key"])) == 1 for d in defects)

    # The probe: what passes now, on evidence (hst-ws-102: its image step had succeeded, its verification
    # passes now), is resolved in RT too, with the note as a comment; the image failures stay open.
    probed = collect(session=rt_session)
    assert probed.errors == [] and probed.filed["resolved"] == 1
    resolved = [d for d in queue.list(state="resolved", limit=None)]
    for d in resolved:
        ticket = tickets_of(rt, d["key"])[0]
        assert ticket["Status"] == "resolved"
        history = rt.get(f"ticket/{ticket['id']}/history", fields="Type")
        assert "Comment" in [t["Type"] for t in history["items"]]

    # A resolved one that fails again is reopened in RT.
    key = resolved[0]["key"]
    d = queue.get(key)
    queue.apply([Observation("probe:again", "probe", d["target"], d["check_name"], d["message"],
                             observed_at=d["resolved_at"] + 30, location_id=d["location_id"])], rt_session.inventory,
                run_id=rt_session.run_id)
    collect(session=rt_session, with_probe=False)
    ticket = tickets_of(rt, key)[0]
    assert queue.get(key)["state"] == "new" and ticket["Status"] == "open"

    # Support staff's changes in the queue reach RT as comments and status.
    queue.assign(key, "sune", "support")
    queue.resolve(key, "cable replaced", "sune")
    collect(session=rt_session, with_probe=False)
    assert tickets_of(rt, key)[0]["Status"] == "resolved"


def test_rt_down_records_the_failure_and_the_next_run_files_everything(rt_session, request_tracker):  # noqa: F811
    down = with_ticket_url(rt_session, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    failed = collect(session=down, with_probe=False)
    queue = DefectQueue(rt_session.ledger.engine)
    keys = [d["key"] for d in queue.list(state="all", limit=None)]
    assert len(keys) == 5 and failed.sync["created"] == 0 and failed.sync["pending"] == 5
    assert any("unreachable" in e for e in failed.errors)
    assert queue.collections(1)[0]["errors"] == failed.errors  # recorded with the collection
    assert "unreachable" in queue.ticket(queue.unsynced("rt")[0]["key"], "rt")["last_error"]
    # The queue itself lost nothing while RT was down; a defect found meanwhile waits too.
    queue.apply([Observation("user:meanwhile", "user", "hst-ws-104", "user.login", "cannot sign in",
                             observed_at=1.0e9, location_id="HST-001", category="login")], rt_session.inventory,
                run_id=rt_session.run_id)
    assert len(queue.unsynced("rt")) == 6

    back = collect(session=rt_session, with_probe=False)
    assert back.errors == [] and back.sync["created"] == 6 and queue.unsynced("rt") == []
    for key in [*keys, queue.list(category="login")[0]["key"]]:
        assert len(tickets_of(request_tracker, key)) == 1
        assert queue.ticket(key, "rt")["last_error"] is None


def test_wrong_password_stops_the_sync_without_losing_anything(rt_session, request_tracker, monkeypatch):  # noqa: F811
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    result = collect(session=rt_session, with_probe=False)
    assert result.sync["created"] == 0 and any("refused user 'root'" in e for e in result.errors)
    assert len(DefectQueue(rt_session.ledger.engine).unsynced("rt")) == 5
    monkeypatch.delenv(PASSWORD_ENV)
    missing = collect(session=rt_session, with_probe=False)
    assert any(f"environment variable {PASSWORD_ENV} is not set" in e for e in missing.errors)


def test_adapter_satisfies_the_interface(request_tracker):  # noqa: F811
    settings = TicketSystemSettings(kind="rt", url=request_tracker.url, queue=QUEUE, user="root",
                                    password={"env": PASSWORD_ENV}, key_field=KEY_FIELD)
    adapter = RequestTracker(settings, ROOT_PASSWORD)
    assert isinstance(adapter, TicketSystem)
    assert adapter.find("D-none-such") is None
    adapter.close()


def test_sync_of_an_empty_queue_does_nothing(tmp_path, request_tracker):  # noqa: F811
    from bigbang.store.ledger import Ledger

    queue = DefectQueue(Ledger(f"sqlite:///{tmp_path / 'l.db'}").engine)
    settings = TicketSystemSettings(kind="rt", url=request_tracker.url, queue=QUEUE, user="root",
                                    password={"env": PASSWORD_ENV}, key_field=KEY_FIELD)
    result = sync_tickets(queue, RequestTracker(settings, ROOT_PASSWORD))
    assert (result.created, result.updated, result.errors) == (0, 0, [])
