"""Support staff's defect pages in the field app: list, filters, detail, assign, comment, resolve, reports."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from bigbang.defects.collect import collect
from bigbang.store.defects import DefectQueue
from bigbang.web.app import create_app
from tests.test_defects_helpers import PXE, demo_inventory, rehearse

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def site(tmp_path):
    inv = demo_inventory(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = rehearse(inv, url)
    collect(session=session, with_probe=False)
    app = create_app(inv, url, secret="test-secret")
    with TestClient(app, base_url="http://testserver") as client:
        yield client, DefectQueue(session.ledger.engine), session
    session.close()


def sign_in(client: TestClient, username: str, password: str) -> str:
    token = CSRF.search(client.get("/login").text).group(1)
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token, "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return CSRF.search(client.get("/defects").text).group(1)


def test_list_filters_and_detail(site):
    client, queue, session = site
    assert client.get("/defects", follow_redirects=False).status_code == 303  # not signed in: to the sign-in page
    sign_in(client, "support", "demo-support")
    page = client.get("/defects").text
    keys = {d["key"] for d in queue.list()}
    assert len(keys) == 5 and all(f'id="row-{k}"' in page for k in keys)
    only = client.get("/defects", params={"location": "HST-014"}).text
    assert only.count('<tr id="row-') == 1 and "lys-ws-101" in only
    assert client.get("/defects", params={"category": "thin-client"}).text.count('<tr id="row-') == 1
    assert client.get("/defects", params={"status": "resolved"}).text.count('<tr id="row-') == 0
    level = queue.list()[0]["priority"]
    assert client.get("/defects", params={"priority": str(level)}).text.count('<tr id="row-') == \
        len(queue.list(priority=level))

    d = next(x for x in queue.list() if x["target"] == "lys-ws-101")
    detail = client.get(f"/defects/{d['key']}").text
    assert PXE in detail
    assert "PF4B1401" in detail and "Lenovo ThinkCentre M70q Gen 5" in detail  # the device's inventory data
    assert "Birgitte Holm" in detail  # the location's contact
    rollout = detail.split('id="rollout"')[1].split("</table>")[0]
    assert "ws.prestage" in rollout and "ws.image" in rollout and "failed" in rollout
    assert "Same problem elsewhere" in detail and "hst-ws-101" in detail
    assert client.get("/defects/D-none").status_code == 404


def test_assign_comment_resolve_with_csrf(site):
    client, queue, _ = site
    token = sign_in(client, "support", "demo-support")
    key = next(x["key"] for x in queue.list() if x["target"] == "hst-tc-203")
    unknown = client.post(f"/defects/{key}/assign", data={"assignee": "sune", "csrf_token": token})
    assert unknown.status_code == 409 and "&#39;sune&#39; is not a support account" in unknown.text
    r = client.post(f"/defects/{key}/assign", data={"assignee": "support", "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/defects/{key}?msg=assigned"
    client.post(f"/defects/{key}/comment", data={"text": "flash module ordered", "csrf_token": token})
    r = client.post(f"/defects/{key}/resolve", data={"note": "module replaced", "csrf_token": token})
    assert r.status_code == 200 and 'id="state">resolved' in r.text
    d = queue.get(key)
    assert d["state"] == "resolved" and d["assignee"] == "support"
    assert [(h["action"], h["actor"]) for h in queue.history(key)][1:] == [
        ("assigned", "support"), ("comment", "support"), ("resolved", "support")]

    # Without the CSRF token nothing changes; a refused transition says why.
    assert client.post(f"/defects/{key}/comment", data={"text": "x"}).status_code == 403
    assert client.post(f"/defects/{key}/comment", data={"text": "x", "csrf_token": "forged"}).status_code == 403
    refused = client.post(f"/defects/{key}/state", data={"state": "triaged", "csrf_token": token})
    assert refused.status_code == 409 and "can move to closed, in_progress" in refused.text
    assert len(queue.history(key)) == 4


def test_technicians_cannot_work_the_queue(site):
    client, queue, _ = site
    token = sign_in(client, "aha", "demo-aha")
    assert client.get("/defects").status_code == 403
    key = queue.list()[0]["key"]
    assert client.post(f"/defects/{key}/resolve", data={"note": "x", "csrf_token": token}).status_code == 403
    assert queue.get(key)["state"] == "new"


def test_user_report_intake(site):
    client, queue, session = site
    token = sign_in(client, "support", "demo-support")
    bad = client.post("/defects/reports", data={"device": "nope-ws-1", "category": "printer", "text": "",
                                                "request_key": "k1", "csrf_token": token})
    assert bad.status_code == 422
    assert "unknown device &#39;nope-ws-1&#39;" in bad.text and "text is empty" in bad.text
    good = {"device": "hst-ws-103", "category": "printer", "text": "printer offline", "reporter": "pso",
            "request_key": "k2", "csrf_token": token}
    r = client.post("/defects/reports", data=good, follow_redirects=False)
    run = session.run_id
    assert r.status_code == 303 and r.headers["location"] == f"/defects?msg=reported&run={run}"
    again = client.post("/defects/reports", data=good, follow_redirects=False)  # a retried POST
    assert again.headers["location"] == f"/defects?msg=already&run={run}"
    # In the run's queue at once (no waiting for the next collection), counted once.
    assert queue.pending_reports() == []
    d = next(x for x in queue.list(run_id=run) if x["target"] == "hst-ws-103")
    assert d["category"] == "printer" and d["source"] == "user" and d["occurrences"] == 1 and d["run_id"] == run
    collect(session=session, with_probe=False)
    assert queue.get(d["key"])["occurrences"] == 1
