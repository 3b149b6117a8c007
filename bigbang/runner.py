"""Executes parts of a plan: prechecks, a server wave, one location.

This is where the weekend's logic lives; the Prefect flow only sequences these
calls. Device steps are plain calls, recorded in the ledger as they finish:
a failed step is retried per policy and then recorded as failed; it never
raises past its device, and a failed device never stops its neighbours. A
location halts when more than its threshold of devices failed; the rollout
halts when the plan's halt rules say so.

Every wait goes through the unit's clock (`bigbang.clock`) and every recorded
time comes from it, so the runner does not know whether it plays a rehearsal.

Exactly once: a step that changes a device commits its intent before the
connector is called; a resume that finds an intent without an outcome asks the
device first (`applied`, for connectors that can tell) and records a change it
finds as succeeded with `changed=False`. What a resume finds finished, it
leaves as it is: a finished step, a skipped one, a location's verdict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bigbang.clock import Clock
from bigbang.connectors.base import Action, Connector, Outcome
from bigbang.plan import DevicePlan, LocationPlan, ServerPlan, Step
from bigbang.session import RunSession, location_unit, wave_unit
from bigbang.status import DeviceStatus, LocationStatus, StepStatus
from bigbang.store import StepRecord, now

log = logging.getLogger("bigbang.runner")

Known = dict[str, StepRecord]


@dataclass(frozen=True)
class LocationResult:
    location_id: str
    status: LocationStatus
    reason: str
    devices: int
    devices_failed: int
    devices_skipped: int

    @property
    def ok(self) -> bool:
        return self.status == LocationStatus.SUCCEEDED


@dataclass(frozen=True)
class PhaseResult:
    name: str
    succeeded: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)


class Runner:
    """Runs plan pieces for one run, given its session."""

    def __init__(self, session: RunSession):
        self.session = session
        self.plan = session.plan
        self.policy = session.plan.policy
        self.ledger = session.ledger
        self.run_id = session.run_id
        self.options = session.options
        self._intents: dict[str, int] | None = None
        self._intents_lock = threading.Lock()

    def _open_intent(self, step_id: str) -> int | None:
        """The attempt of an intent a dead process left for this step (read once per runner)."""
        with self._intents_lock:
            if self._intents is None:
                self._intents = self.ledger.open_intents(self.run_id)
            return self._intents.get(step_id)

    # ------------------------------------------------------------ one step
    def execute(self, step: Step, scope: str, known: Known, clock: Clock, intended: bool = False) -> StepRecord:
        """Run one step and record it; `intended`: its first attempt's intent is committed already."""
        prev = known.get(step.id)
        if prev is not None and self._kept(prev):
            if prev.clock_end is not None:
                clock.sleep_until(prev.clock_end)  # keeps a resumed timeline where it was
            return prev
        connector = self.session.connector(step.connector)
        changing = changes_device(step)
        if changing:
            interrupted_at = self._open_intent(step.id)
            if interrupted_at is not None:
                settled = self._settle(connector, step, scope, interrupted_at, prev, known, clock)
                if settled is not None:
                    return settled
        started, clock_start = now(), clock.now()
        self._record(step, scope, StepStatus.RUNNING, started_at=started, clock_start=clock_start)
        attempts = self.policy.retries + 1
        outcome = Outcome(ok=False, message="not attempted")
        attempt = 0
        for attempt in range(1, attempts + 1):
            if changing and not (intended and attempt == 1):  # committed before the device is touched;
                self.ledger.record_intent(self.run_id, step.id, scope, attempt)  # settled by the outcome
            outcome = self._attempt(connector, step, attempt)
            if outcome.ok or not outcome.transient or attempt == attempts:
                break
            clock.sleep(self.policy.retry_delay)
        record = self._record(
            step, scope, StepStatus.SUCCEEDED if outcome.ok else StepStatus.FAILED, attempts=attempt,
            changed=outcome.changed, message=outcome.message, facts=dict(outcome.facts), started_at=started,
            finished_at=now(), clock_start=clock_start, clock_end=clock.now(),
        )
        known[step.id] = record
        return record

    def _kept(self, prev: StepRecord) -> bool:
        """Whether a step a resume finds recorded stays as it is: finished, and not a failure to retry."""
        return prev.finished and (prev.status == StepStatus.SUCCEEDED or not self.options.retry_failed)

    def _settle(self, connector: Connector, step: Step, scope: str, attempt: int, prev: StepRecord | None,
                known: Known, clock: Clock) -> StepRecord | None:
        """A process died between this step's intent and its outcome: ask the device whether the change is in
        place. The record of a change found there; None when it is not (or the connector cannot tell: its
        step reads the device's facts and changes only what differs, so running it again is safe)."""
        check = getattr(connector, "applied", None)
        if check is None:
            return None
        try:
            outcome = check(Action(step.id, step.kind, step.target, attempt, step.params))
        except Exception:  # noqa: BLE001 - could not tell: the idempotent step decides
            log.exception("connector %s could not tell whether %s was applied", step.connector, step.id)
            return None
        if outcome is None or not outcome.ok:
            return None
        t, c = now(), clock.now()
        start = prev.clock_start if prev is not None and prev.clock_start is not None else c
        record = self._record(
            step, scope, StepStatus.SUCCEEDED, attempts=attempt, changed=False,
            message=f"{outcome.message or 'already as planned'} (applied before the interruption)",
            facts=dict(outcome.facts), started_at=prev.started_at if prev is not None and prev.started_at else t,
            finished_at=t, clock_start=min(start, c), clock_end=c,
        )
        known[step.id] = record
        return record

    def _attempt(self, connector: Connector, step: Step, attempt: int) -> Outcome:
        try:
            return connector.run(Action(step.id, step.kind, step.target, attempt, step.params))
        except Exception as exc:  # noqa: BLE001 - a connector bug must not stop the location
            log.exception("connector %s raised on %s", step.connector, step.id)
            return Outcome(ok=False, message=f"unexpected error: {exc.__class__.__name__}: {exc}", transient=False)

    def skip(self, step: Step, scope: str, reason: str, known: Known, clock: Clock) -> StepRecord:
        prev = known.get(step.id)
        if prev is not None and (prev.finished or prev.status == StepStatus.SKIPPED):
            return prev  # a skip found on resume stays as it was recorded
        t = clock.now()
        record = self._record(step, scope, StepStatus.SKIPPED, message=reason, finished_at=now(),
                              clock_start=t, clock_end=t)
        known[step.id] = record
        return record

    def _record(self, step: Step, scope: str, status: StepStatus, **values: Any) -> StepRecord:
        record = StepRecord(step_id=step.id, scope=scope, target=step.target, kind=step.kind, status=status, **values)
        self.ledger.record_step(self.run_id, record)
        return record

    def _internal(self, step: Step, scope: str, ok: bool, message: str, known: Known, clock: Clock,
                  facts: dict[str, Any] | None = None, since: float | None = None) -> StepRecord:
        prev = known.get(step.id)
        status = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
        if prev is not None and (prev.status == StepStatus.SUCCEEDED
                                 or (prev.status == status and prev.message == message)):
            return prev  # the same decision as before keeps its record (and times)
        t, c = now(), clock.now()
        record = self._record(step, scope, status, attempts=1,
                              message=message, facts=facts or {}, started_at=t, finished_at=t,
                              clock_start=c if since is None else since, clock_end=c)
        known[step.id] = record
        return record

    # ------------------------------------------------------------ when a unit may start
    def _end_of(self, step_ids: Iterable[str], fallback: float) -> float:
        end = self.ledger.clock_end(self.run_id, step_ids)
        return max(end, fallback) if end is not None else fallback

    def prechecks_end(self) -> float:
        return self._end_of(self.plan.precheck_step_ids, 0.0)

    def wave_end(self, index: int) -> float:
        start = self.prechecks_end() if index == 0 else self.wave_end(index - 1)
        return self._end_of(self.plan.wave_step_ids(index), start)

    def location_start(self, loc: LocationPlan) -> float:
        """When its slot, the server waves it needs and its crew's previous location allow."""
        ready = [self.wave_end(i) for i in loc.waits_for_waves] or [self.prechecks_end()]
        if loc.after_location:
            ready.append(self._end_of([self.plan.location(loc.after_location).verify.id], 0.0))
        return max([loc.start_offset or 0.0, *ready])

    def _open(self, unit: str, start: float) -> Clock:
        clock = self.session.clock_for(unit, start)
        clock.sleep_until(start)
        if self.session.timeline is not None:  # others' halts before `start` are known once all got there
            self.session.timeline.wait_for(unit, start)
        return clock

    # ------------------------------------------------------------ servers
    def run_prechecks(self) -> PhaseResult:
        clock = self._open("prechecks", 0.0)
        try:
            with self.session.servers_lease():  # a second executor of the prechecks cannot write
                known = self.ledger.step_results(self.run_id, scope="servers")
                halted = self.ledger.halted_reason(self.run_id, by=clock.now())
                results = clock.parallel(list(self.plan.servers),
                                         lambda srv: self._server_steps(srv, srv.prechecks, known, halted, clock),
                                         self.options.parallel_servers, "bigbang-server")
                self.ledger.flush()
        finally:
            clock.close()
        return _phase("prechecks", results)

    def run_wave(self, index: int) -> PhaseResult:
        clock = self._open(wave_unit(index), self.prechecks_end() if index == 0 else self.wave_end(index - 1))
        try:
            with self.session.servers_lease():  # a second executor of the wave cannot write
                known = self.ledger.step_results(self.run_id, scope="servers")
                halted = self.ledger.halted_reason(self.run_id, by=clock.now())
                wave = [s for s in self.plan.servers if s.wave == index]
                results = clock.parallel(wave,
                                         lambda srv: self._server_steps(srv, srv.steps, known, halted, clock),
                                         self.options.parallel_servers, "bigbang-server")
                self.ledger.flush()
                phase = _phase(f"servers wave {index + 1}", results)
                if phase.failed and self.policy.halt_on_server_failure:
                    self.ledger.halt_run(self.run_id,
                                         f"server {phase.failed[0]} failed: {phase.reasons[phase.failed[0]]}",
                                         at=clock.now())
        finally:
            clock.close()
        return phase

    def _server_steps(self, srv: ServerPlan, steps: Iterable[Step], known: Known, halted: str | None,
                      clock: Clock) -> tuple[str, StepStatus, str]:
        blocker = f"rollout halted: {halted}" if halted else None
        own = {step.id for step in steps}  # run in order below: one left running by a crash runs again
        for dep_step in (s for step in steps for s in step.after if s not in own):
            rec = known.get(dep_step)
            if rec is not None and rec.status != StepStatus.SUCCEEDED and blocker is None:
                blocker = f"{dep_step.split(':')[0]} not ready ({rec.status}: {rec.message})"
        status, message = StepStatus.SUCCEEDED, ""
        for step in steps:
            if blocker:
                self.skip(step, "servers", blocker, known, clock)
                if status == StepStatus.SUCCEEDED:
                    status, message = StepStatus.SKIPPED, blocker
                continue
            rec = self.execute(step, "servers", known, clock)
            if rec.status != StepStatus.SUCCEEDED:
                blocker = f"{step.kind} failed: {rec.message}"
                status, message = StepStatus.FAILED, rec.message
        return srv.name, status, message

    # ------------------------------------------------------------ locations
    def run_location(self, location_id: str) -> LocationResult:
        loc = self.plan.location(location_id)
        start = self.location_start(loc)
        clock = self._open(location_unit(loc.id), start)
        try:
            with self.session.location_lease(loc.id):
                return self._location(loc, clock)
        finally:
            clock.close()

    def _finished_before(self, loc: LocationPlan, row: dict[str, Any] | None, clock: Clock) -> LocationResult | None:
        """The result of a location a resume finds finished, which it leaves untouched; None if it has work."""
        if row is None:
            return None
        status = LocationStatus(row["status"])
        if status != LocationStatus.SUCCEEDED and not (
                status in (LocationStatus.COMPLETED_WITH_FAILURES, LocationStatus.HALTED)
                and not self.options.retry_failed):
            return None
        if row["clock_end"] is not None:
            clock.sleep_until(row["clock_end"])  # keeps a resumed timeline where it was
        return LocationResult(loc.id, status, row["reason"], row["devices"], row["devices_failed"],
                              row["devices_skipped"])

    def _location(self, loc: LocationPlan, clock: Clock) -> LocationResult:
        row = self.ledger.location_result(self.run_id, loc.id)
        done = self._finished_before(loc, row, clock)
        if done is not None:
            return done
        started, clock_start = now(), clock.now()
        known = self.ledger.step_results(self.run_id, scope=loc.id)
        total = len(loc.devices)
        # A location blocked or skipped before is marked running only once it gets past that again
        fresh = row is None or row["status"] in (LocationStatus.PENDING, LocationStatus.RUNNING,
                                                 LocationStatus.CRASHED)
        if fresh:
            self.ledger.record_location(self.run_id, loc.id, LocationStatus.RUNNING, devices=total,
                                        started_at=started, clock_start=clock_start)
        self._wait_for_start(loc, clock)
        halted = self.ledger.halted_reason(self.run_id, by=clock.now())
        blocker = f"rollout halted: {halted}" if halted else self._prerequisites(loc, known, clock)
        if blocker:
            status = LocationStatus.SKIPPED if halted else LocationStatus.BLOCKED
            if not halted:
                self._internal(loc.precheck, loc.id, False, blocker, known, clock)
            else:
                self.skip(loc.precheck, loc.id, blocker, known, clock)
            for device in loc.devices:
                for step in device.steps:
                    self.skip(step, loc.id, blocker, known, clock)
            self.skip(loc.signoff, loc.id, blocker, known, clock)
            self.skip(loc.verify, loc.id, blocker, known, clock)
            return self._finish_location(loc, status, blocker, total, 0, total, started, clock_start, clock, row)
        if not fresh:
            self.ledger.record_location(self.run_id, loc.id, LocationStatus.RUNNING, devices=total,
                                        started_at=started, clock_start=clock_start)

        state = _LocationState(total=total, max_fail_percent=loc.max_fail_percent)
        if not self.options.retry_failed:  # failures recorded before a crash still count after resume
            for device in loc.devices:
                if any(_failed(known.get(s.id)) for s in device.steps):
                    state.add_failure(device.hostname)

        outcomes = clock.parallel(list(loc.devices), lambda device: self._device(loc, device, known, state, clock),
                                  loc.parallel_devices, f"bigbang-{loc.id}")
        failed = outcomes.count(DeviceStatus.FAILED)
        skipped = outcomes.count(DeviceStatus.SKIPPED)
        if state.halted_reason:
            self.skip(loc.signoff, loc.id, f"location halted: {state.halted_reason}", known, clock)
        else:
            self._signoff(loc, known, clock)
        counts = {"failed": failed, "skipped": skipped, "devices": total}
        if state.halted_reason:
            status, reason = LocationStatus.HALTED, state.halted_reason
            self._internal(loc.verify, loc.id, False, f"halted: {reason}", known, clock, counts)
        else:
            status = LocationStatus.SUCCEEDED if failed == 0 else LocationStatus.COMPLETED_WITH_FAILURES
            reason = (f"{total - failed} of {total} devices done" if failed == 0 else
                      f"{failed} of {total} devices failed ({_pct(failed, total):.0f}% <= {loc.max_fail_percent:g}%)")
            self._internal(loc.verify, loc.id, True, reason, known, clock, counts)
        return self._finish_location(loc, status, reason, total, failed, skipped, started, clock_start, clock)

    def _signoff(self, loc: LocationPlan, known: Known, clock: Clock) -> None:
        """The gate: the location's work is done only when its technician signs it off.

        The gate waits for a sign-off in the ledger (field app or `bigbang field signoff`), so it
        survives a restart of the orchestrator: a resumed run finds it there. A plan may give the
        step to a connector instead (a rehearsal's simulated technician).
        """
        prev = known.get(loc.signoff.id)
        if prev is not None and prev.finished:
            return
        if not loc.signoff.internal:
            self.execute(loc.signoff, loc.id, known, clock)
            return
        since = clock.now()
        signed = self._wait_for_signoff(loc.id, clock)
        if signed is None:
            self._internal(loc.signoff, loc.id, False, "no sign-off before the gate's timeout", known, clock,
                           since=since)
        else:
            self._internal(loc.signoff, loc.id, True, f"signed off by {signed['signed_by']}", known, clock,
                           {"signed_by": signed["signed_by"], "note": signed["note"]}, since=since)

    def _wait_for_signoff(self, location_id: str, clock: Clock, poll: float = 2.0) -> dict[str, Any] | None:
        deadline = clock.now() + self.policy.signoff_timeout
        while True:
            signed = self.ledger.signoff(self.run_id, location_id)
            if signed is not None or clock.now() >= deadline:
                return signed
            clock.sleep(min(poll, max(0.05, deadline - clock.now())))

    def _wait_for_start(self, loc: LocationPlan, clock: Clock, poll: float = 2.0) -> str:
        """Hold a scheduled location until it may start, as the plan's start rule says; what released it."""
        from bigbang.schedule.start import wait_for_start

        if loc.start_offset is None:
            return "slot"
        return wait_for_start(self.ledger, self.run_id, loc.id, loc.start_offset, self.policy, clock, poll)

    def _prerequisites(self, loc: LocationPlan, known: Known, clock: Clock) -> str | None:
        prev = known.get(loc.precheck.id)
        if prev is not None and prev.status == StepStatus.SUCCEEDED:
            return None
        needed = list(loc.precheck.after)
        results = self.ledger.step_results(self.run_id, step_ids=needed) if needed else {}
        missing = [sid.split(":")[0] for sid in needed
                   if results.get(sid) is None or results[sid].status != StepStatus.SUCCEEDED]
        if missing:
            details = []
            for name in missing[:5]:
                rec = results.get(f"{name}:srv.verify")
                details.append(f"{name} ({rec.status}: {rec.message})" if rec else f"{name} (not provisioned)")
            return "required servers not ready: " + ", ".join(details)
        self._internal(loc.precheck, loc.id, True, f"{len(needed)} required servers ready", known, clock)
        return None

    def _device(self, loc: LocationPlan, device: DevicePlan, known: Known, state: _LocationState,
                clock: Clock) -> DeviceStatus:
        blocker = None
        result = DeviceStatus.SUCCEEDED
        intended = self._intend(device, loc.id, known, state)
        for step in device.steps:
            prev = known.get(step.id)
            if blocker is None and state.halted_reason and not (prev is not None and prev.finished):
                blocker = f"location halted: {state.halted_reason}"
                result = DeviceStatus.SKIPPED
            if blocker:
                self.skip(step, loc.id, blocker, known, clock)
                continue
            rec = self.execute(step, loc.id, known, clock, intended=step.id in intended)
            if rec.status == StepStatus.FAILED:
                blocker = f"{step.kind} failed"
                result = DeviceStatus.FAILED
            elif rec.status == StepStatus.SKIPPED:
                blocker, result = rec.message, DeviceStatus.SKIPPED
        if result == DeviceStatus.FAILED:
            state.add_failure(device.hostname)
        return result

    def _intend(self, device: DevicePlan, scope: str, known: Known, state: _LocationState) -> set[str]:
        """Commit the intents of the device's changing steps that are to run, in one wait before the first
        (each step waited for its own before: most of a rehearsal's waiting). A step that does not get to
        run (an earlier one failed) is settled by its skip; a crash leaves its intent open, and a resume asks
        the device before running it, as for a step that had started. Steps an interrupted process left an
        intent for are settled one by one (`execute`)."""
        if state.halted_reason:
            return set()
        todo: list[tuple[str, int]] = []
        for step in device.steps:
            prev = known.get(step.id)
            if prev is not None and self._kept(prev):
                continue
            if changes_device(step) and self._open_intent(step.id) is None:
                todo.append((step.id, 1))
        self.ledger.record_intents(self.run_id, scope, todo)
        return {step_id for step_id, _ in todo}

    def _finish_location(self, loc: LocationPlan, status: LocationStatus, reason: str, total: int, failed: int,
                         skipped: int, started: float, clock_start: float, clock: Clock,
                         before: dict[str, Any] | None = None) -> LocationResult:
        same = before is not None and (before["status"], before["reason"], before["devices"], before["devices_failed"],
                                       before["devices_skipped"]) == (status, reason, total, failed, skipped)
        if not same:  # the same verdict as a resume found keeps its record and times
            self.ledger.record_location(self.run_id, loc.id, status, reason=reason, devices=total,
                                        devices_failed=failed, devices_skipped=skipped, started_at=started,
                                        finished_at=now(), clock_start=clock_start, clock_end=clock.now())
        self.ledger.flush(running=False)  # its own steps are all final; others' running states need not wait
        if status.stopped:
            self._check_rollout_halt(clock)
        return LocationResult(loc.id, status, reason, total, failed, skipped)

    def _check_rollout_halt(self, clock: Clock) -> None:
        limit = self.policy.halt_failed_locations_percent
        if limit is None:
            return
        at = clock.now()
        results = self.ledger.location_results(self.run_id)
        bad = [lid for lid, r in results.items() if LocationStatus(r["status"]).stopped
               and (r["clock_end"] is None or r["clock_end"] <= at)]
        total = len(self.plan.locations)
        if total and _pct(len(bad), total) > limit:
            self.ledger.halt_run(self.run_id, f"{len(bad)} of {total} locations halted or blocked "
                                              f"({_pct(len(bad), total):.0f}% > {limit:g}%)", at=at)


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
            if self.halted_reason is None and self.total and _pct(self.failed, self.total) > self.max_fail_percent:
                self.halted_reason = (f"{self.failed} of {self.total} devices failed "
                                      f"({_pct(self.failed, self.total):.0f}% > {self.max_fail_percent:g}%)")


def changes_device(step: Step) -> bool:
    """Whether a step changes its target (and so records an intent first); reading facts does not."""
    return not step.internal and not step.kind.endswith((".verify", ".precheck"))


def _failed(record: StepRecord | None) -> bool:
    return record is not None and record.status == StepStatus.FAILED


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def _phase(name: str, results: list[tuple[str, StepStatus, str]]) -> PhaseResult:
    return PhaseResult(
        name=name,
        succeeded=tuple(n for n, s, _ in results if s == StepStatus.SUCCEEDED),
        failed=tuple(n for n, s, _ in results if s == StepStatus.FAILED),
        skipped=tuple(n for n, s, _ in results if s == StepStatus.SKIPPED),
        reasons={n: m for n, s, m in results if s != StepStatus.SUCCEEDED},
    )
