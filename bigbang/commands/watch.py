from __future__ import annotations

import time

from rich.console import Console

from bigbang.errors import RunError
from bigbang.inventory import load_inventory
from bigbang.ledger import Ledger
from bigbang.plan import build_plan
from bigbang.progress import RunMonitor


def register(sub) -> None:
    p = sub.add_parser("watch", help="follow a run from another terminal or machine (reads the ledger)")
    p.add_argument("run_id")
    p.add_argument("--ledger", metavar="URL")
    p.set_defaults(func=run)


def run(args) -> int:
    ledger = Ledger(args.ledger)
    row = ledger.get_run(args.run_id)
    if row is None:
        raise RunError(f"no run {args.run_id} in the ledger {ledger.safe_url}")
    plan = build_plan(load_inventory(row["inventory"]), row["mode"])
    console = Console(stderr=True)
    monitor = RunMonitor(ledger, args.run_id, plan, console).start()
    try:
        while ledger.get_run(args.run_id)["status"] == "running":
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
    console.print(f"run {args.run_id}: {ledger.get_run(args.run_id)['status']}")
    return 0
