from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bigbang.report import render_report
from bigbang.store.ledger import Ledger


def register(sub) -> None:
    p = sub.add_parser("report", help="render a run's report again (HTML and Markdown)")
    p.add_argument("run_id", help="a run id, its start, or `latest`")
    p.add_argument("--ledger", metavar="URL")
    p.add_argument("--out", metavar="DIR", help="reports directory (default: reports/)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON (every step's start and end on the run's clock, status, "
                        "attempts; the plan digest) instead of writing files")
    p.set_defaults(func=run)
    r = sub.add_parser("runs", help="list recent runs in the ledger")
    r.add_argument("--ledger", metavar="URL")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--json", action="store_true", help="print the runs as JSON, newest first")
    r.set_defaults(func=list_runs)


def run(args) -> int:
    from bigbang.run_ids import resolve_run_id

    args.run_id = resolve_run_id(Ledger(args.ledger), args.run_id)
    if args.json:
        import json
        import sys

        from bigbang.report import report_data

        sys.stdout.write(json.dumps(report_data(Ledger(args.ledger), args.run_id), indent=1, default=str) + "\n")
        return 0
    files = render_report(Ledger(args.ledger), args.run_id, Path(args.out) if args.out else None)
    Console(highlight=False).print(f"{files.html}\n{files.markdown}")
    return 0


def list_runs(args) -> int:
    from rich.table import Table

    from bigbang.report import format_time

    if args.json:
        import json
        import sys

        rows = [{k: r[k] for k in ("run_id", "rollout", "mode", "status", "created_at", "finished_at",
                                   "halted_reason", "plan_digest", "plan_version")}
                for r in Ledger(args.ledger).list_runs(args.limit)]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0

    from rich.text import Text

    from bigbang.cli import console

    out = console()
    rows = Ledger(args.ledger).list_runs(args.limit)
    if not rows:
        out.print("No runs in this ledger yet.")
        return 0
    table = Table(title=f"{len(rows)} newest run{'' if len(rows) == 1 else 's'}, newest first (`latest` is the first)",
                  title_justify="left")
    table.add_column("run", no_wrap=True, overflow="ignore")  # a run id is never cut: it is typed back in
    for col in ("rollout", "mode", "status", "started", "halted"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(Text(r["run_id"]), Text(r["rollout"]), r["mode"], r["status"], format_time(r["created_at"]),
                      Text(r["halted_reason"] or ""))
    if not out.is_terminal:
        out.width = 1000
    out.print(table)
    return 0
