"""Resolve secret references. Only references live in inventories, never values.

`env` is built in. The Prefect layer registers `prefect_secret` (bigbang itself
never imports Prefect), so a Secret block works wherever flows run.
"""

from __future__ import annotations

import os
import stat
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


def read_owner_only_file(path: str, what: str, *, unreadable_hint: str) -> str:
    """The stripped text of a secret's file; refused when it cannot be read or others may read it."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc.__class__.__name__}", hint=unreadable_hint) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} is readable by others (mode {stat.S_IMODE(info.st_mode):o})",
                          hint=f"chmod 600 {path}")
    return text
