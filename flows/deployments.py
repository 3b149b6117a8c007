"""Registers bigbang on a Prefect server: work pool, region queues, deployments, crash detection.

Called by `bigbang deploy`. The deployments themselves come from prefect.yaml
through Prefect's own `prefect deploy`; this module adds what prefect.yaml cannot
declare: the work queues of the inventory's regions and the automation that marks
a location flow run Crashed when its worker stops sending heartbeats (a worker
machine that died leaves its flow runs "Running" for ever otherwise).
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

POOL = "bigbang"
CRASH_AUTOMATION = "bigbang: crash location runs whose worker is gone"
LOCATION_FLOW = "bigbang-location"


def ensure_pool(pool: str, queues: list[str]) -> list[str]:
    """Create the process work pool and its queues when missing; returns what was created."""
    created = []
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            created.append(f"work pool {pool}")
        for queue in queues:
            try:
                client.create_work_queue(name=queue, work_pool_name=pool)
                created.append(f"work queue {pool}/{queue}")
            except ObjectAlreadyExists:
                pass
    return created


def deploy_all(project_dir: Path, env: dict[str, str], prefect: str) -> subprocess.CompletedProcess:
    """Prefect's own `deploy --all` on prefect.yaml."""
    return subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=project_dir, env=env,
                          capture_output=True, text=True)


def ensure_crash_automation(crash_after: float) -> str:
    """(Re)create the automation that marks a silent location flow run Crashed.

    A flow run sends a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds
    (`bigbang worker` sets 30); `crash_after` must be longer than that. The silence is counted from the
    last heartbeat and also from the flow run entering Running: a worker killed between starting the
    flow run and its first heartbeat would otherwise leave it Running for ever.
    """
    try:
        Automation.read(name=CRASH_AUTOMATION).delete()  # type: ignore[attr-defined]  # sync in a sync context
    except ValueError:  # none yet (Automation.read raises ValueError when the name is unknown)
        pass
    automation = Automation(
        name=CRASH_AUTOMATION,
        description="A bigbang location flow run that stopped sending heartbeats lost its worker: mark it "
                    "Crashed so the weekend flow dispatches it again (the re-run resumes from the ledger).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": LOCATION_FLOW}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,  # type: ignore[call-arg]  # pydantic defaults
                                    message=f"no heartbeat for {crash_after:g} s: its worker is gone")],
    )
    automation.create()
    return CRASH_AUTOMATION
