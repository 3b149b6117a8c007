"""The field app end to end in a real browser (Debian's Chromium via Playwright), on phone-sized pages.

A rehearsal of the demo waits at HST-014's sign-off gate in a background thread; a technician
signs in, checks items off, notes a problem and signs off in Chromium, and the waiting location
resumes, runs its verification and shows the result on the page.
"""

from __future__ import annotations

import threading
import time

from bigbang.checklists import item_ids
from bigbang.store.field import FieldStore
from bigbang.session import RunOptions, RunSession
from bigbang.web.app import create_app
from tests.peers.browser import OUTPUT, PHONE, AppServer, chromium, gated_inventory  # noqa: F401
from tests.helpers import servers_ready

LOCATION = "HST-014"  # team-syd: aha, sni; team-nord's mkr may not see it


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
        page.wait_for_selector("text=Screen flickers after the reboot")
        problems = ledger.problems(session.run_id, LOCATION)
        assert [(p["device"], p["category"], p["reported_by"], p["source"]) for p in problems] == [
            ("lys-tc-203", "hardware", "aha", "field")]
        page.screenshot(path=str(shots / "location-checked.png"), full_page=True)

        # The location's work is done and waits at the gate; the page offers the sign-off
        _wait(lambda: ledger.location_results(session.run_id).get(LOCATION) and
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
        assert page.inner_text(f"#row-{LOCATION} .problems") == "1"
        items = len(item_ids(session.inventory.location_by_id[LOCATION]))
        assert page.inner_text(f"#row-{LOCATION} .checked") == f"3/{items}"
        assert page.locator("#board tr").count() == 1 + 3
        page.screenshot(path=str(shots / "board.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=str(shots / "board-desktop.png"), full_page=True)
        lead.close()
    session.close()
