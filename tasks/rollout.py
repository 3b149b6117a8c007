"""Prefect tasks of the weekend flow.

One task run per phase piece (prechecks, a server wave, a location), never per
device step: a task run costs ~10 ms and Prefect drops records past ~10,000
events per flow, so per-device truth lives in bigbang's ledger. Each logs one line
(bigbang.run_log) for the Prefect UI's Logs tab.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bigbang import run_log
from bigbang.ledger_ref import resolve_ledger
from bigbang.runner import LocationResult, PhaseResult, Runner
from bigbang.session import RunSession


class _CompletedTaskRunLines(logging.Filter):
    """Leaves out Prefect's "Finished in state Completed()" line of each task run (INFO; other endings are
    ERRORs and stay): the UI shows the state, the location's own line says what it did, and at 250
    locations those lines were half of a run's log records sent to the API."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and isinstance(record.msg, str)
                    and record.msg.startswith("Finished in state Completed"))


logging.getLogger("prefect.task_runs").addFilter(_CompletedTaskRunLines())


# INFO, failures too: Prefect's console handler shows warnings on the terminal, which has its own summary.
def log_phase(result: PhaseResult) -> None:
    get_run_logger().info(run_log.phase_finished(result))


def log_location(result: LocationResult) -> None:
    get_run_logger().info(run_log.location_finished(result))


@task(name="prechecks", cache_policy=NO_CACHE, persist_result=False)
def prechecks(run_id: str, ledger_url: str | None) -> dict[str, Any]:
    session = RunSession.attach(run_id, resolve_ledger(ledger_url))
    get_run_logger().info(run_log.prechecks_started(session.plan))
    result = Runner(session).run_prechecks()
    log_phase(result)
    return asdict(result)


@task(name="server-wave", cache_policy=NO_CACHE, persist_result=False)
def server_wave(run_id: str, ledger_url: str | None, index: int) -> dict[str, Any]:
    result = Runner(RunSession.attach(run_id, resolve_ledger(ledger_url))).run_wave(index)
    log_phase(result)
    return asdict(result)


# The run name from the parameters: one Task for all locations (a `with_options` copy each cost ~0.3 ms).
@task(name="location", task_run_name="location-{location_id}", cache_policy=NO_CACHE, persist_result=False)
def location(run_id: str, ledger_url: str | None, location_id: str) -> dict[str, Any]:
    result = Runner(RunSession.attach(run_id, resolve_ledger(ledger_url))).run_location(location_id)
    log_location(result)
    return asdict(result)
