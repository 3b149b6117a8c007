"""The weekend flow: prechecks, server waves in dependency order, then locations.

Each location task waits for the server waves holding its required servers and
for the previous location in its team's chain. Results are values: a halted or
blocked location is a result, not an exception, so neighbours carry on.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from bigbang import run_log
from bigbang.errors import ConfigError
from bigbang.ledger_ref import ledger_reference, resolve_ledger
from bigbang.plan import LocationPlan, Plan
from bigbang.session import RunOptions, RunSession
from flows import dispatch as dispatching
from flows.secrets import register_prefect_secrets
from tasks import rollout


def _flow_run_name() -> str:
    params = flow_run.parameters
    return params.get("run_id") or f"new run of {params.get('inventory')}"


@flow(name="bigbang-weekend", flow_run_name=_flow_run_name, persist_result=False, log_prints=False)
def weekend(run_id: str | None = None, ledger_url: str | None = None, dispatch: str = "local",
            inventory: str | None = None, mode: str = "rehearsal") -> dict[str, Any]:
    """Run `run_id`; or, when a schedule starts the weekend, start a new run of `inventory` in `mode`.

    `ledger_url` is never a URL with a password (the parameters are shown in Prefect's UI and API) but
    its reference, see bigbang.ledger_ref; the tasks get the same reference."""
    register_prefect_secrets()
    ledger_ref = ledger_reference(ledger_url)  # a password given anyway goes no further
    ledger_url = resolve_ledger(ledger_url)
    location_task = dispatching.location_task(dispatching.dispatch_mode(dispatch))  # run name: location-ID
    if run_id is None:
        if not inventory:
            raise ConfigError("the weekend flow needs a run_id, or an inventory to start a new run of")
        run_id = RunSession.start(inventory, RunOptions(mode=mode), ledger_url=ledger_url).run_id
    session = RunSession.attach(run_id, ledger_url)
    plan = session.plan
    get_run_logger().info(run_log.weekend_started(run_id, plan))

    pre = rollout.prechecks.with_options(task_run_name="prechecks").submit(run_id, ledger_ref)
    waves = []
    previous = pre
    for index in range(len(plan.waves)):
        previous = rollout.server_wave.with_options(task_run_name=f"servers-wave-{index + 1}").submit(
            run_id, ledger_ref, index, wait_for=[previous])  # type: ignore[call-overload]
        waves.append(previous)

    futures: dict[str, Any] = {}
    needs = location_upstream(plan)
    for loc in dispatch_order(plan):
        wave, after = needs[loc.id]
        upstream = ([futures[after]] if after else []) + ([waves[wave]] if wave is not None else [])
        futures[loc.id] = location_task.submit(run_id, ledger_ref, loc.id,  # named by its id
                                               wait_for=upstream or [pre])

    crashed: dict[str, str] = {}
    for loc_id, future in futures.items():
        future.wait()
        if not future.state.is_completed():
            crashed[loc_id] = str(future.state.message)
        elif isinstance(result := future.result(), dict) and result.get(dispatching.CRASHED_KEY):
            crashed[loc_id] = result[dispatching.CRASHED_KEY]
    for future in [pre, *waves]:
        future.wait()

    session.finish(crashed)
    for loc_id in sorted(crashed):  # its task or worker died before a location line was logged
        rollout.log_location(run_log.location_from_ledger(loc_id, session.ledger.location_result(run_id, loc_id)))
    return publish(session, crashed)


def dispatch_order(plan: Plan) -> list[LocationPlan]:
    """Locations by their position in their team chain: every chain's first location first.

    Prefect's thread pool starts task runs in submission order; this order keeps
    its threads on locations that can start, not on ones waiting for a predecessor.
    """
    position: dict[str, int] = {}
    for loc in plan.locations:
        position[loc.id] = position[loc.after_location] + 1 if loc.after_location else 0
    return sorted(plan.locations, key=lambda loc: position[loc.id])


def location_upstream(plan: Plan) -> dict[str, tuple[int | None, str | None]]:
    """What each location's task run waits for: (the server wave, the previous location of its crew), only
    those not implied by another; (None, None) waits for the prechecks.

    Each wave waits for the one before, and a location for the waves it needs, so a location finished means
    its waves finished: a location after one that needed the same waves or later ones waits for that one
    alone. Prefect resolves every upstream future of a task run on its event loop thread (a hop each: with
    all waves listed, 5 a location, most of the flow's own time at 250 locations)."""
    covered: dict[str, int] = {}  # location -> the last wave known finished once it has finished
    upstream: dict[str, tuple[int | None, str | None]] = {}
    for loc in dispatch_order(plan):  # a crew's previous location comes first
        own = max(loc.waits_for_waves, default=-1)
        implied = covered[loc.after_location] if loc.after_location else -1
        covered[loc.id] = max(own, implied)
        upstream[loc.id] = (own if own > implied else None, loc.after_location)
    return upstream


def publish(session: RunSession, crashed: dict[str, str]) -> dict[str, Any]:
    """The core has finished the run; attach its report to the flow run as artifacts (the same files the
    command's summary comes from: rendered once) and log its last line.

    Called in the flow run's body, so the artifacts belong to it (its Artifacts tab in the UI)."""
    files = session.report()
    data = files.data
    markdown = files.markdown.read_text(encoding="utf-8")
    key = run_log.artifact_key(session.run_id)
    create_markdown_artifact(key=key, markdown=markdown, description=f"bigbang report for {session.run_id}")
    create_table_artifact(key=key + "-locations", table=run_log.location_table(data),
                          description=f"per-location status of {session.run_id}")
    get_run_logger().info(run_log.run_finished(data))
    return {"run_id": session.run_id, "report": str(files.directory), "crashed": crashed}


def workers_for(plan: Plan) -> int:
    """A thread for every task run of the flow. A task run waiting for its upstream holds a thread, and on
    a simulated clock a location may wait for one that has not started yet (see bigbang.clock.Timeline):
    with fewer threads than task runs that one could be left without a thread."""
    return 2 + len(plan.waves) + len(plan.locations)


def preflight(ledger_url: str, dispatch: str | None) -> None:
    """Refuse a dispatch set-up that cannot work before a run is created in the ledger."""
    mode = dispatching.dispatch_mode(dispatch)
    dispatching.check_setup(ledger_url, mode)
    if mode == "dask":
        dispatching.task_runner(mode, 1)  # checks the scheduler address


def run_weekend(session: RunSession, dispatch: str | None = None) -> dict[str, Any]:
    """Run the flow in this process (Prefect's ephemeral mode, or PREFECT_API_URL's server).

    `dispatch` (or BIGBANG_DISPATCH) says where locations run; see flows/dispatch.py.
    """
    mode = dispatching.dispatch_mode(dispatch)
    dispatching.check_setup(session.ledger.url, mode)
    runner = dispatching.task_runner(mode, workers_for(session.plan))
    flow_dispatch = "deployments" if mode == "deployments" else "local"  # dask: the task runner does it
    if mode == "local":
        session.play_here()  # every unit in this process: they agree on the order of events
    return weekend.with_options(task_runner=runner)(session.run_id, ledger_reference(session.ledger.url), flow_dispatch)


def stop_local_server() -> None:
    """Stop the ephemeral Prefect server this process started, if any (an interrupted CLI exits at once)."""
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        process = server.server_process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)
