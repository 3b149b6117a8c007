"""One collection run: gather, deduplicate, prioritise, file, probe, sync.

`collect()` is what the hourly Prefect flow and `bigbang defects collect` call.
Every step's failure is recorded in the collection's errors instead of stopping
the rest: a probe that cannot run still lets the ledger's defects in, and a
ticket system that is down keeps its defects pending for the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bigbang.defects.sources import (
    choose_probe_targets,
    field_observations,
    probe,
    recovered_locations,
    report_observations,
    rollout_observations,
    settled_targets,
)
from bigbang.defects.tickets import SyncResult, sync_tickets, ticket_system
from bigbang.defects.triage import TECHNICAL_SOURCES
from bigbang.errors import UserError
from bigbang.secrets import resolve
from bigbang.store.defects import OPEN_STATES, DefectError, DefectQueue
from bigbang.store.ledger import Ledger


@dataclass
class CollectResult:
    collection_id: int
    run_id: str
    gathered: dict[str, int] = field(default_factory=dict)  # observations per source
    filed: dict[str, int] = field(default_factory=dict)  # ApplySummary totals
    probed: int = 0
    sync: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def latest_run(ledger: Ledger) -> str:
    runs = ledger.list_runs(1)
    if not runs:
        raise DefectError(f"no run in the ledger {ledger.safe_url}", hint="rehearse or run the rollout first")
    return runs[0]["run_id"]


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def collect(ledger_url: str | None = None, run_id: str | None = None, *, with_probe: bool = True,
            session: Any = None, now: float | None = None, actor: str = "collector") -> CollectResult:
    """Collect defects of a run (default: the latest) into the queue and the ticket system."""
    from bigbang.session import RunSession  # the session pulls in connectors; keep `defects list` light

    started = time.monotonic()
    ledger = session.ledger if session is not None else Ledger(ledger_url)
    run_id = session.run_id if session is not None else (run_id or latest_run(ledger))
    if session is None:
        session = RunSession.attach(run_id, ledger.url)
    inventory = session.inventory  # the run's frozen inventory: scoring never reads the YAML
    mode = str(getattr(session.options, "mode", "") or (ledger.get_run(run_id) or {}).get("mode") or "")
    queue = DefectQueue(ledger.engine)
    result = CollectResult(queue.start_collection(run_id), run_id)
    round_no = queue.collection_count()
    try:
        gathered = (rollout_observations(ledger, run_id) + recovered_locations(ledger, run_id)
                    + field_observations(ledger, run_id))
        pending = queue.pending_reports(run_id)
        gathered += report_observations(pending)
        for obs in gathered:
            result.gathered[obs.source] = result.gathered.get(obs.source, 0) + 1
        settled = settled_targets(ledger, run_id)
        _add(result.filed, queue.apply(gathered, inventory, now=now, actor=actor, run_id=run_id, mode=mode,
                                       settled=settled).to_dict())
        queue.mark_reports_processed([r["report_id"] for r in pending])

        if with_probe:
            affected = {d["target"] for d in queue.list(run_id=run_id, state=OPEN_STATES, limit=None)
                        if d["source"] in TECHNICAL_SOURCES}
            targets = choose_probe_targets(session.plan, affected, inventory.support.probe_sample_percent, round_no)

            def location_of(target: str) -> str | None:
                found = inventory.device_by_hostname.get(target)
                return found[0].id if found else None

            probed = probe(session.connector, session.plan, targets, round_no=round_no,
                           collection_id=result.collection_id, location_of=location_of)
            result.probed = probed.probed
            result.errors += probed.errors
            result.gathered["probe"] = len(probed.observations)
            _add(result.filed, queue.apply(probed.observations, inventory, now=now, actor="probe",
                                           run_id=run_id, mode=mode, settled=settled).to_dict())

        try:
            system = ticket_system(inventory.support.ticket_system, queue, resolve)
        except UserError as exc:  # e.g. the RT password's environment variable is not set
            sync = SyncResult(inventory.support.ticket_system.kind, errors=[f"ticket system not usable: {exc}"])
        else:
            try:
                sync = sync_tickets(queue, system)
            finally:
                system.close()
        result.sync = sync.to_dict()
        result.errors += sync.errors
    except Exception as exc:
        result.errors.append(f"collection failed: {exc.__class__.__name__}: {exc}")
        raise
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        queue.finish_collection(result.collection_id, {k: v for k, v in result.to_dict().items() if k != "errors"},
                                result.errors)
    return result
