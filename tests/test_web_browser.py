"""The field app end to end in a real browser (Debian's Chromium via Playwright), on phone-sized pages.

Also offline: ticks and a problem made without a network are queued on the phone, shown as
"not sent yet (N)" and sent once (each) when the connection returns; and a sign-off with open work
needs a reason, which reaches the audit trail and the defect queue.

A rehearsal of the demo waits at HST-014's sign-off gate in a background thread; a technician
signs in, checks items off, notes a problem and signs off in Chromium, and the waiting location
resumes, runs its verification and shows the result on the page.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from bigbang.checklists import item_ids
from bigbang.session import RunOptions, RunSession
from bigbang.store.field import FieldStore
from bigbang.web.app import create_app
from tests.helpers import servers_ready, wait_for
from tests.peers.browser import OUTPUT, PHONE, AppServer, PhoneLink, gated_inventory

LOCATION = "HST-014"  # team-syd: aha, sni; team-nord's mkr may not see it


def _sign_in(page, base: str, path: str, username: str, password: str):
    page.goto(base + path)
    assert "/login" in page.url
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_technician_signs_off_and_the_gated_location_resumes(tmp_path, chromium):  # noqa: F811
    shots = OUTPUT / "field"
    shots.mkdir(parents=True, exist_ok=True)
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"

    session = RunSession.start(inventory, RunOptions(mode="rehearsal", zero_duration=True, failure_rate=0.0),
                               ledger_url=ledger_url)
    runner = servers_ready(session)
    results = []
    worker = threading.Thread(target=lambda: results.append(runner.run_location(LOCATION)), daemon=True)
    worker.start()
    ledger = session.ledger
    signoff_step = f"{LOCATION}:loc.signoff"
    verify_step = f"{LOCATION}:loc.verify"
    work_steps = sum(1 for step in session.plan.location(LOCATION).steps() if step.kind not in ("loc.signoff",
                                                                                                 "loc.verify"))

    app = create_app(inventory, ledger_url, session.run_id, lang="en")
    with AppServer(app) as server:
        phone = chromium.new_context(**PHONE)
        page = phone.new_page()
        _sign_in(page, server.url, f"/l/{LOCATION}", "aha", "demo-aha")
        page.screenshot(path=str(shots / "location-start.png"), full_page=False)
        assert page.url.endswith(f"/l/{LOCATION}")
        assert "Plejecenter Lystoftevej" in page.content()

        # Check items off: one plain item, one serial typed in (as a scanner would)
        page.click('[id="location.arrive"] button')
        page.wait_for_selector('[id="location.arrive"] .done')
        page.fill('[id="lys-ws-101.serial"] input[name=value]', "PF4B1401")
        page.click('[id="lys-ws-101.serial"] button')
        page.wait_for_selector('[id="lys-ws-101.serial"] .done')
        page.click('[id="lys-tc-201.cabled"] button')
        page.wait_for_selector('[id="lys-tc-201.cabled"] .done')
        checks = FieldStore(ledger).checks(session.run_id, LOCATION)
        assert checks[(LOCATION, "lys-ws-101.serial")].value == "PF4B1401"
        assert {k[1] for k, c in checks.items() if c.checked} == {"location.arrive", "lys-ws-101.serial",
                                                                  "lys-tc-201.cabled"}

        # Note a problem: it must reach the ledger as a defect-to-be, with who and where
        page.select_option("#device", "lys-tc-203")
        page.select_option("#category", "hardware")
        page.fill("#text", "Screen flickers after the reboot")
        page.click("#problem-form button")
        page.wait_for_selector("text=Screen flickers after the reboot")  # shown at once, still queued
        # sent: the server's answer replaces the queued entry
        wait_for(lambda: ledger.problems(session.run_id, LOCATION), 20, "the problem in the ledger")
        problems = ledger.problems(session.run_id, LOCATION)
        assert [(p["device"], p["category"], p["reported_by"], p["source"]) for p in problems] == [
            ("lys-tc-203", "hardware", "aha", "field")]
        page.screenshot(path=str(shots / "location-checked.png"), full_page=True)

        # The location's work is done and waits at the gate; the page offers the sign-off
        wait_for(lambda: ledger.location_results(session.run_id).get(LOCATION) and
              all(r.final for r in ledger.step_results(session.run_id, scope=LOCATION).values()
                  if r.kind not in ("loc.signoff", "loc.verify")) and
              len(ledger.step_results(session.run_id, scope=LOCATION)) >= work_steps,
              60, "the location's device work")
        assert worker.is_alive(), "the location finished without waiting for its sign-off"
        assert signoff_step not in ledger.step_results(session.run_id, scope=LOCATION)
        page.goto(f"{server.url}/l/{LOCATION}")
        assert page.inner_text("#location-status") == "Waiting for sign-off"
        page.fill("#note", "Wing B done quietly")
        page.click("#signoff-form button")
        page.wait_for_selector("#signed-off")
        assert "Signed off by aha" in page.inner_text("#signed-off")

        # The gate released the waiting location: it verifies and finishes; the page shows the result
        worker.join(timeout=60)
        assert not worker.is_alive(), "the location did not resume after the sign-off"
        result = results[0]
        assert result.status in ("succeeded", "completed_with_failures")
        steps = ledger.step_results(session.run_id, scope=LOCATION)
        assert steps[signoff_step].status == "succeeded"
        assert steps[signoff_step].facts["signed_by"] == "aha"
        assert steps[verify_step].status == "succeeded"
        page.goto(f"{server.url}/l/{LOCATION}")
        verification = page.inner_text("#verification")
        assert steps[verify_step].message in verification
        page.screenshot(path=str(shots / "location-signed-off.png"), full_page=False)

        # Everything the technician changed is in the audit trail, from the browser's address
        audit = FieldStore(ledger).audit(session.run_id, LOCATION)
        assert [a["action"] for a in audit] == ["check", "check", "check", "problem", "signoff"]
        assert all(a["actor"] == "aha" and a["source"].startswith("web 127.0.0.1") for a in audit)
        phone.close()

        # A technician of another team cannot open this location (and learns nothing about it)
        other = chromium.new_context(**PHONE)
        page = other.new_page()
        _sign_in(page, server.url, "/", "mkr", "demo-mkr")
        assert "HST-001" in page.content() and LOCATION not in page.content()
        items = len(item_ids(session.inventory.location_by_id["HST-001"]))
        assert f"0 of {items} checked" in page.inner_text("#loc-HST-001")
        response = page.goto(f"{server.url}/l/{LOCATION}")
        assert response.status == 404
        assert "Plejecenter" not in page.content() and "Traceback" not in page.content()
        page.screenshot(path=str(shots / "other-team-404.png"))
        other.close()

        # The ops lead's board shows every location, the sign-off and the open problem; it refreshes itself
        lead = chromium.new_context(**PHONE)
        page = lead.new_page()
        _sign_in(page, server.url, "/", "ops", "demo-ops")
        assert page.url.endswith("/board")
        assert page.locator('meta[http-equiv="refresh"]').count() == 1
        row = page.inner_text(f"#row-{LOCATION}")
        assert "aha" in row  # who signed off
        # the problem noted, and the sign-off with open work (its reason goes to the defect queue)
        assert page.inner_text(f"#row-{LOCATION} .problems") == "2"
        items = len(item_ids(session.inventory.location_by_id[LOCATION]))
        assert page.inner_text(f"#row-{LOCATION} .checked") == f"3/{items}"
        assert page.locator("#board tr").count() == 1 + 3
        page.screenshot(path=str(shots / "board.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=str(shots / "board-desktop.png"), full_page=True)
        lead.close()
    session.close()


# ---------------------------------------------------------------- offline, and a sign-off that says what it signs

SHOTS = Path(__file__).resolve().parent / "screenshots"


def _wait_until_offline(page, timeout: float = 10.0) -> None:
    """Wait until the page itself sees no network: a request from it fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate("fetch('/healthz', {cache: 'no-store'}).then(() => 'online', () => 'offline')") == "offline":
            return
        time.sleep(0.05)
    raise AssertionError("the browser still reaches the server with the link cut")


def test_offline_ticks_and_problem_are_queued_and_sent_once(tmp_path, chromium):  # noqa: F811
    SHOTS.mkdir(exist_ok=True)
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(inventory, RunOptions(mode="rehearsal", zero_duration=True, failure_rate=0.0),
                               ledger_url=ledger_url)
    store = FieldStore(session.ledger)
    app = create_app(inventory, ledger_url, session.run_id, lang="en")
    with AppServer(app) as server, PhoneLink(server.port) as link:
        context = chromium.new_context(**PHONE)
        page = context.new_page()
        _sign_in(page, link.url, f"/l/{LOCATION}", "aha", "demo-aha")
        assert page.url.endswith(f"/l/{LOCATION}")
        # The service worker takes the page into the phone's cache
        page.wait_for_function("navigator.serviceWorker && navigator.serviceWorker.ready.then(() => true)")
        page.wait_for_function(f"caches.open('bigbang-pages-v1').then(c => c.match(location.origin + "
                               f"'/l/{LOCATION}')).then(r => !!r)")

        # Online, a tap changes one item without reloading the page
        page.evaluate("window.__marker = 1")
        page.click('[id="location.arrive"] button')
        page.wait_for_selector('[id="location.arrive"] .done')
        assert page.evaluate("window.__marker") == 1, "the page reloaded"
        assert ("location.arrive" in {k[1] for k, c in store.checks(session.run_id, LOCATION).items() if c.checked})

        # The phone loses its network: the browser knows (navigator.onLine) and no byte reaches the server
        link.cut()
        context.set_offline(True)
        _wait_until_offline(page)
        page.click('[id="lys-tc-201.cabled"] button')
        page.fill('[id="lys-ws-101.serial"] input[name=value]', "PF4B1401")
        page.click('[id="lys-ws-101.serial"] button')
        page.click('[id="lys-ws-102.cabled"] button')
        page.select_option("#device", "lys-tc-203")
        page.select_option("#category", "hardware")
        page.fill("#text", "Screen flickers after the reboot")
        page.click("#problem-form button")
        assert page.inner_text("#queue") == "Not sent yet (4)"
        assert page.locator(".queued").count() == 4
        assert page.evaluate("window.__marker") == 1
        # A reload without a network comes from the phone's cache and still shows what is queued
        page.reload()
        page.wait_for_selector("#queue:not([hidden])")
        assert page.inner_text("#queue") == "Not sent yet (4)"
        assert "Plejecenter Lystoftevej" in page.content()
        page.screenshot(path=str(SHOTS / "offline-queued.png"), full_page=False)
        time.sleep(1.0)
        checked = {k[1] for k, c in store.checks(session.run_id, LOCATION).items() if c.checked}
        assert checked == {"location.arrive"}, "nothing can arrive while offline"
        assert session.ledger.problems(session.run_id, LOCATION) == []

        link.restore()
        context.set_offline(False)
        page.wait_for_selector("#queue[hidden]", state="attached", timeout=20000)
        page.wait_for_selector('[id="lys-ws-101.serial"] .done')
        page.screenshot(path=str(SHOTS / "offline-sent.png"), full_page=False)
        checks = store.checks(session.run_id, LOCATION)
        ticked = {k[1] for k, c in checks.items() if c.checked}
        assert ticked == {"location.arrive", "lys-tc-201.cabled", "lys-ws-101.serial", "lys-ws-102.cabled"}
        assert checks[(LOCATION, "lys-ws-101.serial")].value == "PF4B1401"
        problems = session.ledger.problems(session.run_id, LOCATION)
        assert [(p["device"], p["category"], p["text"]) for p in problems] == [
            ("lys-tc-203", "hardware", "Screen flickers after the reboot")]
        audit = store.audit(session.run_id, LOCATION)
        assert sorted(a["action"] for a in audit) == ["check"] * 4 + ["problem"]

        # Sending again (a flaky link resends) changes nothing: the server knows the request keys
        page.evaluate(f"fetch('/l/{LOCATION}', {{cache: 'no-store'}})")
        page.reload()
        page.wait_for_load_state()
        time.sleep(0.5)
        assert len(store.audit(session.run_id, LOCATION)) == 5
        assert len(session.ledger.problems(session.run_id, LOCATION)) == 1
        assert page.locator(".problem").count() == 1
        context.close()
    session.close()


def test_signoff_with_open_items_requires_a_reason_that_reaches_the_audit_trail(tmp_path, chromium):  # noqa: F811
    SHOTS.mkdir(exist_ok=True)
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(inventory, RunOptions(mode="rehearsal", zero_duration=True, failure_rate=0.0),
                               ledger_url=ledger_url)
    runner = servers_ready(session)
    worker = threading.Thread(target=lambda: runner.run_location(LOCATION), daemon=True)
    worker.start()
    ledger = session.ledger
    work = [s.id for s in session.plan.location(LOCATION).steps() if s.kind not in ("loc.signoff", "loc.verify")]
    wait_for(lambda: all((r := ledger.step_results(session.run_id, step_ids=work).get(s)) and r.final for s in work),
          60, "the location's device work")
    store = FieldStore(ledger)
    app = create_app(inventory, ledger_url, session.run_id, lang="en")
    with AppServer(app) as server:
        context = chromium.new_context(**PHONE)
        page = context.new_page()
        _sign_in(page, server.url, f"/l/{LOCATION}", "aha", "demo-aha")
        page.click('[id="location.arrive"] button')
        page.wait_for_selector('[id="location.arrive"] .done')
        page.reload()
        summary = page.inner_text("#signoff-summary")
        total = len(session.plan.location(LOCATION).devices)
        assert total > 1
        items = sum(1 for _ in store.checks(session.run_id, LOCATION))
        assert items == 1
        assert "items not ticked, 0 devices failed" in summary, summary
        # The reason is required: the browser refuses the empty form, and so does the server
        assert page.get_attribute("#note", "required") is not None
        page.click("#signoff-form button")
        assert page.evaluate("document.querySelector('#note').validity.valueMissing")
        assert ledger.signoff(session.run_id, LOCATION) is None
        token = page.get_attribute("#signoff-form input[name=csrf_token]", "value")
        response = page.request.post(f"{server.url}/l/{LOCATION}/signoff",
                                     form={"csrf_token": token, "request_key": "emptyreason1", "note": ""})
        assert response.status == 422
        assert ledger.signoff(session.run_id, LOCATION) is None
        page.screenshot(path=str(SHOTS / "signoff-open-work.png"), full_page=False)

        page.fill("#note", "Room 2 locked; caretaker has the key on Monday")
        page.click("#signoff-form button")
        page.wait_for_selector("#signed-off")
        signoff = ledger.signoff(session.run_id, LOCATION)
        assert signoff["note"] == "Room 2 locked; caretaker has the key on Monday"
        audit = [a for a in store.audit(session.run_id, LOCATION) if a["action"] == "signoff"]
        assert len(audit) == 1
        assert audit[0]["detail"]["reason"] == "Room 2 locked; caretaker has the key on Monday"
        assert audit[0]["detail"]["open_items"] == int(summary.split()[0])
        assert audit[0]["detail"]["failed_devices"] == 0
        queue = [p for p in ledger.problems(session.run_id, LOCATION) if p["source"] == "signoff"]
        assert len(queue) == 1 and "Room 2 locked" in queue[0]["text"]
        context.close()
    worker.join(timeout=60)
    session.close()


# ---------------------------------------------------------------- the ops board at 150 locations

def test_board_at_150_locations_desktop_and_phone(tmp_path, chromium):  # noqa: F811
    """Holstebro (150 locations) with its schedule, part-way through a rehearsal: totals, filters, sorting,
    the plan-vs-actual timeline; screenshots under tests/screenshots/ for people to look at."""
    from bigbang.cli import main
    from bigbang.store.field import Actor

    SHOTS.mkdir(exist_ok=True)
    inventory = tmp_path / "holstebro"
    assert main(["inventory", "generate", "--preset", "holstebro", "--out", str(inventory)]) == 0
    (inventory / "zz-staff.yaml").write_text(  # the demo's ops lead (password demo-ops)
        "rollout:\n  staff:\n    - id: ops\n      name: Lone Ops-Lead\n      role: ops_lead\n      password_hash: "
        "scrypt$16384$8$5$J_cGtB9lOcQiiBOEJpJ_xg$3mJQvqeYbEFvwNPsNMgdRHDG7dADN_Rlni4zSp_0Abc\n")
    assert main(["schedule", str(inventory), "--time-limit", "3", "--out", str(tmp_path / "charts")]) == 0
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(inventory, RunOptions(mode="rehearsal", failure_rate=0.02, seed=3),
                               ledger_url=ledger_url)
    assert session.ledger.run_schedule(session.run_id) is not None, "the run follows the stored schedule"
    runner = servers_ready(session)
    done = [loc.id for loc in session.plan.locations[::3]]  # a third of the weekend has happened
    for lid in done:
        runner.run_location(lid)
    session.ledger.flush()
    FieldStore(session.ledger).add_problem(session.run_id, done[0], "network", "Switch in room 3 dead",
                                           Actor("ops", "ops_lead", "test"), "boardproblem1")
    app = create_app(inventory, ledger_url, session.run_id, lang="en")
    with AppServer(app) as server:
        lead = chromium.new_context(viewport={"width": 1920, "height": 1080})
        page = lead.new_page()
        _sign_in(page, server.url, "/board", "ops", "demo-ops")
        assert page.url.endswith("/board")
        assert page.locator("#board tr").count() == 1 + 150
        totals = page.inner_text("#totals")
        assert "150" in totals
        assert sum(int(n) for n in page.locator("#totals a[id^=total-] b").all_inner_texts()) == 150
        # The timeline: one row per crew, planned and actual bars, a now-line
        assert page.locator("#timeline rect.plan").count() == 150
        assert page.locator("#timeline rect.ok, #timeline rect.slip, #timeline rect.bad").count() == len(done)
        assert page.locator("#now-line").count() == 1
        # Full width: the table is not squeezed into a column
        assert page.evaluate("document.querySelector('main').getBoundingClientRect().width") > 1800
        # Planned times are local times on the simulated weekend, not "Tue 07:49–Tue 07:49"
        planned = page.inner_text(f"#row-{done[0]} .planned")
        assert re.fullmatch(r"(Fri|Sat|Sun|Mon) \d\d:\d\d–\d\d:\d\d", planned), planned
        page.screenshot(path=str(SHOTS / "board-150-desktop.png"), full_page=False)
        page.screenshot(path=str(SHOTS / "board-150-desktop-full.png"), full_page=True)

        # Filters: problems only; a team; search; sort by a column
        page.check("#f-problems")
        page.click("#filters button")
        assert f"row-{done[0]}" in page.inner_html("#board")
        assert page.locator("#board tr").count() - 1 < 150
        page.goto(f"{server.url}/board?team=team-03")
        teams = page.locator("#board tr td:nth-child(9)").all_inner_texts()
        assert teams and set(teams) == {"team-03"}
        page.goto(f"{server.url}/board?q={done[1]}")
        assert page.locator("#board tr").count() == 2
        page.goto(f"{server.url}/board?sort=problems&desc=1")
        assert page.locator("#board tr").nth(1).get_attribute("id") == f"row-{done[0]}"
        page.goto(f"{server.url}/board?sort=id")
        ids = [r.replace("row-", "") for r in page.locator("#board tr[id]").evaluate_all("rs => rs.map(r => r.id)")]
        assert ids == sorted(ids)
        lead.close()

        phone = chromium.new_context(**PHONE)
        page = phone.new_page()
        _sign_in(page, server.url, "/board", "ops", "demo-ops")
        page.screenshot(path=str(SHOTS / "board-150-phone.png"), full_page=False)
        # On a phone the page itself does not scroll sideways; the chart and the table scroll in their boxes
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
        phone.close()
    session.close()

