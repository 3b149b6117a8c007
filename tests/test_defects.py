"""The defect flow on the embedded queue: collection, dedup, grouping, priority, probe, reopen, import, CLI."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from bigbang.defects.collect import collect
from bigbang.defects.report import render_daily_report
from bigbang.defects.sources import parse_reports_csv
from bigbang.store.defects import DefectError, DefectQueue
from bigbang.defects.triage import Observation, defect_key, signature
from bigbang.errors import LiveModeUnavailable
from tests.test_defects_helpers import DOMAIN, PXE, demo_inventory, rehearse
from tests.peers.postgres import postgres  # noqa: F401


@pytest.fixture
def rehearsed(tmp_path):
    inv = demo_inventory(tmp_path)
    session = rehearse(inv, f"sqlite:///{tmp_path / 'ledger.db'}")
    yield session
    session.close()


def by_target(queue: DefectQueue, **filters):
    out = {}
    for d in queue.list(limit=None, **filters):
        out.setdefault(d["target"], []).append(d)
    return out


def test_ledger_failures_become_defects_once_and_recurring_ones_one_problem(rehearsed):
    first = collect(session=rehearsed, with_probe=False)
    queue = DefectQueue(rehearsed.ledger.engine)
    defects = by_target(queue, state="all")
    # Every failed device is filed, and nothing else (failure_rate 0: only the injected ones failed).
    assert set(defects) == {"hst-ws-101", "lys-ws-101", "nor-ws-101", "hst-ws-102", "hst-tc-203"}
    assert first.filed["created"] == 5 and first.errors == []
    pxe = [defects[h][0] for h in ("hst-ws-101", "lys-ws-101", "nor-ws-101")]
    assert {d["check_name"] for d in pxe} == {"ws.image"} and all(PXE in d["message"] for d in pxe)
    # Same model, same failure, three locations: one problem linking the three defects.
    problems = queue.problems()
    assert len(problems) == 1
    assert problems[0]["defects"] == 3 and problems[0]["locations"] == 3
    assert {d["problem_key"] for d in pxe} == {problems[0]["key"]}
    assert all(d["affected"] == 3 for d in pxe)
    assert defects["hst-ws-102"][0]["problem_key"] is None

    # The next collection sees the same ledger rows: counted once, never filed again.
    again = collect(session=rehearsed, with_probe=False)
    assert again.filed["created"] == 0 and again.filed["observations"] == 0
    assert again.filed["duplicates"] == again.gathered["rollout"] > 0
    assert len(queue.list(state="all", limit=None)) == 5
    assert all(d["occurrences"] == 1 for d in queue.list(state="all", limit=None))


def test_priority_follows_the_inventory_rule(tmp_path):
    rule = {"priority": {"criticality": {"normal": 1, "high": 10, "critical": 50}, "levels": [40, 15, 5],
                         "kinds": {"unusable": 1, "degraded": 1}}}
    session = rehearse(demo_inventory(tmp_path, support=rule), f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        collect(session=session, with_probe=False)
        queue = DefectQueue(session.ledger.engine)
        got = {d["target"]: d for d in queue.list(state="all", limit=None)}
    finally:
        session.close()
    inv = session.inventory
    crit = {loc.id: loc.criticality for loc in inv.locations}
    weights = rule["priority"]["criticality"]
    for d in got.values():
        # criticality x affected x age (age ~0 right after the rollout: factor 1)
        expected = weights[crit[d["location_id"]]] * d["affected"]
        assert d["score"] == pytest.approx(expected, rel=0.01), d
    # HST-001 is 'high' (10 x 3 devices with the same problem = 30 -> P2; 10 x 1 -> P3);
    # the critical care home's Lenovo: 50 x 3 -> P1.
    assert got["hst-ws-101"]["priority"] == 2
    assert got["hst-ws-102"]["priority"] == 3
    assert crit[got["lys-ws-101"]["location_id"]] == "critical" and got["lys-ws-101"]["priority"] == 1
    assert got["nor-ws-101"]["priority"] == 4  # a normal school: 1 x 3 = 3, below the P3 threshold of 5

    # Age counts: two days later (age_step 1 day) the factor is 3, and the school's problem rises to P3.
    queue = DefectQueue(session.ledger.engine)
    later = max(d["first_seen"] for d in got.values()) + 2 * 86400
    queue.apply([], session.inventory, now=later, run_id=session.run_id)
    aged = queue.get(got["nor-ws-101"]["key"])
    assert aged["score"] == pytest.approx(9, rel=0.01) and aged["priority"] == 3
    assert [h["action"] for h in queue.history(aged["key"])][-1] == "priority"


def test_probe_resolves_only_on_evidence_and_a_new_failure_reopens(rehearsed):
    queue = DefectQueue(rehearsed.ledger.engine)
    first = collect(session=rehearsed)  # probe round 1: hst-ws-102 still fails (attempt 101)
    assert first.probed >= 5 and first.errors == [] and first.filed["created"] == 5
    d = by_target(queue, state="all")["hst-ws-102"][0]
    assert d["state"] == "new" and d["occurrences"] == 2  # the rollout's failure + the probe's
    assert DOMAIN in d["message"]
    # The image failures never succeeded: the simulated devices are still on their old image, the probe
    # says so, and the probe's failure counts on the same defect (no second defect per device).
    assert by_target(queue, state="resolved") == {}
    pxe = by_target(queue, state="all")["hst-ws-101"]
    assert len(pxe) == 1 and pxe[0]["state"] == "new" and pxe[0]["occurrences"] == 2
    probes = queue.observations(target="hst-ws-101", source="probe")
    assert probes and probes[0]["failing"] == 1 and "ws.image never succeeded" in probes[0]["message"]
    tc = by_target(queue, state="all")["hst-tc-203"][0]
    assert tc["state"] == "new"  # its firmware update failed: no passing probe resolves it

    second = collect(session=rehearsed)  # round 2: attempt 102 passes, and ws.image had succeeded
    assert second.filed["resolved"] == 1
    d = queue.get(d["key"])
    assert d["state"] == "resolved" and d["resolved_at"] is not None
    assert [o["failing"] for o in queue.observations(target="hst-ws-102", source="probe")] == [0, 1]
    notes = [h["text"] for h in queue.history(d["key"]) if h["action"] == "resolved"]
    assert notes and notes[0].startswith("probe ws.verify passed") and "succeeded since" in notes[0]
    assert {x["target"] for x in queue.list(state="open", limit=None)} == {
        "hst-ws-101", "lys-ws-101", "nor-ws-101", "hst-tc-203"}

    # It fails again later (e.g. a user's report of the same check, or the next probe): reopened, same key.
    later = Observation("probe:manual:hst-ws-102", "probe", "hst-ws-102", "ws.verify", DOMAIN,
                        observed_at=d["resolved_at"] + 60, location_id="HST-001")
    summary = queue.apply([later], rehearsed.inventory, run_id=rehearsed.run_id)
    assert summary.reopened == 1 and summary.created == 0
    d = queue.get(d["key"])
    assert d["state"] == "new" and d["reopened"] == 1 and d["occurrences"] == 3
    assert [h["action"] for h in queue.history(d["key"])][-1] == "reopened"
    # The same observation again changes nothing.
    assert queue.apply([later], rehearsed.inventory, run_id=rehearsed.run_id).duplicates == 1


def test_support_staff_workflow_and_refused_transitions(rehearsed):
    collect(session=rehearsed, with_probe=False)
    queue = DefectQueue(rehearsed.ledger.engine)
    key = by_target(queue)["hst-tc-203"][0]["key"]
    assert queue.assign(key, "sune", "support")["state"] == "triaged"
    queue.set_state(key, "in_progress", "sune")
    queue.comment(key, "new flash module ordered", "sune")
    assert queue.resolve(key, "module replaced", "sune")["state"] == "resolved"
    queue.set_state(key, "closed", "ops")
    with pytest.raises(DefectError, match="closed; it can move to in_progress"):
        queue.set_state(key, "triaged", "ops")
    with pytest.raises(DefectError, match="no defect D-nope"):
        queue.assign("D-nope", "x", "y")
    actions = [(h["action"], h["to_state"]) for h in queue.history(key)]
    assert actions == [("created", "new"), ("assigned", "triaged"), ("state", "in_progress"),
                       ("comment", "in_progress"), ("resolved", "resolved"), ("state", "closed")]
    # A closed defect whose failure is only the old ledger row stays closed on the next collection.
    collect(session=rehearsed, with_probe=False)
    assert queue.get(key)["state"] == "closed"


def test_reports_csv_bad_rows_are_reported_by_line_and_good_rows_go_in(rehearsed):
    inv = rehearsed.inventory
    rows = [
        ["reported_at", "device", "location", "category", "text", "reporter"],
        ["2026-11-30T08:15", "hst-ws-103", "", "printer", "cannot print to the Borgerservice printer", "pso"],
        ["2026-11-30T08:20", "hst-ws-999", "", "printer", "unknown device", "x"],
        ["2026-11-30T08:21", "", "HST-999", "network", "unknown location", "x"],
        ["2026-11-30T08:22", "hst-ws-104", "HST-027", "login", "wrong location for the device", "x"],
        ["yesterday", "hst-ws-104", "", "login", "bad date", "x"],
        ["2026-11-30T08:23", "hst-ws-104", "", "login", "x" * 5000, "x"],
        ["2026-11-30T08:24", "hst-ws-104", "", "login"],  # too few fields
        ["2026-11-30T08:25", "hst-ws-105", "", "login", "line one\nline two of a quoted text", "rmo"],
        ["2026-11-30T08:26", "", "HST-014", "network", "", "bho"],
        ["2026-11-30T08:27", "", "HST-014", "network", "wifi drops in wing B", "bho"],
    ]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    result = parse_reports_csv(buf.getvalue(), inv)
    assert [r["device"] or r["location_id"] for r in result.rows] == ["hst-ws-103", "hst-ws-105", "HST-014"]
    errors = "\n".join(result.errors)
    assert len(result.errors) == 7
    for expected in ("line 3: unknown device 'hst-ws-999'", "line 4: unknown location 'HST-999'",
                     "line 5: device 'hst-ws-104' is at HST-001, not HST-027", "line 6: reported_at 'yesterday'",
                     "line 7: text is 5000 characters long (at most 4000)", "line 8: 4 fields, the header has 6",
                     "line 11: text is empty"):
        assert expected in errors, errors
    queue = DefectQueue(rehearsed.ledger.engine)
    assert queue.add_reports(result.rows) == 3
    assert queue.add_reports(parse_reports_csv(buf.getvalue(), inv).rows) == 0  # the same file again: nothing new
    out = collect(session=rehearsed, with_probe=False)
    assert out.gathered["user"] == 3
    printer = by_target(queue)["hst-ws-103"][0]
    assert printer["category"] == "printer" and printer["source"] == "user"
    assert collect(session=rehearsed, with_probe=False).gathered.get("user", 0) == 0

    # A field over the csv module's limit and a quote left open: reported where the row starts.
    content = ("device,text\nhst-ws-101,ok\nhst-ws-102," + "x" * 200_000 + "\nhst-ws-103,ok\n"
               '"hst-ws-104,open quote\nhst-ws-105,swallowed\n')
    broken = parse_reports_csv(content, inv)
    assert [r["device"] for r in broken.rows] == ["hst-ws-101", "hst-ws-103"]
    assert broken.errors == ["line 3: malformed CSV: field larger than field limit (131072)",
                             "line 5: 1 fields, the header has 2 (the row runs to line 6: a quote left open?)"]

    bad = parse_reports_csv("device,colour\nx,y\n", inv)
    assert bad.rows == [] and bad.errors == ["line 1: unknown columns colour (columns: reported_at, device, "
                                             "location, category, text, reporter, report_id)"]
    assert parse_reports_csv("", inv).errors[0].startswith("line 1: the file is empty")


def test_same_user_complaint_on_one_device_is_one_defect_counted(rehearsed):
    queue = DefectQueue(rehearsed.ledger.engine)
    obs = [Observation(f"user:r{i}", "user", "hst-ws-103", "user.printer", f"printer broken ({i})",
                       observed_at=1000.0 + i, location_id="HST-001", category="printer", reporter=f"u{i}")
           for i in range(4)]
    summary = queue.apply(obs, rehearsed.inventory, run_id=rehearsed.run_id)
    assert summary.created == 1
    d = queue.get(defect_key("hst-ws-103", signature(obs[0]), rehearsed.run_id))
    assert d["occurrences"] == 4 and d["message"] == "printer broken (3)"


def test_queue_on_postgresql(tmp_path, postgres):  # noqa: F811
    url = postgres.create_database()
    session = rehearse(demo_inventory(tmp_path), url)
    try:
        first = collect(session=session)
        second = collect(session=session)
        queue = DefectQueue(session.ledger.engine)
        assert queue.dialect == "postgresql"
        assert first.filed["created"] == 5 and second.filed["created"] == 0
        key = by_target(queue, state="all")["hst-tc-203"][0]["key"]
        assert queue.get(key)["state"] == "new"  # its firmware update failed: the probe cannot resolve it
        queue.set_state(key, "in_progress", "sune", "the user says the firmware is still old")
        queue.assign(key, "sune", "support")
        queue.resolve(key, "fixed", "sune")
        assert queue.get(key)["state"] == "resolved" and queue.get(key)["assignee"] == "sune"
        assert len(queue.problems()) == 1  # the image failures stay open: one problem
        assert queue.collection_count() == 2
        first, second = concurrent_apply(queue, session.inventory, session.run_id)
        assert first.created + second.created == 30 and first.observations + second.observations == 300
    finally:
        session.close()


def test_daily_report_has_charts_and_markdown(rehearsed, tmp_path):
    collect(session=rehearsed, with_probe=False)
    queue = DefectQueue(rehearsed.ledger.engine)
    report = render_daily_report(queue, rehearsed.inventory, tmp_path / "reports")
    html = report.html.read_text(encoding="utf-8")
    assert html.count("<svg") == 3 and "Holstebro Rådhus" in html
    assert "5 open" in report.markdown_text
    assert "| HST-001 Holstebro Rådhus | 3 |" in report.markdown_text
    assert "| workstation | 4 |" in report.markdown_text and "| thin-client | 1 |" in report.markdown_text
    data = json.loads(report.json.read_text())
    assert data["per_day"][-1][1] == 5 and len(data["problems"]) == 1


def test_cli(bigbang, tmp_path):
    inv = demo_inventory(tmp_path)
    session = rehearse(inv, f"sqlite:///{tmp_path / 'state' / 'ledger.db'}")
    session.close()
    out = bigbang("defects", "collect", "--no-probe", "--report", "--out", tmp_path / "reports", check=True)
    assert "5 new" in out.stdout and (tmp_path / "reports" / "defects").is_dir()
    rows = json.loads(bigbang("defects", "list", "--json", "--location", "HST-001", check=True).stdout)
    assert {r["target"] for r in rows} == {"hst-ws-101", "hst-ws-102", "hst-tc-203"}
    key = next(r["key"] for r in rows if r["target"] == "hst-tc-203")
    refused = bigbang("defects", "assign", key, "sune")
    assert refused.returncode == 1 and "'sune' is not a support account" in refused.stderr
    assert "assigned to support (triaged)" in bigbang("defects", "assign", key, "support", check=True).stdout
    bigbang("defects", "resolve", key, "--note", "replaced", "--as", "sune", check=True)
    shown = json.loads(bigbang("defects", "show", key, "--json", check=True).stdout)
    assert shown["defect"]["state"] == "resolved" and shown["history"][-1]["actor"] == "sune"
    again = bigbang("defects", "resolve", key, "--note", "twice")
    assert again.returncode == 1 and "error: defect" in again.stderr and "Traceback" not in again.stderr
    missing = bigbang("defects", "show", "D-0000000000")
    assert missing.returncode == 1 and "no defect D-0000000000" in missing.stderr

    bigbang("defects", "export", "--out", tmp_path / "d.csv", check=True)
    exported = list(csv.DictReader(open(tmp_path / "d.csv", encoding="utf-8")))
    assert len(exported) == 5 and {r["state"] for r in exported} == {"new", "resolved"}
    # ISO 8601 times, the run and its rollout on every row, no "None" anywhere.
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r["first_seen"]) for r in exported)
    assert {r["run_id"] for r in exported} == {session.run_id} and exported[0]["rollout"]
    assert "None" not in (tmp_path / "d.csv").read_text(encoding="utf-8")

    (tmp_path / "r.csv").write_text("device,text,category\nhst-ws-103,no sound,audio\nnope,broken,audio\n",
                                    encoding="utf-8")
    imported = bigbang("defects", "import", tmp_path / "r.csv")
    assert imported.returncode == 1
    assert "r.csv:3: unknown device 'nope'" in imported.stderr and "1 reports valid (1 new), 1 rows refused" in imported.stdout
    out = bigbang("defects", "collect", "--no-probe", check=True)
    assert "user 1" in out.stdout
    assert bigbang("defects", "list", "--status", "bogus").returncode == 1


def test_probe_samples_healthy_devices_and_reports_unusable_connectors(tmp_path):
    session = rehearse(demo_inventory(tmp_path, support={"probe_sample_percent": 100}),
                       f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        result = collect(session=session)
        inv = session.inventory
        assert result.probed == inv.device_count + len(inv.servers) and result.errors == []

        def broken(name):
            raise LiveModeUnavailable(f"the {name} connector is not available here")

        from bigbang.defects.sources import probe
        out = probe(broken, session.plan, ["hst-ws-103", "srv-dc01"], round_no=9, collection_id=99,
                    location_of=lambda t: None)
        assert out.observations == [] and len(out.errors) == 1
        assert "'simulated' connector not possible (2 targets not probed)" in out.errors[0]
    finally:
        session.close()


def test_steps_that_never_finished_and_devices_never_done(tmp_path):
    from bigbang.store.ledger import StepRecord
    from bigbang.runner import Runner
    from bigbang.session import RunOptions, RunSession

    session = RunSession.start(demo_inventory(tmp_path), RunOptions(zero_duration=True),
                               ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        Runner(session).run_prechecks()
        ledger = session.ledger
        ledger.record_step(session.run_id, StepRecord("hst-ws-103:ws.image", "HST-001", "hst-ws-103", "ws.image",
                                                      "running", attempts=1, started_at=1000.0))
        for kind in ("ws.prestage", "ws.image", "ws.verify"):
            ledger.record_step(session.run_id, StepRecord(f"nor-ws-105:{kind}", "HST-027", "nor-ws-105", kind,
                                                          "skipped", message="location halted: 3 of 9 devices failed"))
        ledger.flush()
        # While the run is still running, a running step is not a defect yet.
        assert collect(session=session, with_probe=False).filed["created"] == 1
        ledger.set_run_status(session.run_id, "interrupted")
        collect(session=session, with_probe=False)
        got = by_target(DefectQueue(ledger.engine))
        assert set(got) == {"hst-ws-103", "nor-ws-105"}
        assert "never finished" in got["hst-ws-103"][0]["message"]
        skipped = got["nor-ws-105"]
        assert len(skipped) == 1 and skipped[0]["message"] == "not done: location halted: 3 of 9 devices failed"
    finally:
        session.close()


def concurrent_apply(queue: DefectQueue, inventory, run_id: str) -> list:
    """Two collectors filing the same 300 sightings (30 devices x the same category: 30 defects) at once."""
    from concurrent.futures import ThreadPoolExecutor

    hosts = [d.hostname for loc in inventory.locations for d in loc.devices]
    batch = [Observation(f"user:c{i}", "user", hosts[i % len(hosts)], f"user.cat{i % 10}", "broken",
                         observed_at=2000.0 + i, category=f"cat{i % 10}") for i in range(300)]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda b: queue.apply(b, inventory, run_id=run_id), [batch, list(reversed(batch))]))


def test_technicians_problems_and_two_collectors_at_once(rehearsed):
    ledger = rehearsed.ledger
    ledger.add_problem("p-1", rehearsed.run_id, "HST-014", "network", "wifi drops in wing B", "aha")
    ledger.add_problem("p-2", rehearsed.run_id, "HST-001", "hardware", "cracked screen", "mkr", device="hst-ws-104")
    collect(session=rehearsed, with_probe=False)
    queue = DefectQueue(ledger.engine)
    got = by_target(queue)
    assert got["HST-014"][0]["source"] == "field" and got["HST-014"][0]["target_kind"] == "location"
    assert got["hst-ws-104"][0]["category"] == "hardware" and "cracked screen" in got["hst-ws-104"][0]["message"]

    before = len(queue.list(state="all", limit=None))
    first, second = concurrent_apply(queue, rehearsed.inventory, rehearsed.run_id)
    assert first.created + second.created == 30 and first.observations + second.observations == 300
    assert first.duplicates + second.duplicates == 300
    assert len(queue.list(state="all", limit=None)) == before + 30
    assert sorted(d["occurrences"] for d in queue.list(category="cat3", limit=None)) == [10, 10, 10]
