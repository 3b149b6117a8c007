"""Prefect tasks of the weekend flow.

One task run per phase piece (prechecks, a server wave, a location), never per
device step: a task run costs ~10 ms and Prefect drops records past ~10,000
events per flow, so per-device truth lives in bigbang's ledger.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from bigbang.ledger_ref import resolve_ledger
from bigbang.runner import Runner
from bigbang.session import RunSession


@task(name="prechecks", cache_policy=NO_CACHE, persist_result=False)
def prechecks(run_id: str, ledger_url: str | None) -> dict[str, Any]:
    return asdict(Runner(RunSession.attach(run_id, resolve_ledger(ledger_url))).run_prechecks())


@task(name="server-wave", cache_policy=NO_CACHE, persist_result=False)
def server_wave(run_id: str, ledger_url: str | None, index: int) -> dict[str, Any]:
    return asdict(Runner(RunSession.attach(run_id, resolve_ledger(ledger_url))).run_wave(index))


@task(name="location", cache_policy=NO_CACHE, persist_result=False)
def location(run_id: str, ledger_url: str | None, location_id: str) -> dict[str, Any]:
    return asdict(Runner(RunSession.attach(run_id, resolve_ledger(ledger_url))).run_location(location_id))
