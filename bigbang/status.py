"""Status values: what a step, a location and a run can be. `StrEnum`s, so they store and print as text."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    REHEARSAL = "rehearsal"
    LIVE = "live"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        """A resume does not redo a finished step (a failed one only with --retry-failed)."""
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED)

    @property
    def final(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


class LocationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    HALTED = "halted"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    CRASHED = "crashed"

    @property
    def stopped(self) -> bool:
        """Counts towards the rollout's halt rule `failed_locations_percent`."""
        return self in (LocationStatus.HALTED, LocationStatus.BLOCKED)


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    HALTED = "halted"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


class DeviceStatus(StrEnum):
    """A device's status from its steps' statuses (computed in one place: `device_status`)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


def device_status(step_statuses: list[StepStatus | str | None]) -> DeviceStatus:
    """The one rule for a device's status from its steps' (None: not recorded yet): failed if any step
    failed; skipped if any was skipped; succeeded if all succeeded; running while any runs or some are
    done; else pending."""
    states = {StepStatus(s) if s is not None else StepStatus.PENDING for s in step_statuses}
    if StepStatus.FAILED in states:
        return DeviceStatus.FAILED
    if StepStatus.SKIPPED in states:
        return DeviceStatus.SKIPPED
    if states <= {StepStatus.SUCCEEDED}:
        return DeviceStatus.SUCCEEDED if states else DeviceStatus.PENDING
    if states & {StepStatus.RUNNING, StepStatus.SUCCEEDED}:
        return DeviceStatus.RUNNING
    return DeviceStatus.PENDING
