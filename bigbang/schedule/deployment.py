"""The weekend deployment's start: a Prefect schedule at the window's opening, in its timezone.

An RRULE with a local DTSTART and the window's IANA timezone: Prefect keeps the
local time across daylight-saving changes (17:00 Copenhagen stays 17:00 whether
that is UTC+1 or UTC+2), and COUNT=1 starts the weekend exactly once.
"""

from __future__ import annotations

from typing import Any

from bigbang.inventory.model import Inventory


def deployment_schedule(inventory: Inventory, run_id: str | None = None) -> dict[str, Any]:
    """One entry of a deployment's `schedules:` list in prefect.yaml.

    With a run id the scheduled flow run continues that run; without one it starts a new live run
    of the inventory (the flow's `inventory` and `mode` parameters)."""
    w = inventory.rollout.window
    entry: dict[str, Any] = {
        "rrule": f"DTSTART:{w.start:%Y%m%dT%H%M%S}\nRRULE:FREQ=DAILY;COUNT=1",
        "timezone": w.timezone,
        "active": True,
    }
    entry["parameters"] = {"run_id": run_id} if run_id else {"inventory": inventory.source, "mode": "live"}
    return entry


def deployment_yaml(inventory: Inventory, run_id: str | None = None) -> str:
    entry = deployment_schedule(inventory, run_id)
    w = inventory.rollout.window
    lines = [f"# {inventory.rollout.name}: start the weekend flow when the window opens "
             f"({w.start:%Y-%m-%d %H:%M} {w.timezone}).",
             "# Paste under the `weekend` deployment in prefect.yaml, then `prefect --no-prompt deploy --all`.",
             "schedules:",
             "  - rrule: |-"]
    lines += [f"      {line}" for line in entry["rrule"].splitlines()]
    lines += [f"    timezone: {entry['timezone']}", "    active: true"]
    lines += ["    parameters:"] + [f"      {k}: {v}" for k, v in entry["parameters"].items()]
    return "\n".join(lines) + "\n"
