"""The support week's queue: one queue per run, search, priorities from risk with SLA, bulk work,
duplicates, the self-service report form and the hypercare forecast."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bigbang.defects.collect import collect
from bigbang.defects.forecast import forecast
from bigbang.defects.triage import PRIORITY_NAMES, Observation
from bigbang.store.defects import DefectError, DefectQueue
from bigbang.web.app import create_app
from tests.test_defects_helpers import demo_inventory, rehearse

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def two_runs(tmp_path):
    """Two rehearsals of the same rollout in one ledger, both collected."""
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    (tmp_path / "state").mkdir()
    first = rehearse(demo_inventory(tmp_path / "a"), url)
    collect(session=first, with_probe=False)
    second = rehearse(demo_inventory(tmp_path / "b"), url)
    collect(session=second, with_probe=False)
    yield first, second
    first.close()
    second.close()


DEFECT_KEY = re.compile(r"\bD-[0-9a-f]{10}\b")  # bigbang.defects.triage.defect_key; a form token may hold 'D-'
REFERENCE = re.compile(r"\bR-[0-9A-F]{8}\b")  # a report's reference (bigbang.defects.web); a form token may hold 'R-'


def test_one_queue_per_run(two_runs):
    first, second = two_runs
    queue = DefectQueue(first.ledger.engine)
    a = queue.list(run_id=first.run_id, state="all", limit=None)
    b = queue.list(run_id=second.run_id, state="all", limit=None)
    assert len(a) == len(b) == 5 and not {d["key"] for d in a} & {d["key"] for d in b}
    assert {d["run_id"] for d in a} == {first.run_id} and {d["mode"] for d in a} == {"rehearsal"}
    assert {d["rollout"] for d in a} == {first.inventory.rollout.name}
    assert {r["run_id"] for r in queue.runs()} == {first.run_id, second.run_id}
    assert len(queue.problems(first.run_id)) == 1 and len(queue.problems(second.run_id)) == 1
    # Collecting one run (with another inventory: a different rule) never re-scores the other's defects.
    before = {d["key"]: (d["score"], d["priority"], d["updated_at"]) for d in a}
    inv = second.inventory
    rule = inv.support.priority.model_copy(update={"criticality": {"normal": 100.0, "high": 100.0, "critical": 100.0}})
    louder = inv.model_copy(update={"support": inv.support.model_copy(update={"priority": rule})})
    queue.apply([], louder, run_id=second.run_id)
    assert {d["key"]: (d["score"], d["priority"], d["updated_at"])
            for d in queue.list(run_id=first.run_id, state="all", limit=None)} == before
    assert all(d["priority"] == 1 for d in queue.list(run_id=second.run_id, state="all", limit=None))
    # Nothing links or merges across runs.
    with pytest.raises(DefectError, match="different runs"):
        queue.merge(a[0]["key"], b[0]["key"], "support")


def test_search_by_hostname_serial_user_phone_location_key_and_words(two_runs, bigbang, bb_env):
    first, second = two_runs
    queue = DefectQueue(first.ledger.engine)
    run = second.run_id

    def found(q: str) -> set[str]:
        return {d["target"] for d in queue.list(run_id=run, search=q, state="all", limit=None)}

    assert found("hst-ws-102") == {"hst-ws-102"}
    assert found("PF4A1101") == {"hst-ws-101"}  # serial, any case
    assert found("Karen Madsen") == {"hst-ws-102"} and found("madsen") == {"hst-ws-102"}
    assert found("kma") == {"hst-ws-102"}  # the user's id
    assert found("+45 97 42 11 01") == {"hst-ws-101"} == found("97421101")  # phone, with or without spaces
    assert found("Rådhus") == {"hst-ws-101", "hst-ws-102", "hst-tc-203"}  # the location's name
    key = queue.list(run_id=run, search="hst-tc-203")[0]["key"]
    assert found(key.lower()) == {"hst-tc-203"}
    assert found("flash space") == {"hst-tc-203"}  # free text of the failure
    assert found("no such thing") == set() and found("100%") == set()
    # The index (FTS5 trigram on SQLite) finds exactly what a scan of the search column finds.
    from bigbang.store.defects import search_terms
    every = queue.list(run_id=run, state="all", limit=None)
    for q in ("hst", "ws-10", "madsen 11", "pf4", "image", "boot did", "97 42", "hst-001 lenovo", "ab"):
        scan = {d["key"] for d in every if all(t in d["search"] for t in search_terms(q))}
        assert {d["key"] for d in queue.list(run_id=run, search=q, state="all", limit=None)} == scan, q

    out = bigbang("defects", "list", "--run", run, "--search", "Karen Madsen", check=True).stdout
    assert f"run {run}" in out and "hst-ws-102" in out and "Karen Madsen" in out and "hst-ws-101" not in out
    assert "1 defects" in out.splitlines()[0]
    by_phone = bigbang("defects", "list", "--run", run, "--search", "97 42 11 01", check=True).stdout
    assert "hst-ws-101" in by_phone and "hst-ws-102" not in by_phone
    # Readable at 80 columns: no line wider, keys and priorities whole.
    listing = bigbang("defects", "list", "--run", run, env={**bb_env, "COLUMNS": "80"}, check=True).stdout
    assert max(len(line) for line in listing.splitlines()) <= 80
    for d in queue.list(run_id=run):
        assert re.search(rf"{d['key']}\s+P{d['priority']}\s", listing), d["key"]
    shown = bigbang("defects", "show", key, check=True).stdout
    assert "None" not in shown and "run " in shown and PRIORITY_NAMES[queue.get(key)["priority"]] in shown


def test_web_search_and_run_shown(two_runs, tmp_path):
    first, second = two_runs
    app = create_app(demo_inventory(tmp_path / "web"), first.ledger.url, secret="test-secret")
    with TestClient(app, base_url="http://testserver") as client:
        token = CSRF.search(client.get("/login").text).group(1)
        r = client.post("/login", data={"username": "support", "password": "demo-support", "csrf_token": token,
                                        "next": "/"}, follow_redirects=False)
        assert r.status_code == 303
        assert client.get("/", follow_redirects=False).headers["location"] == "/defects"  # support: the queue
        page = client.get("/defects", params={"run": first.run_id, "q": "Lise Bech"}).text
        assert f"Queue of run <b class=\"mono\">{first.run_id}</b>" in page
        assert "hst-ws-101" in page and "hst-ws-102" not in page and "+45 97 42 11 01" in page
        by_phone = client.get("/defects", params={"run": first.run_id, "q": "97421102"}).text
        assert "hst-ws-102" in by_phone and "hst-ws-101" not in by_phone
        key = DefectQueue(first.ledger.engine).list(run_id=first.run_id, search="hst-ws-102")[0]["key"]
        detail = client.get(f"/defects/{key}").text
        assert "Karen Madsen" in detail and "+45 97 42 11 02" in detail and first.run_id in detail
        assert "Why:" in detail and "None" not in re.sub(r"<[^>]+>", "", detail)

        # Bulk: assign two defects at once; an unknown assignee is refused.
        csrf = CSRF.search(page).group(1)
        keys = [d["key"] for d in DefectQueue(first.ledger.engine).list(run_id=first.run_id)][:2]
        r = client.post("/defects/bulk", data={"csrf_token": csrf, "action": "assign", "value": "support",
                                               "key": keys, "run": first.run_id}, follow_redirects=False)
        assert r.status_code == 303
        queue = DefectQueue(first.ledger.engine)
        assert [queue.get(k)["assignee"] for k in keys] == ["support", "support"]
        assert queue.get(keys[0])["responded_at"] is not None  # the SLA's first response
        bad = client.post("/defects/bulk", data={"csrf_token": csrf, "action": "assign", "value": "mallory",
                                                 "key": keys, "run": first.run_id})
        assert bad.status_code == 409
        mine = client.get("/defects", params={"run": first.run_id, "mine": "1"}).text
        assert all(k in mine for k in keys) and mine.count('name="key"') == 2


def test_priority_from_risk_and_sla(tmp_path):
    support = {"sla": {1: {"response": "15m", "resolve": "4h"}, 2: {"response": "1h", "resolve": "24h"},
                       3: {"response": "4h", "resolve": "72h"}, 4: {"response": "24h", "resolve": "240h"}}}
    session = rehearse(demo_inventory(tmp_path, support=support), f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        queue = DefectQueue(session.ledger.engine)
        crit = {loc.id: loc.criticality for loc in session.inventory.locations}
        critical = next(lid for lid, c in crit.items() if c == "critical")
        host = next(d.hostname for loc in session.inventory.locations if loc.id == critical for d in loc.devices
                    if d.hostname not in ("lys-ws-101",))
        now = time.time()
        one = Observation("rollout:manual:1", "rollout", host, "ws.image", "PXE boot did not start",
                          observed_at=now, location_id=critical)
        queue.apply([one], session.inventory, run_id=session.run_id, now=now)
        d = next(x for x in queue.list(run_id=session.run_id, search=host))
        # One unusable device at a 24/7 critical site is P1 on its own, and the reason says why.
        assert d["affected"] == 1 and d["priority"] == 1, d["priority_reason"]
        assert "critical site x10" in d["priority_reason"] and "device unusable x2" in d["priority_reason"]
        assert d["priority_reason"].endswith(PRIORITY_NAMES[1])
        assert not {"normal", "high", "critical"} & {w.lower() for n in PRIORITY_NAMES.values() for w in n.split()}
        assert d["response_due"] == pytest.approx(now + 900) and d["resolve_due"] == pytest.approx(now + 4 * 3600)
        # Five hours later it is past its resolve target: shown as breached, found by --breached, sortable.
        later = now + 5 * 3600
        breached = queue.list(run_id=session.run_id, breached=True, now=later)
        assert d["key"] in {x["key"] for x in breached}
        by_due = queue.list(run_id=session.run_id, sort="resolve_due")
        assert by_due[0]["key"] == d["key"]
        dues = [x["resolve_due"] for x in by_due]
        assert dues == sorted(dues)
        by_age = queue.list(run_id=session.run_id, sort="age")
        assert [x["first_seen"] for x in by_age] == sorted(x["first_seen"] for x in by_age)
        # The history reads cleanly: named levels, no "None", no doubled words.
        queue.apply([], session.inventory, run_id=session.run_id, now=now + 3 * 86400)
        for h in queue.history(d["key"]):
            assert "None" not in h["text"] and not re.search(r"\b(\w+) \1\b", h["text"]), h
    finally:
        session.close()


def test_merge_and_link_duplicates(tmp_path):
    session = rehearse(demo_inventory(tmp_path), f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        queue = DefectQueue(session.ledger.engine)
        obs = [Observation("user:m1", "user", "hst-ws-104", "user.login", "cannot sign in", observed_at=1000.0,
                           location_id="HST-001", category="login", reporter="hje"),
               Observation("user:m2", "user", "hst-ws-105", "user.login", "login fails", observed_at=1001.0,
                           location_id="HST-001", category="login", reporter="rmo")]
        queue.apply(obs, session.inventory, run_id=session.run_id)
        a, b = (next(x for x in queue.list(run_id=session.run_id, search=h)) for h in ("hst-ws-104", "hst-ws-105"))
        queue.link(a["key"], b["key"], "support")
        assert queue.history(a["key"])[-1]["text"] == f"related to {b['key']}"
        merged = queue.merge(b["key"], a["key"], "support")
        assert merged["occurrences"] == 2
        dup = queue.get(b["key"])
        assert dup["state"] == "closed" and dup["duplicate_of"] == a["key"]
        with pytest.raises(DefectError, match="itself a duplicate"):
            queue.merge(a["key"], b["key"], "support")
    finally:
        session.close()


def test_self_service_report_without_sign_in(tmp_path):
    inv = demo_inventory(tmp_path, support={"report_rate_limit": 3})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = rehearse(inv, url)
    try:
        collect(session=session, with_probe=False)
        app = create_app(inv, url, secret="test-secret")
        with TestClient(app, base_url="http://testserver") as client:
            r = client.get("/r/hst-ws-104", follow_redirects=False)  # the sticker's short URL: no sign-in
            assert r.status_code == 200
            form = r.text
            assert 'value="hst-ws-104"' in form and "Holstebro Rådhus" in form
            assert "hst-ws-101" not in form and not DEFECT_KEY.search(form)  # nothing of other reports
            token = CSRF.search(form).group(1)
            data = {"device": "hst-ws-104", "category": "printer", "text": "the printer is gone",
                    "name": "Hanne Jensen", "contact": "+45 97 42 11 04", "request_key": "selfservice-1",
                    "csrf_token": token}
            assert client.post("/r", data={**data, "csrf_token": "forged"}).status_code == 403
            sent = client.post("/r", data=data)
            assert sent.status_code == 200
            ref = re.search(r"reference number is <b class=\"mono\">(R-[0-9A-F]{8})</b>", sent.text)
            assert ref, sent.text
            queue = DefectQueue(session.ledger.engine)
            d = queue.list(run_id=session.run_id, search="+45 97 42 11 04")  # in the queue at once, by contact
            assert len(d) == 1 and d[0]["target"] == "hst-ws-104" and d[0]["reporter"] == "Hanne Jensen"
            assert d[0]["reporter_contact"] == "+45 97 42 11 04" and d[0]["run_id"] == session.run_id
            assert [x["key"] for x in queue.list(run_id=session.run_id, search=ref.group(1))] == [d[0]["key"]]
            # The same complaint again (a retry, or a colleague): the same defect, counted.
            client.post("/r", data={**data, "request_key": "selfservice-2", "text": "still no printer"})
            assert len(queue.list(run_id=session.run_id, search="hst-ws-104")) == 1
            assert queue.get(d[0]["key"])["occurrences"] == 2
            # Rate-limited per device: the fourth in an hour is refused, nothing filed.
            client.post("/r", data={**data, "request_key": "selfservice-3"})
            limited = client.post("/r", data={**data, "request_key": "selfservice-4"})
            assert limited.status_code == 429 and queue.get(d[0]["key"])["occurrences"] == 3
            unknown = client.post("/r", data={**data, "device": "nope-1", "request_key": "x" * 12})
            assert unknown.status_code == 422
    finally:
        session.close()


def _report(client: TestClient, device: str, key: str):
    token = CSRF.search(client.get(f"/r/{device}").text).group(1)
    return client.post("/r", data={"device": device, "category": "printer", "text": f"no printer ({key})",
                                   "name": "Hanne Jensen", "contact": "", "request_key": key, "csrf_token": token})


def test_the_self_service_rate_limit_is_shared_by_every_app_process(tmp_path):
    """Two field-app instances on one database (two processes behind a proxy) count against one limit,
    per device and per source address; a refusal says when to try again and counts for nothing."""
    inv = demo_inventory(tmp_path, support={"report_rate_limit": 2})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = rehearse(inv, url)
    zone = session.inventory.rollout.window.zone
    try:
        first, second = create_app(inv, url, secret="test-secret"), create_app(inv, url, secret="test-secret")
        with (TestClient(first, client=("10.0.0.1", 40000)) as one,
              TestClient(second, client=("10.0.0.2", 40000)) as two):
            started = time.time()
            assert _report(one, "hst-ws-104", "shared-0001").status_code == 200
            assert _report(two, "hst-ws-104", "shared-0002").status_code == 200
            refused = _report(one, "hst-ws-104", "shared-0003")  # the device's limit, reached through both
            assert refused.status_code == 429 and not REFERENCE.search(refused.text)  # no report made
            hhmm = re.search(r"Please try again at (\d\d:\d\d)", refused.text).group(1)
            # The first report's place frees up an hour after it was admitted.
            assert hhmm in {datetime.fromtimestamp(at + 3600, zone).strftime("%H:%M")
                            for at in (started, time.time())}
            assert 3590 <= int(refused.headers["Retry-After"]) <= 3600
            # Per address: 10.0.0.2 has one report; its second (another device) is its last this hour.
            assert _report(two, "hst-ws-105", "shared-0004").status_code == 200
            assert _report(two, "hst-tc-201", "shared-0005").status_code == 429
            # The refusal did not count for 10.0.0.1: it still has a place, for another device.
            assert _report(one, "hst-tc-202", "shared-0006").status_code == 200
        queue = DefectQueue(session.ledger.engine)
        printers = {d["target"]: d["occurrences"] for d in queue.list(run_id=session.run_id, category="printer")}
        assert printers == {"hst-ws-104": 2, "hst-ws-105": 1, "hst-tc-202": 1}  # nothing of the refused ones
    finally:
        session.close()


def test_report_admissions_are_atomic_across_store_objects(tmp_path):
    """Two DefectQueue objects, each on its own engine, admitting concurrently: never more than the limit."""
    import threading

    from bigbang.store.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    queues = [DefectQueue(Ledger(url).engine), DefectQueue(Ledger(url).engine)]
    admitted: list[bool] = []
    start = threading.Barrier(8)

    def admit(queue: DefectQueue) -> None:
        start.wait()
        for _ in range(5):
            admitted.append(queue.admit_report(["device:hst-ws-104"], 7, now=1000.0) is None)

    threads = [threading.Thread(target=admit, args=(queues[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 7 and len(admitted) == 40
    # The answer names when a place frees up: the oldest of the last 7, an hour later.
    assert queues[0].admit_report(["device:hst-ws-104"], 7, now=2000.0) == 1000.0 + 3600
    assert queues[1].admit_report(["device:hst-ws-104"], 7, now=4600.5) is None  # the hour has passed
    assert queues[0].admit_report(["device:other"], 7, now=2000.0) is None  # another key: its own count


def test_forecast_table_chart_and_fit(tmp_path, bigbang):
    inv = demo_inventory(tmp_path, support={"on_duty": [2, 2, 1], "defects_per_person_day": 4})
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    (tmp_path / "state").mkdir()
    session = rehearse(inv, url)
    try:
        collect(session=session, with_probe=False)
        queue = DefectQueue(session.ledger.engine)
        result = forecast(session.ledger, queue, session.run_id, session.inventory, now=0.0)
        assert len(result.days) == 14 and result.failed_devices == 5 and result.scale == 1.0
        assert [d.staff for d in result.days[:4]] == [2, 2, 1, 1] and result.days[0].capacity == 8
        assert result.days[0].expected > result.days[3].expected > result.days[7].expected > 0  # decays
        assert result.days[0].known == pytest.approx(5 * 1.8 * 0.7, abs=0.1)
        assert result.days[0].short  # day 1 is more than two people handle: the rota must grow
        # Observed arrivals: twice the expected fallout in the first three days doubles what follows (shrunk).
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        from bigbang.defects.forecast import _first_day
        first = _first_day(session.inventory, session.ledger.get_run(session.run_id))
        zone = ZoneInfo(session.inventory.rollout.window.timezone)
        hosts = [d.hostname for loc in session.inventory.locations for d in loc.devices]
        base = forecast(session.ledger, queue, session.run_id, session.inventory,
                        now=datetime.combine(first + timedelta(days=3), datetime.min.time(), zone).timestamp())
        want = round(2 * sum(d.fallout for d in result.days[:3]))
        obs = [Observation(f"user:f{i}", "user", hosts[i % len(hosts)], f"user.c{i}", "broken",
                           observed_at=datetime.combine(first + timedelta(days=i % 3), datetime.min.time(),
                                                        zone).timestamp() + 3600, category=f"c{i}")
               for i in range(want)]
        queue.apply(obs, session.inventory, run_id=session.run_id)
        fitted = forecast(session.ledger, queue, session.run_id, session.inventory,
                          now=datetime.combine(first + timedelta(days=3), datetime.min.time(), zone).timestamp())
        from bigbang.defects.forecast import PRIOR_WEIGHT
        seen = sum(d.fallout for d in result.days[:3])
        assert fitted.observed_total == want and fitted.scale > 1.2  # more came in than expected: scaled up,
        assert fitted.scale == pytest.approx((want + PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT), rel=0.05)  # shrunk
        assert fitted.days[5].fallout == pytest.approx(result.days[5].fallout * fitted.scale, abs=0.1)
        assert base.scale < 1  # three quiet days: the fallout still to come is scaled down
        assert [d.observed for d in fitted.days[:3]] == [sum(1 for i in range(want) if i % 3 == k) for k in range(3)]
    finally:
        session.close()

    out = bigbang("defects", "forecast", session.run_id, "--out", tmp_path / "fc", check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"Hypercare forecast for run {session.run_id}")
    assert sum(1 for line in lines if re.match(r"\s+\d+\s+\d{4}-\d\d-\d\d\s", line)) == 14
    assert max(len(line) for line in lines if not line.startswith(("chart:", "Hypercare"))) <= 80
    png = tmp_path / "fc" / "forecast.png"
    assert f"chart: {png}" in out
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (900, 420)
        assert len(set(img.convert("RGB").getdata())) > 4  # bars and lines drawn, not a blank image
    data = json.loads(bigbang("defects", "forecast", session.run_id, "--out", tmp_path / "fc", "--json",
                              check=True).stdout)
    assert len(data["days"]) == 14 and data["run_id"] == session.run_id
