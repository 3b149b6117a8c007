"""The connector protocol: the one seam between a plan and the world.

A connector runs one `Action` (a step of the plan for one target) and returns an
`Outcome` value: that is the one way a step fails. Inside, a connector may raise
`ConnectorError` (which carries the command that failed) and turns it into an
outcome at its `run` boundary with `Outcome.from_error`; anything else escaping
`run` is a bug, recorded as a non-retryable failure with its traceback logged. Real connectors (vsphere,
ssh, winrm) and the simulated one used by rehearsals satisfy the same protocol.
Each connector type describes its settings with a pydantic model, which feeds
inventory validation and `bigbang connectors` docs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from bigbang.errors import ConnectorError


@dataclass(frozen=True)
class Action:
    """One attempt at one planned step."""

    step_id: str
    kind: str  # e.g. "ws.image"
    target: str  # hostname, server name or location id
    attempt: int  # 1-based
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one attempt did. `changed` is False when the target already was as asked."""

    ok: bool
    changed: bool = False
    message: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)
    transient: bool = True  # worth retrying when not ok

    @classmethod
    def failed(cls, message: str, *, transient: bool = True, **facts: Any) -> Outcome:
        return cls(ok=False, message=message, transient=transient, facts=facts)

    @classmethod
    def from_error(cls, error: ConnectorError, *, changed: bool = False, **facts: Any) -> Outcome:
        """The failed outcome for a `ConnectorError` a connector raised inside itself."""
        if error.command:
            facts["command"] = error.command
        return cls(ok=False, changed=changed, message=str(error), transient=error.transient, facts=facts)


@runtime_checkable
class Connector(Protocol):
    """Runs actions against real or simulated targets."""

    name: ClassVar[str]

    def run(self, action: Action) -> Outcome: ...

    def close(self) -> None: ...


@runtime_checkable
class ChecksApplied(Protocol):
    """Optional: a connector that can tell whether a step's change is already in place. A resume asks it
    about a step whose process died between its intent and its outcome; None means not applied (the step
    then runs again, and being idempotent changes only what differs)."""

    def applied(self, action: Action) -> Outcome | None: ...


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector may use besides its settings."""

    run_id: str
    inventory: Any  # bigbang.inventory.Inventory (Any avoids an import cycle)
    resolve_secret: Callable[..., str]  # (reference, where=...) -> the secret
    state: Any = None  # the run's Ledger (bigbang.store), for connectors that keep state in it
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorType:
    """A kind of connector: its settings model and how to make one."""

    name: str
    summary: str
    settings_model: type[BaseModel]
    step_kinds: frozenset[str]
    factory: str  # "module:callable" imported only when a run needs it (keeps pyvmomi etc. lazy)
    live: bool = True

    def create(self, settings: BaseModel | dict[str, Any], context: ConnectorContext) -> Connector:
        import importlib

        if not isinstance(settings, self.settings_model):
            # A run attached from the store (a Prefect worker) has its frozen inventory's settings as plain
            # data: validate them into the connector's model, as loading the inventory does.
            settings = self.settings_model.model_validate(
                settings.model_dump() if isinstance(settings, BaseModel) else settings or {})

        module_name, _, attr = self.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(settings, context)
