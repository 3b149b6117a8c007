"""Resolve secret references. Only references live in inventories, never values.

`env` is built in. The Prefect layer registers `prefect_secret` (bigbang itself
never imports Prefect), so a Secret block works wherever flows run.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bigbang.errors import ConfigError
from bigbang.inventory.model import SecretRef

_resolvers: dict[str, Callable[[str], str]] = {}


def register_resolver(kind: str, resolver: Callable[[str], str]) -> None:
    _resolvers[kind] = resolver


def resolve(value: SecretRef | str | None, *, where: str = "") -> str:
    """The secret's value; plain strings (non-secret fields like a user name) pass through."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    suffix = f" (referenced by {where})" if where else ""
    if value.env is not None:
        secret = os.environ.get(value.env)
        if secret is None:
            raise ConfigError(f"environment variable {value.env} is not set{suffix}",
                              hint=f"export {value.env}=... before the run")
        return secret
    resolver = _resolvers.get("prefect_secret")
    if resolver is None:
        raise ConfigError(f"cannot read Prefect Secret block '{value.prefect_secret}'{suffix} outside a Prefect flow",
                          hint="run through `bigbang run`, or reference an environment variable instead")
    try:
        return resolver(value.prefect_secret or "")
    except Exception as exc:  # noqa: BLE001 - any lookup failure is a configuration problem
        raise ConfigError(f"cannot read Prefect Secret block '{value.prefect_secret}'{suffix}: {exc}") from exc
