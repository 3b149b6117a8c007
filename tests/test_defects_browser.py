"""The support pages in a real browser (Debian's Chromium via Playwright), and the end users' form on a phone.

A rehearsal of the demo with known failures is collected into the queue. A support account signs in and
lands on the queue, finds a defect by hostname, by the user's name and by phone, opens it (user, location,
phone, why its priority, the SLA timer) and assigns two defects at once. An end user opens the desk
sticker's short URL on a phone without signing in, reports a problem and gets a reference number; the
report is in the queue at once. Screenshots under tests/screenshots/defects/ for people to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

from bigbang.defects.collect import collect
from bigbang.store.defects import DefectQueue
from bigbang.web.app import create_app
from tests.peers.browser import PHONE, AppServer
from tests.test_defects_helpers import demo_inventory, rehearse

SHOTS = Path(__file__).resolve().parent / "screenshots" / "defects"
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "locale": "en-GB"}


def _search(page, query: str) -> set[str]:
    """Search the queue from its search box; the keys of the rows shown."""
    page.fill("#f-q", query)
    page.click("#filters button")
    page.wait_for_load_state()
    return {row.get_attribute("id").removeprefix("row-") for row in page.query_selector_all("#defects tr[id^=row-]")}


def test_support_staff_work_the_queue_and_an_end_user_reports_from_a_phone(tmp_path, chromium):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    inventory_path = demo_inventory(tmp_path)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = rehearse(inventory_path, ledger_url)
    try:
        collect(session=session, with_probe=False)
        queue = DefectQueue(session.ledger.engine)
        by_target = {d["target"]: d for d in queue.list(run_id=session.run_id, limit=None)}
        lise = by_target["hst-ws-101"]  # Lise Bech's PC at the town hall: its image failed
        other = by_target["nor-ws-101"]  # Peter Dahl's, at the school
        users = {u.id: u for u in session.inventory.support.users}
        device_location, device = session.inventory.device_by_hostname["hst-ws-101"]
        user = users[device.user]

        app = create_app(inventory_path, ledger_url, session.run_id, lang="en", secret="browser-test")
        with AppServer(app) as server:
            desk = chromium.new_context(**DESKTOP)
            page = desk.new_page()
            page.goto(server.url + "/")
            assert "/login" in page.url
            page.fill("#username", "support")
            page.fill("#password", "demo-support")
            page.click("button[type=submit]")
            page.wait_for_load_state()
            assert page.url == server.url + "/defects", page.url  # the queue, not the ops board
            assert page.inner_text("h1") == "Defects" and session.run_id in page.inner_text("#run-shown")
            page.screenshot(path=str(SHOTS / "queue.png"), full_page=True)

            # Found by hostname, by the user's name, by phone with and without spaces and +
            assert _search(page, "hst-ws-101") == {lise["key"]}
            assert lise["key"] in _search(page, user.name) and other["key"] not in _search(page, user.name)
            assert _search(page, user.phone) == {lise["key"]}
            assert _search(page, user.phone.replace(" ", "").lstrip("+")) == {lise["key"]}
            page.screenshot(path=str(SHOTS / "search-phone.png"), full_page=True)

            # The defect: the user's name, the location, the phone, why this priority, the SLA timer
            page.click(f'a[href="/defects/{lise["key"]}"]')
            page.wait_for_load_state()
            people = page.inner_text("#people")
            assert user.name in people and user.phone in people and device_location.name in people
            assert page.get_attribute(f'#people a[href="tel:{user.phone}"]', "href")
            reason = page.inner_text("#priority-reason")
            assert lise["priority_reason"] and lise["priority_reason"] in reason and "->" in reason
            sla = page.inner_text("#sla")
            assert "respond by" in sla and "resolve by" in sla
            assert re.search(r"— (\d+ [hd]|no reply|breach)$", sla), sla  # the time left, or that it is late
            page.screenshot(path=str(SHOTS / "detail.png"), full_page=True)

            # Bulk: assign two defects to the support account at once
            page.goto(server.url + "/defects")
            page.check(f'input[name=key][value="{lise["key"]}"]')
            page.check(f'input[name=key][value="{other["key"]}"]')
            page.select_option("#bulk-action", "assign")
            page.fill("#bulk-value", "support")
            page.click("#bulk button")
            page.wait_for_load_state()
            assert "Done." in page.content()
            assert {queue.get(k)["assignee"] for k in (lise["key"], other["key"])} == {"support"}
            untouched = [d for t, d in by_target.items() if t not in ("hst-ws-101", "nor-ws-101")]
            assert all(queue.get(d["key"])["assignee"] is None for d in untouched)
            for key in (lise["key"], other["key"]):
                assert page.inner_text(f'[id="row-{key}"] td:last-child') == "support"
            page.screenshot(path=str(SHOTS / "bulk-assigned.png"), full_page=True)

            # An end user at another desk: the sticker's short URL on a phone, no sign-in
            phone = chromium.new_context(**PHONE)
            mobile = phone.new_page()
            mobile.goto(server.url + "/r/hst-ws-104")
            assert mobile.url == server.url + "/r/hst-ws-104"  # no sign-in asked
            assert mobile.input_value("#s-device") == "hst-ws-104"
            assert lise["key"] not in mobile.content() and user.name not in mobile.content()  # nothing of others
            assert mobile.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits the phone
            mobile.select_option("#s-category", "printer")
            mobile.fill("#s-text", "The printer in Borgerservice is missing since the weekend")
            mobile.fill("#s-name", "Hanne Jensen")
            mobile.fill("#s-contact", "+45 97 42 11 04")
            mobile.screenshot(path=str(SHOTS / "self-service-form.png"), full_page=True)
            mobile.click("form button")
            mobile.wait_for_selector("#reference")
            reference = re.search(r"R-[0-9A-F]{8}", mobile.inner_text("#reference")).group(0)
            mobile.screenshot(path=str(SHOTS / "self-service-reference.png"), full_page=True)
            phone.close()

            # In the queue at once, found by the reporter's phone; the defect names the reporter
            shown = _search(page, "+45 97 42 11 04")
            filed = [d for d in queue.list(run_id=session.run_id, category="printer") if d["target"] == "hst-ws-104"]
            assert len(filed) == 1 and shown == {filed[0]["key"]}
            page.click(f'a[href="/defects/{filed[0]["key"]}"]')
            page.wait_for_load_state()
            assert "Reported by Hanne Jensen · +45 97 42 11 04" in page.inner_text("#people")
            assert page.inner_text("#references") == reference
            page.goto(server.url + "/defects")
            assert _search(page, reference) == {filed[0]["key"]}  # the caller gives the reference number
            page.screenshot(path=str(SHOTS / "self-service-in-queue.png"), full_page=True)
            desk.close()
    finally:
        session.close()
