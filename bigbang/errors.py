"""One exception tree for bigbang.

`UserError` and its children are mistakes a user can fix (bad inventory, unknown
run id, a missing secret): the CLI prints them as one clear line. Anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class BigBangError(Exception):
    """Base of every error bigbang raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UserError(BigBangError):
    """Something the user can fix; shown without a traceback."""


@dataclass(frozen=True, order=True)
class Problem:
    """One inventory problem, located in the file that caused it."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '(root)'}: {self.message}"


class InventoryError(UserError):
    """The inventory has one or more problems; all of them are in `problems`."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        count = len(self.problems)
        super().__init__(
            f"inventory has {count} problem{'s' if count != 1 else ''}",
            hint="fix them and run `bigbang validate` again",
        )


class ConfigError(UserError):
    """Settings outside the inventory are wrong or missing (secrets, ledger URL...)."""


class RunError(UserError):
    """A run cannot start or resume as asked."""


class LiveModeUnavailable(RunError):
    """Live mode needs a connector this installation cannot use."""


class ConnectorError(BigBangError):
    """A connector could not do what a step asked. `transient` errors are retried; `command` is what ran
    (name, exit code, output tails) when a command failed. Connectors turn it into a failed `Outcome`."""

    def __init__(self, message: str, *, transient: bool = False, hint: str | None = None,
                 command: dict[str, Any] | None = None):
        super().__init__(message, hint=hint)
        self.transient = transient
        self.command = command


class LedgerError(UserError):
    """The run ledger cannot be read or written (full disk, read-only, corrupted, unreachable)."""


class LeaseLost(LedgerError):
    """Another process took over this run or location: this one may no longer write to it."""


class LeaseHeld(RunError):
    """Another live process executes this run (or location) now."""
