from __future__ import annotations

import argparse
import time

from rich.console import Console

from bigbang.progress import RunMonitor
from bigbang.session import frozen_run
from bigbang.status import RunStatus
from bigbang.store.ledger import Ledger


def register(sub) -> None:
    p = sub.add_parser("watch", help="follow a run from another terminal or machine (reads the ledger)")
    p.add_argument("run_id", help="a run id, its start, or `latest`")
    p.add_argument("--ledger", metavar="URL")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bigbang.run_ids import resolve_run_id

    ledger = Ledger(args.ledger)
    args.run_id = resolve_run_id(ledger, args.run_id)
    plan = frozen_run(ledger, args.run_id).plan  # the run's own plan, whatever the YAML says now
    console = Console(stderr=True)
    monitor = RunMonitor(ledger, args.run_id, plan, console).start()

    def status() -> str:
        row = ledger.get_run(args.run_id)
        return row["status"] if row else "gone"

    try:
        while status() == RunStatus.RUNNING:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
    console.print(f"run {args.run_id}: {status()}")
    return 0
