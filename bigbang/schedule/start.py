"""When a scheduled location may start: at its slot, when its technician checks in, or whichever
comes first — as the inventory's `schedule.start` says.

A check-in is a `location.checked_in` event in the run's ledger (from `bigbang schedule checkin`
or the field app), so it survives a restart of the orchestrator. In a rehearsal a simulated
technician checks in at the slot. Live, a location waiting for a check-in that never comes starts
anyway when the window closes, with an event saying so, rather than holding the weekend forever.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, select

from bigbang.ledger import events
from bigbang.schedule.store import run_origin

CHECKED_IN = "location.checked_in"


def check_in(ledger, run_id: str, location_id: str, by: str, note: str = "") -> bool:
    """Record a technician's arrival once; False if the location was checked in before."""
    if checked_in(ledger, run_id, location_id):
        return False
    ledger.add_event(run_id, CHECKED_IN, location_id, f"by {by}. {note}".strip())
    return True


def checked_in(ledger, run_id: str, location_id: str) -> bool:
    with ledger.engine.connect() as conn:
        return conn.execute(select(events.c.id).where(and_(
            events.c.run_id == run_id, events.c.kind == CHECKED_IN, events.c.subject == location_id,
        )).limit(1)).first() is not None


def wait_for_start(session, location_id: str | None, offset: float, poll: float = 2.0) -> str:
    """Hold a location until it may start; returns what released it (slot | checkin | window)."""
    if session.options.zero_duration:
        return "slot"
    rule = session.inventory.schedule.start
    ledger, run_id = session.ledger, session.run_id
    origin = run_origin(ledger, run_id, ledger.get_run(run_id)["created_at"])
    due = origin + offset / session.compression()
    if rule == "slot" or session.mode == "rehearsal" or location_id is None:
        _sleep_until(due)
        if rule != "slot" and location_id is not None:
            check_in(ledger, run_id, location_id, "simulated technician", "rehearsal")
        return "slot"
    window = session.inventory.rollout.window
    closes = window.end_utc.timestamp()
    while True:
        if checked_in(ledger, run_id, location_id):
            return "checkin"
        now = time.time()
        if rule == "slot_or_checkin" and now >= due:
            return "slot"
        if now >= closes:
            ledger.add_event(run_id, "location.no_checkin", location_id,
                             "no technician checked in before the window closed; starting anyway")
            return "window"
        time.sleep(max(0.05, min(poll, (due if rule == "slot_or_checkin" else closes) - now)))


def _sleep_until(due: float) -> None:
    delay = due - time.time()
    if delay > 0:
        time.sleep(delay)
