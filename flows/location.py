"""The per-location flow: one location's work as its own flow run, so a worker can take it.

The weekend flow dispatches these through the `location` deployment (see
flows/dispatch.py) to the work queue of the location's region. A flow run that
dies with its worker is marked crashed by the server's zombie automation and
dispatched again; the re-run resumes from the ledger: steps that succeeded are
kept, and the simulated connector's `sim_effects` rows keep every device change
to exactly one.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from bigbang.ledger_ref import resolve_ledger
from bigbang.runner import Runner
from bigbang.session import RunSession
from flows.secrets import register_prefect_secrets
from tasks.rollout import log_location


@flow(name="bigbang-location", flow_run_name="{run_id}-{location_id}", persist_result=False, log_prints=False,
      retries=1, retry_delay_seconds=5)
def location(run_id: str, location_id: str, ledger_url: str | None = None) -> dict[str, Any]:
    """Run one location of a run; `ledger_url` None means this worker's BIGBANG_LEDGER_URL, and a
    reference (password `***`, see bigbang.ledger_ref) is completed from it."""
    register_prefect_secrets()
    session = RunSession.attach(run_id, resolve_ledger(ledger_url))
    result = Runner(session).run_location(location_id)
    session.ledger.flush()
    log_location(result)
    return asdict(result)
