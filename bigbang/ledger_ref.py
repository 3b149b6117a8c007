"""The ledger URL as it may travel in flow-run parameters: a reference, never its password.

Flow-run and task-run parameters are stored by Prefect and shown in its UI and
API, so a ledger URL with a password never goes there. `ledger_reference` gives
the URL with its password replaced by `***` (SQLAlchemy's own mask);
`resolve_ledger` turns it back into the full URL where the flow runs: in the
process that made the reference (it remembers the URL), or on a worker from its
own BIGBANG_LEDGER_URL, which must name the same database.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bigbang.errors import ConfigError

MASK = "***"
_known: dict[str, str] = {}  # reference -> full URL, for flows run in this process
_lock = threading.Lock()


def _masked(url: str) -> str:
    parsed = make_url(url)
    if not parsed.password:
        return url
    return parsed.render_as_string(hide_password=True)  # the password as `***`


def ledger_reference(url: str | None) -> str | None:
    """What a flow-run parameter may hold for `url`: the URL itself when it has no password."""
    if url is None:
        return None
    try:
        reference = _masked(url)
    except ArgumentError:
        return url  # not a URL at all: the ledger will say so
    if reference != url:
        with _lock:
            _known[reference] = url
    return reference


def is_reference(value: str | None) -> bool:
    try:
        return value is not None and make_url(value).password == MASK
    except ArgumentError:
        return False


def resolve_ledger(value: str | None) -> str | None:
    """The URL to open for a parameter made by `ledger_reference` (None stays None: the default ledger)."""
    if not is_reference(value):
        return value
    assert value is not None
    with _lock:
        known = _known.get(value)
    if known:
        return known
    own = os.environ.get("BIGBANG_LEDGER_URL")
    if own:
        try:
            if _masked(own) == value:
                return own
        except ArgumentError:
            pass
        raise ConfigError(f"this worker's BIGBANG_LEDGER_URL is not the run's ledger {value}",
                          hint="point BIGBANG_LEDGER_URL at the same database, with its password")
    raise ConfigError(f"the run's ledger {value} needs its password, which flow parameters never carry",
                      hint="set BIGBANG_LEDGER_URL (with the password) in this worker's environment")
