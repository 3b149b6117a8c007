"""`bigbang deploy` registers the deployments on a Prefect server; `bigbang worker` runs one worker.

Neither imports Prefect into bigbang: `deploy` loads flows/deployments.py (the
Prefect layer) at run time and uses Prefect's own `prefect deploy`; `worker`
runs Prefect's own `prefect worker start` with the settings bigbang needs.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from bigbang.errors import ConfigError
from bigbang.prefect_env import apply_defaults

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent  # holds prefect.yaml, flows/ and tasks/
POOL = "bigbang"
DEFAULT_QUEUE = "default"
HEARTBEAT_SECONDS = 30  # Prefect's minimum; the crash automation waits longer than this


def register(sub) -> None:
    p = sub.add_parser("deploy", help="register bigbang's deployments, work queues and crash detection "
                                      "on the Prefect server at PREFECT_API_URL")
    p.add_argument("inventory", nargs="?", help="inventory whose location regions become work queues")
    p.add_argument("--pool", default=POOL, help=f"process work pool (default: {POOL})")
    p.add_argument("--crash-after", type=float, default=90.0, metavar="SECONDS",
                   help="mark a location flow run Crashed after this long without a heartbeat (default: 90)")
    p.set_defaults(func=deploy)

    w = sub.add_parser("worker", help="run a Prefect process worker for bigbang's deployments on this machine")
    w.add_argument("--region", action="append", default=[], metavar="QUEUE",
                   help="work queue(s) to take runs from: the regions whose networks this machine reaches "
                        "(repeatable; default: every queue of the pool)")
    w.add_argument("--pool", default=POOL, help=f"process work pool (default: {POOL})")
    w.add_argument("--limit", type=int, metavar="N", help="flow runs this worker runs at once (default: no limit)")
    w.add_argument("--name", help="worker name shown in the Prefect UI (default: Prefect's)")
    w.set_defaults(func=worker)


def _prefect() -> str:
    prefect = shutil.which("prefect")
    if prefect is None:
        raise ConfigError("the `prefect` command is not installed", hint="pip install -e .")
    return prefect


def _api_url() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise ConfigError("PREFECT_API_URL is not set: deployments and workers need a long-lived Prefect server",
                          hint="start one with `bigbang server`, then export PREFECT_API_URL=http://HOST:4200/api")
    return url


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker and of the flow runs it starts (they inherit it)."""
    apply_defaults()
    env = dict(os.environ if base is None else base)
    env.setdefault("BIGBANG_PROJECT_DIR", str(PROJECT_DIR))  # prefect.yaml's pull step goes there
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    return env


def _regions(inventory_path: str | None) -> list[str]:
    if not inventory_path:
        return []
    from bigbang.inventory import load_inventory

    inventory = load_inventory(inventory_path)
    return sorted({loc.region for loc in inventory.locations if loc.region})


def deploy(args) -> int:
    console = Console(stderr=True, highlight=False)
    api = _api_url()
    prefect = _prefect()
    if not (PROJECT_DIR / "prefect.yaml").is_file():
        raise ConfigError(f"no prefect.yaml in {PROJECT_DIR}", hint="run bigbang from its source checkout")
    if args.crash_after <= HEARTBEAT_SECONDS:
        raise ConfigError(f"--crash-after must be longer than the workers' heartbeat ({HEARTBEAT_SECONDS} s)")
    regions = _regions(args.inventory)
    apply_defaults()
    layer = importlib.import_module("flows.deployments")
    created = layer.ensure_pool(args.pool, [DEFAULT_QUEUE, *regions])
    for item in created:
        console.print(f"created {item}")
    env = worker_env()
    done = layer.deploy_all(PROJECT_DIR, env, prefect)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise ConfigError(f"`prefect deploy --all` failed against {api}:\n{output}")
    name = layer.ensure_crash_automation(args.crash_after)
    console.print(f"deployments from {PROJECT_DIR / 'prefect.yaml'} registered on {api}")
    console.print(f"automation '{name}': crash after {args.crash_after:g} s without a heartbeat")
    queues = ", ".join([DEFAULT_QUEUE, *regions])
    console.print(f"work pool {args.pool}, queues: {queues}. Start workers with: bigbang worker --region QUEUE")
    return 0


def worker(args) -> int:
    _api_url()
    cmd = [_prefect(), "worker", "start", "--pool", args.pool, "--type", "process"]
    for region in args.region:
        cmd += ["--work-queue", region]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.name:
        cmd += ["--name", args.name]
    try:
        return subprocess.call(cmd, env=worker_env())
    except KeyboardInterrupt:
        return 130
