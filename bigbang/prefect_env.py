"""Prefect settings bigbang applies before the Prefect layer is imported.

Only defaults: anything the user set in the environment wins. These keep a
rehearsal's terminal free of Prefect's log lines and of the ephemeral server's
shutdown noise, and give the ephemeral server time to start on a cold machine.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's client-side telemetry and its "Prefect collects anonymous usage data" notice, printed on a
    # terminal by every run: the standard opt-out, so no banner comes between the user and the run.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
