"""Prefect settings bigbang applies before the Prefect layer is imported.

Only defaults: anything the user set in the environment wins. These keep a
rehearsal's terminal free of Prefect's log lines and of the ephemeral server's
shutdown noise, and give the ephemeral server time to start on a cold machine.

The Prefect API's basic-auth string ("user:password") is never a plain-text
option: it comes from a reference, the name of an environment variable or a
file readable only by its owner. Clients (the CLI, workers, the flow runs they
start) find it in PREFECT_API_AUTH_STRING or in the file named by
BIGBANG_PREFECT_AUTH_FILE; `bigbang server` takes `--auth-env NAME` or
`--auth-file PATH` (default: that same file, or PREFECT_SERVER_API_AUTH_STRING).
"""

from __future__ import annotations

import logging
import os

from bigbang.errors import ConfigError

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

# With Prefect's logging level quieter than INFO (bigbang's default WARNING, or the user's), the flow and task
# runs' own loggers still pass INFO: the weekend's one line per phase, server wave and location reaches the
# Prefect UI's Logs tab, while Prefect's console handler keeps the terminal at the quiet level. These are
# overrides of Prefect's logging.yml by name; a user's own value of any of them wins.
RUN_LOGGERS = ("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL")
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"

AUTH_FILE_ENV = "BIGBANG_PREFECT_AUTH_FILE"


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    level = os.environ["PREFECT_LOGGING_LEVEL"].strip().upper()
    number = logging.getLevelName(level)
    if isinstance(number, int) and number > logging.INFO:
        for key in RUN_LOGGERS:
            os.environ.setdefault(key, "INFO")
        os.environ.setdefault(CONSOLE_LEVEL, level)
    if not os.environ.get("PREFECT_API_AUTH_STRING") and os.environ.get(AUTH_FILE_ENV):
        os.environ["PREFECT_API_AUTH_STRING"] = read_auth_file(os.environ[AUTH_FILE_ENV])


def read_auth_file(path: str) -> str:
    """The auth string in `path`; refused when others may read the file or it is not `user:password`."""
    from bigbang.secrets import read_owner_only_file

    text = read_owner_only_file(path, f"the Prefect auth file {path}", unreadable_hint=(
        f"write `user:password` into it and chmod 600 it (or unset {AUTH_FILE_ENV})"))
    return check_auth_string(text, f"the Prefect auth file {path}")


def read_auth_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} (the Prefect API auth string) is not set",
                          hint=f"export {name}='user:password' before starting the server")
    return check_auth_string(value.strip(), f"environment variable {name}")


def check_auth_string(text: str, where: str) -> str:
    user, sep, password = text.partition(":")
    if not sep or not user or len(password) < 12 or "\n" in text:
        raise ConfigError(f"{where} does not hold `user:password` with a password of at least 12 characters")
    return text
