"""The run log: one line per phase, server wave and location, and one for the run.

The orchestrator (Prefect's UI, Logs tab) shows these lines; they are made here from the
runner's results, the ledger and the report data, so every number has one source. Never
a line per device step: a weekend has 10,000+ of them, and per-device truth is in the
ledger and the report. A line holds ids, counts, statuses and the ledger's reasons, never
a connection string or credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bigbang.plan import Plan
from bigbang.progress import plural
from bigbang.runner import LocationResult, PhaseResult
from bigbang.status import LocationStatus


def _words(status: str) -> str:
    return str(status).replace("_", " ")


def weekend_started(run_id: str, plan: Plan) -> str:
    return (f"run {run_id} ({plan.rollout}, {plan.mode}): {plural(len(plan.locations), 'location')}, "
            f"{plural(len(plan.servers), 'server')} in {plural(len(plan.waves), 'wave')}, "
            f"{plural(plan.step_count, 'step')}")


def prechecks_started(plan: Plan) -> str:
    steps = sum(len(srv.prechecks) for srv in plan.servers)
    return f"prechecks started: {plural(steps, 'check')} on {plural(len(plan.servers), 'server')}"


def phase_finished(result: PhaseResult) -> str:
    """'servers wave 2: 12 of 12 servers done, 0 failed', and the first problem's reason."""
    total = len(result.succeeded) + len(result.failed) + len(result.skipped)
    line = f"{result.name}: {len(result.succeeded)} of {plural(total, 'server')} done, {len(result.failed)} failed"
    if result.skipped:
        line += f", {len(result.skipped)} skipped"
    first = (result.failed or result.skipped or (None,))[0]
    if first is not None:
        more = len(result.failed) + len(result.skipped) - 1
        line += f"; {first}: {result.reasons.get(first, '')}" + (f" (and {more} more)" if more else "")
    return line


def location_finished(result: LocationResult) -> str:
    """'location HST-014 halted: 3 of 5 devices failed (60% > 20%); 5 devices, 3 failed, 2 skipped'."""
    line = f"location {result.location_id} {_words(result.status)}"
    if result.reason:
        line += f": {result.reason}"
    return (line + f"; {plural(result.devices, 'device')}, {result.devices_failed} failed, "
            f"{result.devices_skipped} skipped")


def location_from_ledger(location_id: str, row: Mapping[str, Any] | None) -> LocationResult:
    """The location's result as the ledger holds it (a location run elsewhere, or one that crashed)."""
    if row is None:
        return LocationResult(location_id, LocationStatus.PENDING, "no result in the ledger", 0, 0, 0)
    return LocationResult(location_id, LocationStatus(row["status"]), row.get("reason") or "",
                          row.get("devices") or 0, row.get("devices_failed") or 0, row.get("devices_skipped") or 0)


def run_finished(report: Mapping[str, Any]) -> str:
    """The run's last line, from the report data (bigbang.report.report_data)."""
    run = report["run"]
    locations = report["locations"]
    by_status = report["locations_by_status"]
    states = ", ".join(f"{n} {_words(s)}" for s, n in sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0])))
    devices = report["devices"]
    steps = report["steps"]
    line = (f"run {run['run_id']} {_words(run['status'])}: {plural(len(locations), 'location')}"
            + (f" ({states})" if states else "")
            + f"; {plural(sum(devices.values()), 'device')}, {devices.get('failed', 0)} failed"
            + f"; {plural(len(report['servers']), 'server')}"
            + f"; {plural(sum(steps.values()), 'step')}, {steps.get('failed', 0)} failed, "
              f"{steps.get('skipped', 0)} skipped")
    if run.get("halted_reason"):
        line += f"; halted: {run['halted_reason']}"
    if report.get("retry_command"):
        line += f"; to retry: {report['retry_command']}"
    return line


def location_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-location table attached to the flow run, from the report data."""
    return [{"location": loc["id"], "name": loc["name"], "status": loc["status"], "devices": loc["devices"],
             "failed": loc["failed"], "skipped": loc["skipped"], "note": loc["reason"] or ""}
            for loc in sorted(report["locations"], key=lambda loc: loc["id"])]


def artifact_key(run_id: str) -> str:
    """A Prefect artifact key for the run: lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in run_id.lower())
    return "bigbang-" + "-".join(part for part in cleaned.split("-") if part)
