"""`bigbang defects ...`: the post-rollout support queue from the command line."""

from __future__ import annotations

import csv
import getpass
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bigbang.errors import UserError

EXPORT_COLUMNS = ("key", "state", "priority", "score", "location_id", "target", "target_kind", "model", "category",
                  "check_name", "title", "message", "assignee", "occurrences", "affected", "problem_key", "source",
                  "first_seen", "last_seen", "resolved_at", "reopened")


def register(sub) -> None:
    p = sub.add_parser("defects", help="post-rollout defects: collect, list, assign, resolve, export, import")
    dsub = p.add_subparsers(dest="defects_command", metavar="ACTION")
    dsub.required = True

    def add(name: str, help_: str, func):
        q = dsub.add_parser(name, help=help_)
        q.add_argument("--ledger", metavar="URL", help="ledger database (default: $BIGBANG_LEDGER_URL or .bigbang/ledger.db)")
        q.set_defaults(func=func)
        return q

    q = add("collect", "gather defects of a run into the queue (what the hourly flow does)", collect)
    q.add_argument("--run", metavar="RUN_ID", help="default: the latest run")
    q.add_argument("--no-probe", action="store_true", help="do not probe devices again")
    q.add_argument("--import", dest="import_csv", metavar="CSV", help="import end-user reports first")
    q.add_argument("--report", action="store_true", help="also write the daily report")
    q.add_argument("--out", metavar="DIR", help="reports directory (default: reports/)")

    q = add("list", "list defects", list_defects)
    q.add_argument("--location")
    q.add_argument("--category")
    q.add_argument("--priority", type=int, choices=(1, 2, 3, 4))
    q.add_argument("--status", help="new, triaged, in_progress, resolved, closed, open (default) or all",
                   default="open")
    q.add_argument("--assignee")
    q.add_argument("--problem", metavar="P-KEY")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")

    q = add("show", "a defect with its history and observations", show)
    q.add_argument("key")
    q.add_argument("--json", action="store_true")

    q = add("assign", "assign a defect to someone (a new one becomes triaged)", assign)
    q.add_argument("key")
    q.add_argument("assignee")
    q.add_argument("--as", dest="actor", help="who does it (default: your login)")

    q = add("comment", "add a comment to a defect", comment)
    q.add_argument("key")
    q.add_argument("text")
    q.add_argument("--as", dest="actor")

    q = add("state", "move a defect to another state", set_state)
    q.add_argument("key")
    q.add_argument("state", choices=("triaged", "in_progress", "resolved", "closed"))
    q.add_argument("--note", default="")
    q.add_argument("--as", dest="actor")

    q = add("resolve", "resolve a defect with a note", resolve)
    q.add_argument("key")
    q.add_argument("--note", required=True)
    q.add_argument("--as", dest="actor")

    q = add("export", "export defects as CSV", export)
    q.add_argument("--out", metavar="FILE", help="default: standard output")
    q.add_argument("--status", help="only this state (or 'open')")

    q = add("import", "import end-user reports from a CSV export (bad rows reported by line)", import_reports)
    q.add_argument("csv", metavar="CSV")
    q.add_argument("--run", metavar="RUN_ID", help="whose inventory checks devices (default: the latest run)")
    q.add_argument("--inventory", metavar="PATH", help="check devices against this inventory instead")

    q = add("report", "write the daily defect report (HTML and Markdown)", report)
    q.add_argument("--run", metavar="RUN_ID", help="whose inventory names locations (default: the latest run)")
    q.add_argument("--out", metavar="DIR", help="reports directory (default: reports/)")


def _actor(args) -> str:
    if getattr(args, "actor", None):
        return args.actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"


def _queue(args):
    from bigbang.store.defects import DefectQueue

    return DefectQueue.open(args.ledger)


def _inventory(args):
    from bigbang.defects.collect import latest_run
    from bigbang.inventory import load_inventory
    from bigbang.store.ledger import Ledger

    if getattr(args, "inventory", None):
        return load_inventory(args.inventory)
    from bigbang.session import frozen_run

    ledger = Ledger(args.ledger)
    run_id = getattr(args, "run", None) or latest_run(ledger)
    if run_id is None:
        raise UserError(f"no run in the ledger {ledger.safe_url}")
    return frozen_run(ledger, run_id).inventory  # scored with the run's frozen inventory


def _import(args, path: str) -> int:
    from bigbang.defects.sources import parse_reports_csv

    err = Console(stderr=True, highlight=False)
    try:
        content = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", hint="give a UTF-8 CSV file") from exc
    result = parse_reports_csv(content, _inventory(args))
    for problem in result.errors:
        err.print(f"{path}:{problem.removeprefix('line ')}", markup=False)
    new = _queue(args).add_reports(result.rows)
    Console(highlight=False).print(f"{path}: {len(result.rows)} reports valid ({new} new), "
                                   f"{len(result.errors)} rows refused")
    return 1 if result.errors else 0


def import_reports(args) -> int:
    return _import(args, args.csv)


def collect(args) -> int:
    from bigbang.defects.collect import collect as run_collect

    status = _import(args, args.import_csv) if args.import_csv else 0
    result = run_collect(args.ledger, args.run, with_probe=not args.no_probe, actor=f"collector ({_actor(args)})")
    out = Console(highlight=False)
    filed = result.filed
    out.print(f"collection {result.collection_id} of {result.run_id}: "
              f"{sum(result.gathered.values())} observations ({', '.join(f'{k} {v}' for k, v in sorted(result.gathered.items())) or 'none'}), "
              f"{result.probed} probed; {filed.get('created', 0)} new, {filed.get('updated', 0)} updated, "
              f"{filed.get('reopened', 0)} reopened, {filed.get('resolved', 0)} resolved, "
              f"{filed.get('problems', 0)} problems; {result.seconds:.1f} s")
    if result.sync.get("system") not in (None, "embedded"):
        s = result.sync
        out.print(f"{s['system']}: {s['created']} tickets created, {s['updated']} updated, "
                  f"{s['found_existing']} found existing, {s['pending']} pending")
    for e in result.errors:
        Console(stderr=True, highlight=False).print(f"warning: {e}", markup=False)
    if args.report:
        from bigbang.defects.report import render_daily_report
        from bigbang.store.defects import DefectQueue
        from bigbang.store.ledger import Ledger

        files = render_daily_report(DefectQueue(Ledger(args.ledger).engine), _inventory(args),
                                    Path(args.out) if args.out else None)
        out.print(f"{files.html}\n{files.markdown}")
    return status or (1 if result.errors else 0)


def list_defects(args) -> int:
    rows = _queue(args).list(location=args.location, category=args.category, priority=args.priority,
                             state=args.status, assignee=args.assignee, problem=args.problem, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = Table()
    for col in ("key", "P", "state", "location", "target", "category", "seen", "assignee"):
        table.add_column(col, no_wrap=True)
    table.add_column("title", overflow="fold")
    for d in rows:
        table.add_row(d["key"], str(d["priority"]), d["state"], d["location_id"] or "", d["target"], d["category"],
                      str(d["occurrences"]), d["assignee"] or "", d["title"])
    Console().print(table)
    Console(highlight=False).print(f"{len(rows)} defects")
    return 0


def show(args) -> int:
    from bigbang.report import format_time

    queue = _queue(args)
    d = queue.require(args.key)
    hist = queue.history(args.key)
    obs = queue.observations(args.key)
    if args.json:
        print(json.dumps({"defect": d, "history": hist, "observations": obs}, indent=2, default=str))
        return 0
    out = Console(highlight=False)
    out.print(f"[bold]{d['key']}[/bold] {d['title']}")
    for label, value in (("state", d["state"]), ("priority", f"{d['priority']} (score {d['score']:g})"),
                         ("target", f"{d['target']} ({d['target_kind']}, {d['model']})"),
                         ("location", d["location_id"] or "-"), ("category", d["category"]),
                         ("assignee", d["assignee"] or "-"), ("problem", d["problem_key"] or "-"),
                         ("seen", f"{d['occurrences']} times, first {format_time(d['first_seen'])}, "
                                  f"last {format_time(d['last_seen'])}"),
                         ("message", d["message"])):
        out.print(f"  {label:9} {value}", markup=False)
    out.print("history:")
    for h in hist:
        out.print(f"  {format_time(h['at'])}  {h['actor']}: {h['action']} {h['text']}", markup=False)
    out.print("observations:")
    for o in obs[:20]:
        out.print(f"  {format_time(o['observed_at'])}  {o['source']} {'fail' if o['failing'] else 'pass'}: "
                  f"{o['message']}", markup=False)
    return 0


def assign(args) -> int:
    d = _queue(args).assign(args.key, args.assignee, _actor(args))
    Console(highlight=False).print(f"{d['key']} assigned to {d['assignee']} ({d['state']})")
    return 0


def comment(args) -> int:
    d = _queue(args).comment(args.key, args.text, _actor(args))
    Console(highlight=False).print(f"{d['key']}: comment added")
    return 0


def set_state(args) -> int:
    d = _queue(args).set_state(args.key, args.state, _actor(args), args.note)
    Console(highlight=False).print(f"{d['key']} is {d['state']}")
    return 0


def resolve(args) -> int:
    d = _queue(args).resolve(args.key, args.note, _actor(args))
    Console(highlight=False).print(f"{d['key']} resolved")
    return 0


def export(args) -> int:
    rows = _queue(args).list(state=args.status, limit=None)
    handle = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.out:
            handle.close()
    if args.out:
        Console(highlight=False, stderr=True).print(f"{len(rows)} defects written to {args.out}")
    return 0


def report(args) -> int:
    from bigbang.defects.report import render_daily_report

    files = render_daily_report(_queue(args), _inventory(args), Path(args.out) if args.out else None)
    Console(highlight=False).print(f"{files.html}\n{files.markdown}")
    return 0
