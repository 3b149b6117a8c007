"""Where a weekend's locations run: in this process, on Prefect workers, or on a Dask cluster.

- `local`: one thread per team chain in the process that runs the weekend flow.
- `deployments`: each location becomes a flow run of the `bigbang-location/location`
  deployment, sent to the work queue of the location's region, so a worker that can
  reach that network runs it. A flow run that crashes (its worker died: the server's
  zombie automation marks it Crashed) is dispatched again and resumes from the ledger.
- `dask`: the weekend flow's tasks run on a dask.distributed cluster (prefect-dask).

Every mode but `local` needs a ledger all workers reach (PostgreSQL, or an
absolute SQLite path when every worker is on this machine).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.states import Crashed
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.engine import make_url

from bigbang import run_log
from bigbang.errors import ConfigError
from bigbang.ledger_ref import ledger_reference, resolve_ledger
from bigbang.session import RunSession
from tasks import rollout

DISPATCH_MODES = ("local", "deployments", "dask")
LOCATION_DEPLOYMENT = "bigbang-location/location"
MAX_ATTEMPTS = 3  # flow runs per location and resume generation: the first and two after crashes
CRASHED_KEY = "crashed"  # in a location task's result: why its location could not be run to its end


def dispatch_mode(requested: str | None) -> str:
    mode = requested or os.environ.get("BIGBANG_DISPATCH") or "local"
    if mode not in DISPATCH_MODES:
        raise ConfigError(f"unknown dispatch mode '{mode}' (from --dispatch or BIGBANG_DISPATCH)",
                          hint="use one of: " + ", ".join(DISPATCH_MODES))
    return mode


def check_setup(url: str, mode: str) -> None:
    """Before anything runs: workers need a server to take work from and a ledger they all reach."""
    if mode == "local":
        return
    if mode == "deployments" and not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("--dispatch deployments needs a Prefect server with the bigbang deployments",
                          hint="start `bigbang server`, export PREFECT_API_URL=http://HOST:4200/api, "
                               "run `bigbang deploy` and start workers with `bigbang worker`")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not os.path.isabs(parsed.database or ""):
        raise ConfigError(
            f"--dispatch {mode} needs a ledger every worker reaches, not {url}",
            hint="use --ledger postgresql://USER@HOST/DB (or BIGBANG_LEDGER_URL); "
                 "an absolute sqlite:////path works only when all workers are on this machine")


def ledger_parameter(url: str) -> str | None:
    """The ledger URL as a flow parameter: parameters are visible in the Prefect UI and API, so a
    password is replaced by a reference the worker completes from its own BIGBANG_LEDGER_URL."""
    return ledger_reference(url)


def task_runner(mode: str, threads: int):
    if mode == "dask":
        from prefect_dask import DaskTaskRunner

        address = os.environ.get("BIGBANG_DASK_ADDRESS")
        if not address:
            raise ConfigError("--dispatch dask needs the scheduler's address in BIGBANG_DASK_ADDRESS",
                              hint="e.g. export BIGBANG_DASK_ADDRESS=tcp://scheduler:8786")
        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=threads)


def location_task(mode: str):
    """The task that runs one location in this mode; all take (run_id, ledger_url, location_id)."""
    return dispatch_location if mode == "deployments" else rollout.location


def poll_seconds() -> float:
    return float(os.environ.get("BIGBANG_DISPATCH_POLL_SECONDS", "2"))


@task(name="dispatch-location", task_run_name="location-{location_id}", cache_policy=NO_CACHE, persist_result=False)
def dispatch_location(run_id: str, ledger_url: str | None, location_id: str) -> dict[str, Any]:
    """Run one location as a flow run of the location deployment and wait for it."""
    session = RunSession.attach(run_id, resolve_ledger(ledger_url))
    ledger = session.ledger
    region = session.inventory.location_by_id[location_id].region
    # A resumed run dispatches afresh; within one generation a repeated call finds the same flow run.
    generation = sum(1 for e in ledger.events(run_id) if e["kind"] == "run.resumed")
    parameters = {"run_id": run_id, "location_id": location_id, "ledger_url": ledger_parameter(ledger.url)}
    attempt = 1
    while True:
        flow_run = run_deployment(
            LOCATION_DEPLOYMENT, parameters=parameters, work_queue_name=region,
            idempotency_key=f"{run_id}:{location_id}:{generation}:{attempt}",
            flow_run_name=f"{run_id}-{location_id}" + (f"-attempt{attempt}" if attempt > 1 else ""),
            timeout=0)
        state = wait_for_final_state(flow_run.id, lambda waited: ledger.add_event(  # type: ignore[union-attr]
            run_id, "location.waiting_for_worker", location_id,
            f"no worker took it for {waited:.0f} s: start `bigbang worker --region {region or 'default'}`"))
        if state.is_completed():
            row = ledger.location_result(run_id, location_id)
            rollout.log_location(run_log.location_from_ledger(location_id, row))  # the worker's result
            return _location_row(row, location_id, flow_run)
        message = f"flow run {flow_run.name} ended {state.name}: {state.message or ''}"  # type: ignore[union-attr]
        if not state.is_crashed() or attempt == MAX_ATTEMPTS:
            # A result, not an exception: the weekend flow records the location as crashed and the run's
            # summary names it, without a traceback from Prefect's task engine.
            return {**_location_row(ledger.location_result(run_id, location_id), location_id, flow_run),
                    CRASHED_KEY: message}
        attempt += 1
        ledger.add_event(run_id, "location.redispatched", location_id,
                         f"{message}; dispatching again (attempt {attempt})")


class FlowRunStates:
    """The states of every flow run this process waits for, read by one thread in one request per interval.

    Each location's task used to ask for its own flow run every interval: with Höglandet's 250 locations
    dispatched at once and a 2 s interval that was 125 requests a second, and the Prefect server spent half
    a core answering them. Now the waiting tasks share one `read_flow_runs` of all of them per interval.
    A round that fails (the server is restarting) leaves the last states in place and the next one tries
    again; when reading has failed for FAILING_FOR seconds the waiters get the error, as each did before.
    """

    BATCH = 200  # ids per request: the server's default page size
    FAILING_FOR = 300.0

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._watched: set[Any] = set()
        self._states: dict[Any, Any] = {}
        self._round = 0  # rounds finished
        self._reading = False  # a round is under way, with the ids watched when it began
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def watch(self, flow_run_id) -> int:
        """Start following a flow run; returns the round its first state comes after."""
        with self._cv:
            self._watched.add(flow_run_id)
            self._ensure_poller()
            return self._round + 1 if self._reading else self._round  # the round under way does not have it

    def forget(self, flow_run_id) -> None:
        with self._cv:
            self._watched.discard(flow_run_id)
            self._states.pop(flow_run_id, None)

    def next_state(self, flow_run_id, after: int, timeout: float) -> tuple[int, Any]:
        """The state read in the first round after `after` (waiting up to `timeout`), and that round."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._round <= after and time.monotonic() < deadline:
                self._cv.wait(max(0.0, deadline - time.monotonic()))
            if self._error is not None:
                raise self._error
            self._ensure_poller()
            return self._round, self._states.get(flow_run_id)

    def _ensure_poller(self) -> None:  # lock held
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._poll, name="bigbang-flow-run-states", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                with get_client(sync_client=True) as client:
                    while True:
                        with self._cv:
                            ids = sorted(self._watched, key=str)
                            if not ids:
                                self._thread = None
                                return
                            self._reading = True
                        states: dict[Any, Any] = {}
                        for start in range(0, len(ids), self.BATCH):
                            chunk = ids[start:start + self.BATCH]
                            flow_runs = client.read_flow_runs(
                                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk))
                            states.update((run.id, run.state) for run in flow_runs)
                        failing_since = None
                        with self._cv:
                            self._error = None
                            self._reading = False
                            self._states.update({i: st for i, st in states.items() if i in self._watched})
                            self._round += 1
                            self._cv.notify_all()
                        time.sleep(poll_seconds())
            except Exception as exc:  # noqa: BLE001 - kept for the waiters; the server may be restarting
                failing_since = failing_since or time.monotonic()
                with self._cv:
                    self._reading = False
                    if time.monotonic() - failing_since > self.FAILING_FOR:
                        self._error = exc
                    self._round += 1
                    self._cv.notify_all()
                time.sleep(poll_seconds())


_STATES = FlowRunStates()


def wait_for_final_state(flow_run_id, on_no_worker):
    """The flow run's final state.

    A run a worker took (Pending) but never started — the worker died in between, so no
    heartbeat will ever mark it — is marked Crashed after BIGBANG_PENDING_LIMIT_SECONDS.
    A run no worker takes for a minute (none serves its queue) is reported once.
    """
    pending_limit = float(os.environ.get("BIGBANG_PENDING_LIMIT_SECONDS", "180"))
    pending_since = None
    created = time.monotonic()
    reported = False
    seen = _STATES.watch(flow_run_id)
    try:
        while True:
            seen, state = _STATES.next_state(flow_run_id, seen, timeout=10 * poll_seconds() + 30)
            if state is not None and state.is_final():
                return state
            if state is not None and state.is_scheduled() and not reported and time.monotonic() - created > 60:
                on_no_worker(time.monotonic() - created)
                reported = True
            if state is not None and state.is_pending():
                pending_since = pending_since or time.monotonic()
                if time.monotonic() - pending_since > pending_limit:
                    with get_client(sync_client=True) as client:
                        client.set_flow_run_state(flow_run_id, Crashed(
                            message=f"pending for {pending_limit:g} s: the worker that took it never started it"),
                            force=True)
                    pending_since = None
                    continue
            else:
                pending_since = None
    finally:
        _STATES.forget(flow_run_id)


def _location_row(row: dict[str, Any] | None, location_id: str, flow_run) -> dict[str, Any]:
    row = row or {}
    return {"location_id": location_id, "status": row.get("status"), "reason": row.get("reason"),
            "flow_run": str(flow_run.id), "worker": row.get("worker")}
