"""Rehearsal through several workers against a PostgreSQL-backed Prefect server: 1, 2 and 4 workers.

    python bench/workers.py                                   # Höglandet size, both fan-out modes
    python bench/workers.py --locations 40 --workers 1,2,4    # a Höglandet-dense slice of 40 locations
    python bench/workers.py --mode deployments                # or dask

Starts on this machine: a PostgreSQL cluster (Prefect's database and the ledger), Redis (event
broker), `prefect server start`, `bigbang deploy`, then for each worker count N:
- deployments: N `bigbang worker --limit L` processes, each on a worker machine of its own (a network
  namespace; the Prefect server and the ledger forwarded to its loopback; `--no-netns`, or not root: all in
  this namespace); `bigbang run --dispatch deployments` sends each location as a flow run to them.
- dask: a `dask scheduler` and N `dask worker --nthreads L`; `bigbang run --dispatch dask`.
L (--per-worker) is what one worker machine runs at once. Steps take simulated time, compressed
(--compression), so a location's devices are mostly waiting, as on the weekend; `--compression max`
plays each location as fast as its worker can, which measures what the workers can carry.

Prints one JSON line per (mode, workers): wall_s (the `bigbang run` process), steps, steps_per_s,
locations, and scaling (steps_per_s relative to the same mode's 1-worker line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigbang.inventory import load_inventory  # noqa: E402
from bigbang.inventory.generate import PRESETS, Size, generate, write  # noqa: E402
from bigbang.plan import build_plan  # noqa: E402
from tests.peers.lab import WorkerMachines  # noqa: E402
from tests.peers.postgres import PostgresCluster, free_port  # noqa: E402
from tests.peers.prefect_server import PrefectServer, stop_group  # noqa: E402
from tests.peers.redis import RedisServer  # noqa: E402


def inventory_for(locations: int | None, workdir: Path) -> Path:
    full = PRESETS["hoglandet"]
    size = full if not locations else Size(
        locations, full.workstations * locations // full.locations, full.thin_clients * locations // full.locations,
        max(8, full.servers * locations // full.locations), full.locale)
    path = workdir / f"inventory-{size.locations}"
    if not path.exists():
        write(generate(size, seed=1), path)
    return path


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def measure(mode: str, workers: int, per_worker: int, inventory: Path, compression: str, pg: PostgresCluster,
            env: dict[str, str], workdir: Path, steps: int, machines: WorkerMachines | None,
            ops_ports: list[int]) -> dict:
    processes: list[subprocess.Popen] = []
    run_env = dict(env)
    try:
        if mode == "deployments":
            for i in range(workers):
                machine = ["ip", "netns", "exec", machines.add(ops_ports)] if machines else []
                processes.append(start([*machine, sys.executable, "-m", "bigbang", "worker", "--limit",
                                        str(per_worker), "--name", f"bench-{i}"], env, workdir / f"worker-{i}.log"))
        else:
            port = free_port()
            processes.append(start(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                    "--dashboard-address", ":0"], env, workdir / "scheduler.log"))
            time.sleep(3)
            for i in range(workers):
                processes.append(start(["dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", str(per_worker),
                                        "--nworkers", "1", "--dashboard-address", ":0", "--name", f"bench-{i}"],
                                       env, workdir / f"dask-worker-{i}.log"))
            run_env["BIGBANG_DASK_ADDRESS"] = f"tcp://127.0.0.1:{port}"
        time.sleep(5)  # workers register and start polling
        ledger = pg.create_database()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bigbang", "run", str(inventory), "--dispatch", mode,
                               "--ledger", ledger, "--compression", str(compression), "--failure-rate", "0",
                               "--quiet"], env=run_env, cwd=workdir, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{mode} with {workers} workers: bigbang run failed ({done.returncode})\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    finally:
        for process in reversed(processes):
            stop_group(process)
    return {"mode": mode, "workers": workers, "per_worker": per_worker, "wall_s": round(wall, 1), "steps": steps,
            "steps_per_s": round(steps / wall, 1), "compression": compression}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, help="a Höglandet-dense inventory of this many locations "
                                                      "(default: the full Höglandet preset)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--per-worker", type=int, default=4, help="locations one worker runs at once")
    parser.add_argument("--compression", default="2000", help="simulated seconds per real second, or 'max'")
    parser.add_argument("--mode", choices=("deployments", "dask"), action="append")
    parser.add_argument("--workdir", help="keep inventories and logs here (default: a temp dir)")
    parser.add_argument("--no-netns", action="store_true", help="process workers in this network namespace")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bigbang-bench-workers-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        inventory = inventory_for(args.locations, workdir)
        steps = build_plan(load_inventory(inventory), "rehearsal").step_count
        pg = PostgresCluster().start()
        redis = RedisServer().start()
        server = PrefectServer(pg.url(pg.create_database().rsplit("/", 1)[1], driver="asyncpg"), redis.address)
        try:
            server.start()
            env = server.client_env(dict(os.environ, PYTHONPATH=str(ROOT), BIGBANG_HOME=str(workdir / "state"),
                                         BIGBANG_REPORTS=str(workdir / "reports"), BIGBANG_DISPATCH_POLL_SECONDS="2"))
            deployed = subprocess.run([sys.executable, "-m", "bigbang", "deploy"], env=env, cwd=workdir,
                                      capture_output=True, text=True)
            if deployed.returncode != 0:
                raise SystemExit(f"bigbang deploy failed:\n{deployed.stderr}")
            for mode in args.mode or ["deployments", "dask"]:
                base = None
                for n in counts:
                    machines = None if args.no_netns or os.geteuid() != 0 else \
                        WorkerMachines(f"bbw{os.getpid() % 1000}")
                    try:
                        line = measure(mode, n, args.per_worker, inventory, args.compression, pg, env, workdir,
                                       steps, machines, [pg.port, server.port])
                    finally:
                        if machines:
                            machines.stop()
                    line["worker_machines"] = "namespaces" if machines and mode == "deployments" else "this one"
                    base = base or line["steps_per_s"]
                    line["scaling"] = round(line["steps_per_s"] / base, 2)
                    line["locations"] = len(load_inventory(inventory).locations)
                    print(json.dumps(line), flush=True)
        finally:
            server.stop()
            redis.stop()
            pg.stop()
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
