"""Where defects come from: the rollout ledger, technicians, a fresh probe, end users.

Each source returns `Observation` values; nothing here writes. End-user reports
are validated row by row: a bad row is reported with its line number and the
good rows still go in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bigbang.connectors.base import Action
from bigbang.defects.triage import Observation, unit_sample
from bigbang.errors import BigBangError, ConnectorError
from bigbang.inventory.model import Inventory
from bigbang.plan import Plan, Step
from bigbang.store.defects import MAX_FIELD, MAX_TEXT
from bigbang.store.ledger import Ledger

log = logging.getLogger("bigbang.defects")

PROBE_ATTEMPT_BASE = 100  # probe attempts are numbered apart from the rollout's 1..retries+1
PROBE_KINDS = ("ws.verify", "tc.verify", "srv.verify")
CATEGORY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


# ---------------------------------------------------------------- the ledger

def rollout_observations(ledger: Ledger, run_id: str) -> list[Observation]:
    """Failed steps, steps that never finished (the run is over), and devices never done."""
    run = ledger.get_run(run_id)
    if run is None:
        return []
    over = run["status"] != "running"
    results = ledger.step_results(run_id)
    failed_targets = {r.target for r in results.values() if r.status == "failed"}
    skipped_seen: set[str] = set()
    out: list[Observation] = []
    for rec in sorted(results.values(), key=lambda r: (r.started_at or 0, r.step_id)):
        at = rec.finished_at or rec.started_at or run["updated_at"]
        loc = rec.scope if rec.scope != "servers" else None
        if rec.kind == "loc.verify":
            continue  # a location's verdict only sums up its devices' own defects
        if rec.status == "failed":
            message = rec.message or f"{rec.kind} failed"
        elif rec.status == "running" and over:
            message = f"{rec.kind} never finished (the run ended while it was running)"
        elif (rec.status == "skipped" and rec.target not in failed_targets and rec.target not in skipped_seen
              and not rec.kind.startswith("loc.")):
            skipped_seen.add(rec.target)
            message = f"not done: {rec.message or 'skipped'}"
        else:
            continue
        # The step's own time is part of the sighting: the same failure again after a resume is a new sighting.
        out.append(Observation(
            obs_id=f"rollout:{run_id}:{rec.step_id}:{rec.status}:{round(at * 1000)}", source="rollout", target=rec.target,
            check=rec.kind, message=message, observed_at=at, location_id=loc,
            details={"run_id": run_id, "step_id": rec.step_id, "status": rec.status, "attempts": rec.attempts}))
    return out


def settled_targets(ledger: Ledger, run_id: str) -> set[str]:
    """Targets whose every change step has succeeded in the ledger (the evidence a passing probe needs).

    Verification steps do not count: the probe runs them again. A target with a failed, skipped,
    blocked or never-started change step is not settled.
    """
    status: dict[str, list[str]] = {}
    for rec in ledger.step_results(run_id).values():
        if rec.kind in PROBE_KINDS:
            continue
        status.setdefault(rec.target, []).append(rec.status)
    return {t for t, states in status.items() if states and all(s == "succeeded" for s in states)}


def recovered_locations(ledger: Ledger, run_id: str) -> list[Observation]:
    """A passing sighting for each location whose every step (precheck, sign-off, verdict) has succeeded.

    A location has no probe of its own: its verdict step (`loc.verify`, which sums up its devices'
    verifications) succeeding is the evidence that a blocked or halted location is done now.
    """
    by_loc: dict[str, list[Any]] = {}
    for rec in ledger.step_results(run_id).values():
        if rec.kind.startswith("loc."):
            by_loc.setdefault(rec.target, []).append(rec)
    out = []
    for loc_id, recs in sorted(by_loc.items()):
        if recs and all(r.status == "succeeded" for r in recs):
            at = max((r.finished_at or 0.0) for r in recs)
            out.append(Observation(obs_id=f"rollout:{run_id}:{loc_id}:done:{round(at * 1000)}", source="rollout",
                                   target=loc_id, check="loc.verify", message="every step of the location succeeded",
                                   observed_at=at, failing=False, location_id=loc_id))
    return out


def field_observations(ledger: Ledger, run_id: str) -> list[Observation]:
    """Problems technicians noted in the field app or with the CLI."""
    return [
        Observation(obs_id=f"field:{p['problem_id']}", source="field", target=p["device"] or p["location_id"],
                    check=f"field.{p['category']}", message=p["text"], observed_at=p["reported_at"],
                    location_id=p["location_id"], category=p["category"], reporter=p["reported_by"])
        for p in ledger.problems(run_id)
    ]


# ---------------------------------------------------------------- the probe

@dataclass(frozen=True)
class ProbeResult:
    observations: list[Observation]
    errors: list[str]
    probed: int


def probe_steps(plan: Plan) -> dict[str, Step]:
    """Target -> its verification step (what the probe runs again)."""
    out: dict[str, Step] = {}
    for srv in plan.servers:
        for step in srv.steps:
            if step.kind == "srv.verify":
                out[step.target] = step
    for loc in plan.locations:
        for device in loc.devices:
            for step in device.steps:
                if step.kind in PROBE_KINDS:
                    out[step.target] = step
    return out


def choose_probe_targets(plan: Plan, affected: Iterable[str], sample_percent: float, round_no: int) -> list[str]:
    """The affected targets plus a deterministic sample of the rest (another sample each round)."""
    steps = probe_steps(plan)
    chosen = {t for t in affected if t in steps}
    for target in steps:
        if target not in chosen and unit_sample(target, round_no) * 100 < sample_percent:
            chosen.add(target)
    return sorted(chosen)


def probe(connector_for: Callable[[str], Any], plan: Plan, targets: Sequence[str], *, round_no: int,
          collection_id: int, location_of: Callable[[str], str | None], workers: int = 8) -> ProbeResult:
    """Run each target's verification step again through the run's connectors."""
    steps = probe_steps(plan)
    errors: list[str] = []
    connectors: dict[str, Any] = {}
    for name in sorted({steps[t].connector for t in targets}):
        try:
            connectors[name] = connector_for(name)
        except BigBangError as exc:  # e.g. live mode without the connector's settings: say it once
            skipped = sum(1 for t in targets if steps[t].connector == name)
            errors.append(f"probe through the '{name}' connector not possible ({skipped} targets not probed): {exc}")
    targets = [t for t in targets if steps[t].connector in connectors]

    def one(target: str) -> Observation | None:
        step = steps[target]
        action = Action(step_id=step.id, kind=step.kind, target=step.target,
                        attempt=PROBE_ATTEMPT_BASE + round_no, params=step.params)
        try:
            outcome = connectors[step.connector].run(action)
        except ConnectorError as exc:  # the connector itself is unusable: not the device's fault
            errors.append(f"probe of {target} not possible: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - one broken probe never stops the others
            errors.append(f"probe of {target} crashed: {exc.__class__.__name__}: {exc}")
            return None
        now = datetime.now(UTC).timestamp()
        facts = dict(outcome.facts or {})
        message = outcome.message or ("checks passed" if outcome.ok else f"{step.kind} failed")
        if outcome.ok and facts:
            message = ", ".join(f"{k}={v}" for k, v in sorted(facts.items()) if v not in (None, [], ""))
        return Observation(obs_id=f"probe:{collection_id}:{target}", source="probe", target=target,
                           check=step.kind, message=message, observed_at=now, failing=not outcome.ok,
                           location_id=location_of(target), details={"facts": facts, "round": round_no})

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets) or 1)), thread_name_prefix="bigbang-probe") as pool:
        found = [o for o in pool.map(one, targets) if o is not None]
    return ProbeResult(found, errors, len(targets))


# ---------------------------------------------------------------- end-user reports

REPORT_COLUMNS = ("reported_at", "device", "location", "category", "text", "reporter", "report_id")


@dataclass
class ImportResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # validated, ready for DefectQueue.add_reports
    errors: list[str] = field(default_factory=list)  # "line N: what is wrong"
    imported: int = 0  # new (not seen before)


def _parse_when(value: str) -> float:
    value = value.strip()
    if not value:
        return datetime.now(UTC).timestamp()
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def validate_report(data: dict[str, Any], inventory: Inventory, *, channel: str) -> tuple[dict[str, Any] | None, list[str]]:
    """One end-user report -> a row for the queue, or the reasons it was refused."""
    problems: list[str] = []
    clean: dict[str, str] = {}
    for name in REPORT_COLUMNS:
        value = data.get(name)
        value = "" if value is None else str(value).strip()
        limit = MAX_TEXT if name == "text" else MAX_FIELD
        if len(value) > limit:
            problems.append(f"{name} is {len(value)} characters long (at most {limit})")
            value = ""
        clean[name] = value
    device, location = clean["device"], clean["location"]
    if not clean["text"] and not any(p.startswith("text ") for p in problems):
        problems.append("text is empty (describe what is wrong)")
    if not device and not location:
        problems.append("give the device (hostname) or the location id")
    found = inventory.device_by_hostname.get(device.lower()) if device else None
    if device and found is None:
        problems.append(f"unknown device '{device}' (not in the inventory)")
    if location and location not in inventory.location_by_id:
        problems.append(f"unknown location '{location}' (not in the inventory)")
    if found is not None and location and found[0].id != location:
        problems.append(f"device '{device}' is at {found[0].id}, not {location}")
    category = (clean["category"] or "general").lower()
    if not set(category) <= CATEGORY_CHARS:
        problems.append(f"category '{clean['category']}' may hold only letters, digits, '-' and '_'")
    try:
        reported_at = _parse_when(clean["reported_at"])
    except ValueError:
        problems.append(f"reported_at '{clean['reported_at']}' is not a date and time (use 2026-11-30T08:15)")
        reported_at = 0.0
    if problems:
        return None, problems
    location_id = found[0].id if found else location
    report_id = clean["report_id"] or hashlib.blake2b(
        "\x1f".join([clean["reported_at"], device.lower(), location_id, category, clean["text"], clean["reporter"]]).encode(),
        digest_size=12).hexdigest()
    return dict(report_id=report_id[:64], reported_at=reported_at, device=found[1].hostname if found else None,
                location_id=location_id, category=category[:60], text=clean["text"], reporter=clean["reporter"],
                channel=channel), []


def parse_reports_csv(content: str, inventory: Inventory, *, max_rows: int = 200_000) -> ImportResult:
    """Validate a CSV export of end-user reports (header row with REPORT_COLUMNS; text and device or location)."""
    result = ImportResult()
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        result.errors.append("line 1: the file is empty (expected a header row: " + ",".join(REPORT_COLUMNS) + ")")
        return result
    except csv.Error as exc:
        result.errors.append(f"line 1: not CSV: {exc}")
        return result
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    unknown = [n for n in names if n not in REPORT_COLUMNS]
    if "text" not in names or unknown:
        what = f"unknown columns {', '.join(unknown)}" if unknown else "no 'text' column"
        result.errors.append(f"line 1: {what} (columns: {', '.join(REPORT_COLUMNS)})")
        return result
    while True:
        line = reader.line_num + 1  # where this row starts (a quoted field may span lines)
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.errors.append(f"line {line}: malformed CSV: {exc}")
            continue
        if not values or all(not v.strip() for v in values):
            continue
        if len(result.rows) + len(result.errors) >= max_rows:
            result.errors.append(f"line {line}: more than {max_rows} rows; the rest was not read")
            break
        if len(values) != len(names):
            spans = f" (the row runs to line {reader.line_num}: a quote left open?)" if reader.line_num > line else ""
            result.errors.append(f"line {line}: {len(values)} fields, the header has {len(names)}{spans}")
            continue
        row, problems = validate_report(dict(zip(names, values, strict=False)), inventory, channel="csv")
        if problems or row is None:
            result.errors.append(f"line {line}: " + "; ".join(problems))
        else:
            result.rows.append(row)
    return result


def report_observations(rows: Iterable[dict[str, Any]]) -> list[Observation]:
    return [
        Observation(obs_id=f"user:{r['report_id']}", source="user", target=r["device"] or r["location_id"],
                    check=f"user.{r['category']}", message=r["text"], observed_at=r["reported_at"],
                    location_id=r["location_id"], category=r["category"], reporter=r["reporter"],
                    details={"contact": r.get("contact") or "", "channel": r.get("channel") or "",
                             "reference": r.get("reference") or ""})
        for r in rows
    ]
