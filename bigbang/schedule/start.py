"""When a scheduled location may start: at its slot, when its technician checks in, or whichever
comes first — as the plan's start rule (the inventory's `schedule.start`) says.

A check-in is a `location.checked_in` event in the run's ledger (from `bigbang schedule checkin`,
which needs an ops lead's credential and is audited, or the field app), so it survives a restart of
the orchestrator. A rehearsal's plan starts every location at its slot (its simulated crew is on
time). Live, a location waiting for a check-in that never comes starts anyway when the window closes,
with an event saying so, rather than holding the weekend forever.
"""

from __future__ import annotations

import time

from bigbang.clock import Clock
from bigbang.plan import Policy
from bigbang.store import Ledger


def check_in(ledger: Ledger, run_id: str, location_id: str, by: str, note: str = "") -> bool:
    """Record a technician's arrival once; False if the location was checked in before. `by` says who
    arrived and, for a check-in entered on their behalf, who entered it (see FieldStore.check_in)."""
    return ledger.check_in(run_id, location_id, f"by {by}. {note}".strip())


def checked_in(ledger: Ledger, run_id: str, location_id: str) -> bool:
    return ledger.checked_in(run_id, location_id)


def wait_for_start(ledger: Ledger, run_id: str, location_id: str, offset: float, policy: Policy, clock: Clock,
                   poll: float = 2.0) -> str:
    """Hold a location until it may start; returns what released it (slot | checkin | window)."""
    rule = policy.start_rule
    if rule == "slot":
        clock.sleep_until(offset)
        return "slot"
    while True:
        if ledger.checked_in(run_id, location_id):
            return "checkin"
        if rule == "slot_or_checkin" and clock.now() >= offset:
            return "slot"
        if time.time() >= policy.window_end_utc:
            ledger.add_event(run_id, "location.no_checkin", location_id,
                             "no technician checked in before the window closed; starting anyway")
            return "window"
        wake = offset if rule == "slot_or_checkin" else clock.now() + poll
        clock.sleep(max(0.05, min(poll, wake - clock.now())))
