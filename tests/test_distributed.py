"""The demo rehearsal through Prefect deployments on a real server, with a worker killed mid-run.

Real peers: a PostgreSQL cluster (Prefect's database and the ledger), Redis (the
server's event broker), `prefect server start`, two `bigbang worker` processes.
The workers serve the demo's two region queues; while a location runs, the worker
running it is killed with SIGKILL together with its flow-run process (a machine
that died). The server's crash automation marks that flow run Crashed, the weekend
flow dispatches the location again, and the re-run resumes from the ledger.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bigbang.inventory import load_inventory
from bigbang.store.ledger import FINAL
from bigbang.plan import build_plan
from tests.conftest import DEMO
from tests.peers import free_port
from tests.peers.postgres import postgres  # noqa: F401 - fixture
from tests.peers.prefect_server import api_post, prefect_server, stop_group  # noqa: F401 - fixture
from tests.peers.redis import redis  # noqa: F401 - fixture

REGIONS = {"HST-001": "nord", "HST-014": "syd", "HST-027": "syd"}
CHANGING = ("ws.prestage", "ws.image", "tc.reassign", "srv.snapshot", "srv.provision")


def regional_demo(tmp_path: Path) -> Path:
    """The demo inventory with a region per location (the work queue of the workers near it)."""
    inventory = tmp_path / "inventory"
    shutil.copytree(DEMO, inventory)
    for path in (inventory / "locations").glob("*.yaml"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        loc_id = next(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("- id:"))
        at = next(i for i, line in enumerate(lines) if line.strip().startswith("team:"))
        indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
        lines.insert(at + 1, f"{indent}region: {REGIONS[loc_id]}\n")
        path.write_text("".join(lines), encoding="utf-8")
    return inventory


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the flow-run processes a worker started, in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def flow_runs(api_url: str, name_like: str) -> list[dict]:
    """Flow runs read straight from the server's REST API (a second client beside Prefect's own)."""
    return api_post(api_url, "/flow_runs/filter", {  # type: ignore[return-value]
        "flow_runs": {"name": {"like_": name_like}}, "limit": 200, "offset": 0, "sort": "START_TIME_ASC"})


@pytest.mark.timeout(480)  # ~150 s alone; several times that on a machine busy with other suites
def test_worker_killed_mid_location_every_step_exactly_once(tmp_path, bb_env, prefect_server, postgres):  # noqa: F811
    inventory = regional_demo(tmp_path)
    ledger_url = postgres.create_database()
    env = prefect_server.client_env(bb_env)
    env.update(BIGBANG_DISPATCH_POLL_SECONDS="1", BIGBANG_PENDING_LIMIT_SECONDS="45")

    def bigbang(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bigbang", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, **kw)

    deployed = bigbang("deploy", str(inventory), "--crash-after", "50")
    assert deployed.returncode == 0, deployed.stderr
    assert "queues: default, nord, syd" in " ".join(deployed.stderr.split())

    workers = {}
    for name in ("worker-a", "worker-b"):
        workers[name] = subprocess.Popen(
            [sys.executable, "-m", "bigbang", "worker", "--name", name, "--region", "nord", "--region", "syd"],
            env=env, cwd=tmp_path, start_new_session=True, stdout=open(tmp_path / f"{name}.log", "w"),
            stderr=subprocess.STDOUT)
    run_id = "run-distributed-kill"
    run = subprocess.Popen(
        [sys.executable, "-m", "bigbang", "run", str(inventory), "--dispatch", "deployments", "--ledger", ledger_url,
         "--compression", "500", "--quiet", "--run-id", run_id],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = create_engine(ledger_url)
    try:
        # Wait until a location is half done on some worker, then kill that worker's machine.
        killed: list[str] = []
        deadline = time.monotonic() + 240
        while not killed and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)
            try:
                with engine.connect() as conn:
                    busy = conn.execute(text(
                        "SELECT l.location_id, l.worker FROM locations l WHERE l.run_id = :r AND l.status = 'running'"
                        " AND (SELECT count(*) FROM steps s WHERE s.run_id = l.run_id AND s.scope = l.location_id"
                        "      AND s.status = 'succeeded' AND s.kind IN ('ws.image', 'tc.reassign')) >= 2"),
                        {"r": run_id}).all()
            except Exception:  # noqa: BLE001 - the ledger's tables appear with the run
                continue
            for _, worker in busy:
                pid = int(worker.rsplit(":", 1)[1])
                process = next((p for p in workers.values() if pid in descendants(p.pid)), None)
                if process is None:
                    continue
                victims = [process.pid, *descendants(process.pid)]
                for victim in victims:
                    try:
                        os.kill(victim, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                with engine.connect() as conn:  # every location that worker was running dies with it
                    running = conn.execute(text("SELECT location_id, worker FROM locations WHERE run_id = :r"
                                                " AND status = 'running'"), {"r": run_id}).all()
                killed = sorted(loc for loc, w in running if int(w.rsplit(":", 1)[1]) in victims)
                break
        assert killed, "no location was caught mid-run on a worker"
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        for process in workers.values():
            stop_group(process)

    assert run.returncode == 1, f"{stdout}\n{stderr}"  # the demo's injected thin client failure: exit 1

    plan = build_plan(load_inventory(inventory), "rehearsal")
    planned = {step.id: step for step in plan.steps()}
    with engine.connect() as conn:
        steps = conn.execute(text("SELECT step_id, status FROM steps WHERE run_id = :r"), {"r": run_id}).all()
        effects = conn.execute(text("SELECT step_id FROM sim_effects WHERE run_id = :r"), {"r": run_id}).all()
        locations = dict(conn.execute(text("SELECT location_id, status FROM locations WHERE run_id = :r"),
                                      {"r": run_id}).all())
        status = conn.execute(text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one()
        redispatched = conn.execute(text(
            "SELECT subject FROM events WHERE run_id = :r AND kind = 'location.redispatched'"), {"r": run_id}).all()
    engine.dispose()

    # Every planned step exactly once, all final; every change applied exactly once.
    assert sorted(s for s, _ in steps) == sorted(planned)
    assert {st for _, st in steps} <= set(FINAL), [(s, st) for s, st in steps if st not in FINAL]
    succeeded_changes = sorted(s for s, st in steps if st == "succeeded" and planned[s].kind in CHANGING)
    assert sorted(s for (s,) in effects) == succeeded_changes
    assert status == "completed"
    assert set(locations) == set(REGIONS)
    assert set(locations.values()) <= {"succeeded", "completed_with_failures"}
    # Runs the dead worker had only just taken (not yet "running" in the ledger) may be re-run too.
    redispatched_locations = sorted({s for (s,) in redispatched})
    assert set(killed) <= set(redispatched_locations) and len(redispatched) == len(redispatched_locations)

    # The server's view: the killed flow run Crashed, its re-run completed, each on its region's queue.
    runs = flow_runs(prefect_server.api_url, f"{run_id}-%")
    by_location: dict[str, list[dict]] = {}
    for flow_run in runs:
        loc = flow_run["parameters"]["location_id"]
        by_location.setdefault(loc, []).append(flow_run)
        assert flow_run["work_queue_name"] == REGIONS[loc]
    def states(loc: str) -> list[str]:  # in dispatch order: NAME, NAME-attempt2, ...
        return [r["state_type"] for r in sorted(by_location[loc], key=lambda r: (len(r["name"]), r["name"]))]

    for loc in redispatched_locations:
        assert states(loc) == ["CRASHED", "COMPLETED"]
    for loc in set(REGIONS) - set(redispatched_locations):
        assert states(loc) == ["COMPLETED"]


SILENT_RUN_SCRIPT = """
import sys, time
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.states import Running
from flows.deployments import CRASH_AUTOMATION, LOCATION_FLOW, ensure_crash_automation

@flow(name=LOCATION_FLOW)
def silent_location():
    pass

crash_after = float(sys.argv[1])
ensure_crash_automation(crash_after)
try:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(silent_location, name="silent-location")
        client.set_flow_run_state(run.id, Running())  # ... and its worker dies before the first heartbeat
        started = time.monotonic()
        while time.monotonic() - started < crash_after + 60:
            state = client.read_flow_run(run.id).state
            if state.is_final():
                break
            time.sleep(1)
        print(state.type.value, round(time.monotonic() - started), state.message)
finally:
    Automation.read(name=CRASH_AUTOMATION).delete()
"""


@pytest.mark.timeout(180)
def test_a_location_run_that_dies_before_its_first_heartbeat_is_crashed(tmp_path, bb_env, prefect_server):  # noqa: F811
    """A flow run that entered Running and never sent a heartbeat (its worker was killed in between) is marked
    Crashed by the automation, counted from Running, so `dispatch_location` dispatches it again."""
    env = prefect_server.client_env(bb_env)
    done = subprocess.run([sys.executable, "-c", SILENT_RUN_SCRIPT, "12"], env=env, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    state, waited, message = done.stdout.split(maxsplit=2)
    assert state == "CRASHED", done.stdout
    assert "no heartbeat for 12 s" in message
    assert 12 <= int(waited) <= 70, done.stdout


# ---------------------------------------------------------------- what a wrong set-up is told

def test_deploy_and_worker_need_a_server(bigbang):
    for command in (["deploy"], ["worker"]):
        proc = bigbang(*command)
        assert proc.returncode == 1
        assert "PREFECT_API_URL is not set" in proc.stderr and "bigbang server" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_dispatch_needs_a_server_and_a_shared_ledger(bigbang, bb_env, tmp_path):
    proc = bigbang("run", DEMO, "--dispatch", "deployments", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--dispatch deployments needs a Prefect server" in proc.stderr and "bigbang deploy" in proc.stderr

    env = dict(bb_env, PREFECT_API_URL="http://127.0.0.1:9/api")  # never reached: the ledger check comes first
    proc = bigbang("run", DEMO, "--dispatch", "deployments", "--ledger", "sqlite:///ledger.db", "--quiet", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "needs a ledger every worker reaches, not sqlite:///ledger.db" in proc.stderr
    assert "postgresql://" in proc.stderr

    proc = bigbang("run", DEMO, "--dispatch", "dask", "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "BIGBANG_DASK_ADDRESS" in proc.stderr


def test_a_bad_region_is_named_with_its_file_and_line(bigbang, tmp_path):
    inventory = regional_demo(tmp_path)
    path = inventory / "locations" / "hst-014-plejecenter.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("region: syd", "region: syd west"), encoding="utf-8")
    proc = bigbang("validate", inventory)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = next(n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "region:" in text)
    assert f"hst-014-plejecenter.yaml:{line}" in proc.stderr and "region" in proc.stderr


# ---------------------------------------------------------------- the other fan-out: a Dask cluster

@pytest.mark.timeout(300)
def test_dask_dispatch_runs_the_locations_on_the_dask_worker(tmp_path, bb_env, prefect_server, postgres):  # noqa: F811
    ledger_url = postgres.create_database()
    env = prefect_server.client_env(bb_env)
    port = free_port()
    cluster = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--dashboard-address", ":0"], env=env, cwd=tmp_path, start_new_session=True,
                                stdout=open(tmp_path / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    try:
        cluster.append(subprocess.Popen(
            ["dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "4", "--dashboard-address", ":0"],
            env=env, cwd=tmp_path, start_new_session=True, stdout=open(tmp_path / "worker.log", "w"),
            stderr=subprocess.STDOUT))
        env["BIGBANG_DASK_ADDRESS"] = f"tcp://127.0.0.1:{port}"
        run = subprocess.run([sys.executable, "-m", "bigbang", "run", DEMO, "--dispatch", "dask", "--ledger",
                              ledger_url, "--quiet", "--run-id", "run-dask"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
        on_dask_worker = {str(pid) for pid in descendants(cluster[1].pid)}
    finally:
        for process in reversed(cluster):
            stop_group(process)
    assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"  # the demo's injected failure: exit 1

    planned = {step.id: step for step in build_plan(load_inventory(DEMO), "rehearsal").steps()}
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        steps = conn.execute(text("SELECT step_id, status, worker FROM steps WHERE run_id = 'run-dask'")).all()
        effects = conn.execute(text("SELECT step_id FROM sim_effects WHERE run_id = 'run-dask'")).all()
    engine.dispose()
    assert sorted(s for s, _, _ in steps) == sorted(planned)
    assert {st for _, st, _ in steps} <= set(FINAL)
    assert sorted(s for (s,) in effects) == sorted(
        s for s, st, _ in steps if st == "succeeded" and planned[s].kind in CHANGING)
    # Every step was written by a process of the dask worker, none by `bigbang run` itself.
    assert {w.rsplit(":", 1)[1] for _, _, w in steps} <= on_dask_worker
