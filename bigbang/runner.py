"""Executes parts of a plan: prechecks, a server wave, one location.

This is where the weekend's logic lives; the Prefect flow only sequences these
calls. Device steps are plain calls, recorded in the ledger as they finish:
a failed step is retried per policy and then recorded as failed; it never
raises past its device, and a failed device never stops its neighbours. A
location halts when more than its threshold of devices failed; the rollout
halts when the inventory's halt rules say so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bigbang.connectors.base import Action, Outcome
from bigbang.errors import ConnectorError
from bigbang.ledger import StepRecord, now
from bigbang.plan import DevicePlan, LocationPlan, ServerPlan, Step

log = logging.getLogger("bigbang.runner")

DONE = ("succeeded", "failed")  # finished: a resume does not redo these (failed only with --retry-failed)


@dataclass(frozen=True)
class LocationResult:
    location_id: str
    status: str  # succeeded | completed_with_failures | halted | blocked | skipped
    reason: str
    devices: int
    devices_failed: int
    devices_skipped: int

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class PhaseResult:
    name: str
    succeeded: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)


class Runner:
    """Runs plan pieces for one run, given a session (see bigbang.session)."""

    def __init__(self, session: Any):
        self.session = session
        self.plan = session.plan
        self.ledger = session.ledger
        self.run_id = session.run_id
        self.options = session.options

    # ------------------------------------------------------------ one step
    def execute(self, step: Step, scope: str, known: dict[str, StepRecord]) -> StepRecord:
        prev = known.get(step.id)
        if prev is not None and prev.status in DONE:
            if prev.status == "succeeded" or not self.options.retry_failed:
                return prev
        connector = self.session.connector(step.connector)
        started = now()
        self._record(step, scope, "running", started_at=started)
        attempts = self.plan.retries + 1
        sim_total = 0.0
        outcome = Outcome(ok=False, message="not attempted")
        attempt = 0
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(connector, step, attempt)
            sim_total += outcome.simulated_duration or 0.0
            if outcome.ok or not outcome.transient or attempt == attempts:
                break
            self.session.wait_before_retry()
            sim_total += self.plan.retry_delay if self.session.mode == "rehearsal" else 0.0
        record = self._record(
            step, scope, "succeeded" if outcome.ok else "failed", attempts=attempt, changed=outcome.changed,
            message=outcome.message, facts=dict(outcome.facts), started_at=started, finished_at=now(),
            sim_seconds=sim_total if self.session.mode == "rehearsal" else None,
        )
        known[step.id] = record
        return record

    def _attempt(self, connector: Any, step: Step, attempt: int) -> Outcome:
        try:
            return connector.run(Action(step.id, step.kind, step.target, attempt, step.params))
        except ConnectorError as exc:
            return Outcome(ok=False, message=str(exc), transient=exc.transient)
        except Exception as exc:  # noqa: BLE001 - one device's bug must not stop the location
            log.exception("connector %s raised on %s", step.connector, step.id)
            return Outcome(ok=False, message=f"unexpected error: {exc.__class__.__name__}: {exc}", transient=False)

    def skip(self, step: Step, scope: str, reason: str, known: dict[str, StepRecord]) -> StepRecord:
        prev = known.get(step.id)
        if prev is not None and prev.status in DONE:
            return prev
        record = self._record(step, scope, "skipped", message=reason, finished_at=now())
        known[step.id] = record
        return record

    def _record(self, step: Step, scope: str, status: str, **values: Any) -> StepRecord:
        record = StepRecord(step_id=step.id, scope=scope, target=step.target, kind=step.kind, status=status, **values)
        self.ledger.record_step(self.run_id, record)
        return record

    def _internal(self, step: Step, scope: str, ok: bool, message: str, known: dict[str, StepRecord],
                  facts: dict[str, Any] | None = None) -> StepRecord:
        prev = known.get(step.id)
        if prev is not None and prev.status == "succeeded":
            return prev
        t = now()
        record = self._record(step, scope, "succeeded" if ok else "failed", attempts=1, message=message,
                              facts=facts or {}, started_at=t, finished_at=t)
        known[step.id] = record
        return record

    # ------------------------------------------------------------ servers
    def run_prechecks(self) -> PhaseResult:
        known = self.ledger.step_results(self.run_id, scope="servers")
        halted = self.ledger.halted_reason(self.run_id)
        results = self._parallel(self.plan.servers, lambda srv: self._server_steps(srv, srv.prechecks, known, halted))
        self.ledger.flush()
        return _phase("prechecks", results)

    def run_wave(self, index: int) -> PhaseResult:
        known = self.ledger.step_results(self.run_id, scope="servers")
        halted = self.ledger.halted_reason(self.run_id)
        wave = [s for s in self.plan.servers if s.wave == index]
        results = self._parallel(wave, lambda srv: self._server_steps(srv, srv.steps, known, halted))
        self.ledger.flush()
        phase = _phase(f"servers wave {index + 1}", results)
        policy = self.session.inventory.rollout.failure_policy.halt_rollout
        if phase.failed and policy.on_server_failure:
            self.ledger.halt_run(self.run_id, f"server {phase.failed[0]} failed: {phase.reasons[phase.failed[0]]}")
        return phase

    def _server_steps(self, srv: ServerPlan, steps: Iterable[Step], known: dict[str, StepRecord],
                      halted: str | None) -> tuple[str, str, str]:
        blocker = None
        if halted:
            blocker = f"rollout halted: {halted}"
        for dep_step in (s for step in steps for s in step.after):
            rec = known.get(dep_step)
            if rec is not None and rec.status != "succeeded" and blocker is None:
                blocker = f"{dep_step.split(':')[0]} not ready ({rec.status}: {rec.message})"
        status, message = "succeeded", ""
        for step in steps:
            if blocker:
                self.skip(step, "servers", blocker, known)
                if status == "succeeded":
                    status, message = "skipped", blocker
                continue
            rec = self.execute(step, "servers", known)
            if rec.status != "succeeded":
                blocker = f"{step.kind} failed: {rec.message}"
                status, message = "failed", rec.message
        return srv.name, status, message

    def _parallel(self, items: list, fn) -> list:
        if not items:
            return []
        workers = min(len(items), self.options.parallel_servers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bigbang-server") as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------ locations
    def run_location(self, location_id: str) -> LocationResult:
        loc = self.plan.location(location_id)
        started = now()
        known = self.ledger.step_results(self.run_id, scope=loc.id)
        total = len(loc.devices)
        self.ledger.record_location(self.run_id, loc.id, "running", devices=total, started_at=started)

        self.wait_for_slot(loc)
        halted = self.ledger.halted_reason(self.run_id)
        blocker = f"rollout halted: {halted}" if halted else self._prerequisites(loc, known)
        if blocker:
            status = "skipped" if halted else "blocked"
            if not halted:
                self._internal(loc.precheck, loc.id, False, blocker, known)
            else:
                self.skip(loc.precheck, loc.id, blocker, known)
            for device in loc.devices:
                for step in device.steps:
                    self.skip(step, loc.id, blocker, known)
            self.skip(loc.signoff, loc.id, blocker, known)
            self.skip(loc.verify, loc.id, blocker, known)
            return self._finish_location(loc, status, blocker, total, 0, total, started)

        state = _LocationState(total=total, max_fail_percent=loc.max_fail_percent)
        if not self.options.retry_failed:  # failures recorded before a crash still count after resume
            for device in loc.devices:
                if any(_failed(known.get(s.id)) for s in device.steps):
                    state.add_failure(device.hostname)

        def work(device: DevicePlan) -> str:
            return self._device(loc, device, known, state)

        with ThreadPoolExecutor(max_workers=max(1, min(loc.parallel_devices, total or 1)),
                                thread_name_prefix=f"bigbang-{loc.id}") as pool:
            outcomes = list(pool.map(work, loc.devices))
        failed = outcomes.count("failed")
        skipped = outcomes.count("skipped")
        if state.halted_reason:
            self.skip(loc.signoff, loc.id, f"location halted: {state.halted_reason}", known)
        else:
            self._signoff(loc, known)
        if state.halted_reason:
            status, reason = "halted", state.halted_reason
            self._internal(loc.verify, loc.id, False, f"halted: {reason}", known,
                           {"failed": failed, "skipped": skipped, "devices": total})
        else:
            status = "succeeded" if failed == 0 else "completed_with_failures"
            reason = (f"{total - failed} of {total} devices done" if failed == 0 else
                      f"{failed} of {total} devices failed ({_pct(failed, total):.0f}% <= {loc.max_fail_percent:g}%)")
            self._internal(loc.verify, loc.id, True, reason, known,
                           {"failed": failed, "skipped": skipped, "devices": total})
        return self._finish_location(loc, status, reason, total, failed, skipped, started)

    def _signoff(self, loc: LocationPlan, known: dict[str, StepRecord]) -> None:
        """The gate: the location's work is done only when its technician signs it off.

        In a rehearsal a simulated technician signs off once the simulated work is done.
        Live, the gate waits for a sign-off in the ledger (field app or `bigbang signoff`),
        so it survives a restart of the orchestrator: a resumed run finds it there.
        """
        if _done(known.get(loc.signoff.id)):
            return
        if self.session.mode == "rehearsal" and self.session.inventory.rehearsal.simulate_signoff:
            self.ledger.sign_off(self.run_id, loc.id, "simulated technician", "rehearsal")
        signed = self.session.wait_for_signoff(loc.id)
        if signed is None:
            self._internal(loc.signoff, loc.id, False, "no sign-off before the gate's timeout", known)
        else:
            self._internal(loc.signoff, loc.id, True, f"signed off by {signed['signed_by']}", known,
                           {"signed_by": signed["signed_by"], "note": signed["note"]})

    def wait_for_slot(self, loc: LocationPlan) -> None:
        """Hold a scheduled location until its slot (compressed in rehearsals) or its technician's check-in."""
        if loc.start_offset is None:
            return
        self.session.wait_until_offset(loc.start_offset, loc.id)

    def _prerequisites(self, loc: LocationPlan, known: dict[str, StepRecord]) -> str | None:
        prev = known.get(loc.precheck.id)
        if prev is not None and prev.status == "succeeded":
            return None
        needed = list(loc.precheck.after)
        results = self.ledger.step_results(self.run_id, step_ids=needed) if needed else {}
        missing = [sid.split(":")[0] for sid in needed if results.get(sid) is None or results[sid].status != "succeeded"]
        if missing:
            details = []
            for name in missing[:5]:
                rec = results.get(f"{name}:srv.verify")
                details.append(f"{name} ({rec.status}: {rec.message})" if rec else f"{name} (not provisioned)")
            return "required servers not ready: " + ", ".join(details)
        self._internal(loc.precheck, loc.id, True, f"{len(needed)} required servers ready", known)
        return None

    def _device(self, loc: LocationPlan, device: DevicePlan, known: dict[str, StepRecord],
                state: _LocationState) -> str:
        blocker = None
        result = "succeeded"
        for step in device.steps:
            if blocker is None and state.halted_reason and not _done(known.get(step.id)):
                blocker = f"location halted: {state.halted_reason}"
                result = "skipped"
            if blocker:
                self.skip(step, loc.id, blocker, known)
                continue
            rec = self.execute(step, loc.id, known)
            if rec.status == "failed":
                blocker = f"{step.kind} failed"
                result = "failed"
            elif rec.status == "skipped":
                blocker, result = rec.message, "skipped"
        if result == "failed":
            state.add_failure(device.hostname)
        return result

    def _finish_location(self, loc: LocationPlan, status: str, reason: str, total: int, failed: int,
                         skipped: int, started: float) -> LocationResult:
        self.ledger.record_location(self.run_id, loc.id, status, reason=reason, devices=total,
                                    devices_failed=failed, devices_skipped=skipped,
                                    started_at=started, finished_at=now())
        self.ledger.flush()
        if status in ("halted", "blocked"):
            self._check_rollout_halt()
        return LocationResult(loc.id, status, reason, total, failed, skipped)

    def _check_rollout_halt(self) -> None:
        limit = self.session.inventory.rollout.failure_policy.halt_rollout.failed_locations_percent
        if limit is None:
            return
        results = self.ledger.location_results(self.run_id)
        bad = [lid for lid, r in results.items() if r["status"] in ("halted", "blocked")]
        total = len(self.plan.locations)
        if total and _pct(len(bad), total) > limit:
            self.ledger.halt_run(self.run_id, f"{len(bad)} of {total} locations halted or blocked "
                                              f"({_pct(len(bad), total):.0f}% > {limit:g}%)")


class _LocationState:
    """Failure count of one location and its threshold; shared by its device threads."""

    def __init__(self, total: int, max_fail_percent: float):
        self.total = total
        self.max_fail_percent = max_fail_percent
        self.failed = 0
        self.counted: set[str] = set()
        self.halted_reason: str | None = None
        self._lock = threading.Lock()

    def add_failure(self, hostname: str) -> None:
        with self._lock:
            if hostname in self.counted:
                return
            self.counted.add(hostname)
            self.failed += 1
            self._check()

    def _check(self) -> None:
        if self.halted_reason is None and self.total and _pct(self.failed, self.total) > self.max_fail_percent:
            self.halted_reason = (f"{self.failed} of {self.total} devices failed "
                                  f"({_pct(self.failed, self.total):.0f}% > {self.max_fail_percent:g}%)")


def _failed(record: StepRecord | None) -> bool:
    return record is not None and record.status == "failed"


def _done(record: StepRecord | None) -> bool:
    return record is not None and record.status in DONE


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def _phase(name: str, results: list[tuple[str, str, str]]) -> PhaseResult:
    return PhaseResult(
        name=name,
        succeeded=tuple(n for n, s, _ in results if s == "succeeded"),
        failed=tuple(n for n, s, _ in results if s == "failed"),
        skipped=tuple(n for n, s, _ in results if s == "skipped"),
        reasons={n: m for n, s, m in results if s != "succeeded"},
    )
