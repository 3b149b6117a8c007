"""The run report: what happened, per location, and what to retry.

Built only from the run's store (its frozen plan and inventory, and what happened), so
`bigbang report RUN_ID` gives the same report at any time after, or during, a run, whatever
happened to the inventory's YAML since. Times are on the run's clock: simulated in rehearsals.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from bigbang.errors import UserError
from bigbang.session import frozen_run
from bigbang.status import StepStatus, device_status
from bigbang.store.ledger import Ledger

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def templates_dir() -> Path:
    return Path(os.environ.get("BIGBANG_TEMPLATES", TEMPLATES))


def reports_dir() -> Path:
    return Path(os.environ.get("BIGBANG_REPORTS", "reports"))


def jinja_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = format_duration
    env.filters["when"] = format_time
    return env


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_time(ts: float | None) -> str:
    if not ts:
        return "–"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    markdown: Path
    html: Path
    json: Path
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # what they were rendered from


def report_data(ledger: Ledger, run_id: str) -> dict[str, Any]:
    frozen = frozen_run(ledger, run_id)
    run, plan, inventory = frozen.row, frozen.plan, frozen.inventory
    results = ledger.step_results(run_id, with_facts=False)
    loc_rows = ledger.location_results(run_id)
    simulated = run["clock"] == "simulated"

    def status_of(step_ids: list[str]) -> str:
        return device_status([results[s].status if s in results else None for s in step_ids])

    servers: list[dict[str, Any]] = []
    locations: list[dict[str, Any]] = []
    device_counts: Counter[str] = Counter()
    for srv in plan.servers:
        ids = [s.id for s in (*srv.prechecks, *srv.steps)]
        failed = [results[i] for i in ids if i in results and results[i].status in (StepStatus.FAILED, StepStatus.SKIPPED)]
        servers.append({"name": srv.name, "wave": srv.wave + 1, "depends_on": list(srv.depends_on),
                        "status": status_of(ids), "message": failed[0].message if failed else "",
                        "attempts": sum(results[i].attempts for i in ids if i in results)})
    for loc in plan.locations:
        inv_loc = inventory.location_by_id[loc.id]
        row = loc_rows.get(loc.id, {})
        counts: Counter[str] = Counter()
        for device in loc.devices:
            state = status_of([s.id for s in device.steps])
            counts[state] += 1
            device_counts[state] += 1
        started, finished = row.get("started_at"), row.get("finished_at")
        clock_start, clock_end = row.get("clock_start"), row.get("clock_end")
        locations.append({
            "id": loc.id, "name": inv_loc.name, "team": loc.team, "criticality": loc.criticality,
            "status": row.get("status", "pending"), "reason": row.get("reason", ""),
            "devices": len(loc.devices), "succeeded": counts["succeeded"], "failed": counts["failed"],
            "skipped": counts["skipped"], "pending": counts["pending"] + counts["running"],
            "started_at": started, "finished_at": finished, "clock_start": clock_start, "clock_end": clock_end,
            "seconds": (clock_end - clock_start) if clock_start is not None and clock_end is not None else None,
        })
    step_rows = []
    for step in plan.steps():
        rec = results.get(step.id)
        step_rows.append({
            "id": step.id, "kind": step.kind, "target": step.target, "connector": step.connector,
            "status": rec.status if rec else StepStatus.PENDING, "attempts": rec.attempts if rec else 0,
            "start": rec.clock_start if rec else None, "end": rec.clock_end if rec else None,
            "message": rec.message if rec else "",
            "wall_started_at": rec.started_at if rec else None, "wall_finished_at": rec.finished_at if rec else None,
        })
    planned_steps = len(step_rows)
    failures: list[dict[str, Any]] = sorted(
        ({"target": r.target, "kind": r.kind, "scope": r.scope, "attempts": r.attempts, "message": r.message}
         for r in results.values() if r.status == "failed"),
        key=lambda f: (f["scope"], f["target"], f["kind"]),
    )
    skipped_reasons: dict[str, int] = defaultdict(int)
    for r in results.values():
        if r.status == "skipped":
            skipped_reasons[r.message] += 1
    step_counts: Counter[str] = Counter(str(r.status) for r in results.values())
    step_counts["pending"] = max(0, planned_steps - len(results))
    wall = ((run["finished_at"] or run["updated_at"]) - run["created_at"]) if run["created_at"] else None
    timeline_end = max((r.clock_end for r in results.values() if r.clock_end is not None), default=None)
    failed_devices = sorted({f["target"] for f in failures if f["kind"].startswith(("ws.", "tc."))})
    retry_command = (f"bigbang run --resume {run_id} --retry-failed"
                     if failures or step_counts["pending"] or step_counts["running"] else None)
    return {
        "run": {**{k: run[k] for k in ("run_id", "rollout", "mode", "status", "halted_reason", "inventory",
                                       "created_at", "finished_at", "plan_digest", "plan_version", "clock")},
                "wall_seconds": wall, "simulated": simulated, "compression": run["options"].get("compression"),
                "timeline_seconds": timeline_end, "seed": run["options"].get("seed")},
        "steps": dict(step_counts),
        "devices": dict(device_counts),
        "locations_by_status": dict(Counter(loc["status"] for loc in locations)),
        "servers": servers,
        "locations": locations,
        "failures": failures,
        "skipped_reasons": dict(sorted(skipped_reasons.items(), key=lambda kv: -kv[1])),
        "failed_devices": failed_devices,
        "timeline": step_rows,
        "retry_command": retry_command,
        # sign-offs of locations with items not ticked or devices failed: who, and the reason they gave
        "signoff_exceptions": [{"location": p["location_id"], "by": p["reported_by"], "text": p["text"]}
                               for p in ledger.problems(run_id) if p.get("source") == "signoff"],
        "schedule": _planned_vs_actual(ledger, run_id),
        "events": [{"at": e["at"], "kind": e["kind"], "message": e["message"]} for e in ledger.events(run_id)],
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _planned_vs_actual(ledger: Ledger, run_id: str) -> dict[str, Any] | None:
    """Each location's scheduled slot beside what happened, when the run followed a schedule."""
    from bigbang.schedule.compare import compare_run

    if ledger.run_schedule(run_id) is None:
        return None
    try:
        return compare_run(ledger, run_id)
    except UserError:
        return None


def render_report(ledger: Ledger, run_id: str, out_dir: Path | None = None,
                  data: dict[str, Any] | None = None) -> ReportFiles:
    """Write the report's files; `data` is report_data's, when the caller has it already."""
    data = report_data(ledger, run_id) if data is None else data
    directory = (out_dir or reports_dir()) / run_id
    directory.mkdir(parents=True, exist_ok=True)
    env = jinja_env()
    files = ReportFiles(directory, directory / "summary.md", directory / "summary.html", directory / "summary.json",
                        data)
    files.markdown.write_text(env.get_template("report.md.j2").render(**data), encoding="utf-8")
    files.html.write_text(env.get_template("report.html.j2").render(**data), encoding="utf-8")
    files.json.write_text(json.dumps(data, default=str), encoding="utf-8")  # compact: the C encoder (indent is pure Python)
    return files
