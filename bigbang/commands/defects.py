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

EXPORT_COLUMNS = ("key", "run_id", "rollout", "mode", "state", "priority", "priority_name", "score", "location_id",
                  "target", "target_kind", "model", "user_id", "user_name", "user_phone", "reporter",
                  "reporter_contact", "category", "check_name", "title", "message", "assignee", "occurrences",
                  "affected", "problem_key", "duplicate_of", "source", "first_seen", "last_seen", "resolved_at",
                  "response_due", "resolve_due", "responded_at", "sla", "reopened", "priority_reason")
TIME_COLUMNS = ("first_seen", "last_seen", "resolved_at", "response_due", "resolve_due", "responded_at")
SORTS = ("priority", "age", "resolve_due", "response_due", "updated", "location")


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

    q = add("list", "list one run's defects (search, filter, sort)", list_defects)
    q.add_argument("--run", metavar="RUN_ID", help="whose queue (default: the latest run)")
    q.add_argument("--search", "-s", metavar="QUERY",
                   help="hostname, serial, user id or name, phone, location, defect key or any words")
    q.add_argument("--sort", choices=SORTS, default="priority")
    q.add_argument("--mine", action="store_true", help="only defects assigned to you (--as or your login)")
    q.add_argument("--as", dest="actor")
    q.add_argument("--breached", action="store_true", help="only open defects past their resolve target")
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

    q = add("export", "export one run's defects as CSV (ISO 8601 times, UTC)", export)
    q.add_argument("--run", metavar="RUN_ID", help="whose queue (default: the latest run)")
    q.add_argument("--out", metavar="FILE", help="default: standard output")
    q.add_argument("--status", help="only this state (or 'open')")

    q = add("runs", "the queues there are: one per run (rehearsals and live runs never merge)", list_runs)

    q = add("bulk", "assign, change the state of or comment on many defects at once", bulk)
    q.add_argument("action", choices=("assign", "state", "comment"))
    q.add_argument("value", help="the assignee, the new state or the comment")
    q.add_argument("keys", nargs="+", metavar="KEY")
    q.add_argument("--as", dest="actor")

    q = add("link", "say two defects are related", link)
    q.add_argument("key")
    q.add_argument("other")
    q.add_argument("--as", dest="actor")

    q = add("merge", "close a defect as a duplicate of another", merge)
    q.add_argument("duplicate")
    q.add_argument("into")
    q.add_argument("--as", dest="actor")

    q = add("fixed", "a technician fixed it by hand: the next passing probe verifies and resolves it", fixed)
    q.add_argument("key")
    q.add_argument("--note", required=True)
    q.add_argument("--as", dest="actor")

    q = add("forecast", "hypercare load forecast: defects per day for the fortnight after the weekend", forecast)
    q.add_argument("run_id", metavar="RUN_ID")
    q.add_argument("--days", type=int, default=14)
    q.add_argument("--out", metavar="DIR", help="where the chart goes (default: reports/<run>/)")
    q.add_argument("--json", action="store_true")

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
    new = _queue(args).add_reports(result.rows, run_id=_run_id(args))
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
                                    Path(args.out) if args.out else None, run_id=result.run_id)
        out.print(f"{files.html}\n{files.markdown}")
    return status or (1 if result.errors else 0)


def _run_id(args) -> str:
    from bigbang.defects.collect import latest_run
    from bigbang.store.ledger import Ledger

    return getattr(args, "run", None) or latest_run(Ledger(args.ledger))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def sla_text(d: dict, now: float) -> str:
    """'breach', or the time left to the resolve target ('4h'), or '' when there is none / it is done."""
    if d["state"] not in ("new", "triaged", "in_progress") or not d.get("resolve_due"):
        return ""
    if d.get("response_due") and d.get("responded_at") is None and now > d["response_due"]:
        return "no reply"
    left = d["resolve_due"] - now
    return "breach" if left < 0 else _age(left)


def list_defects(args) -> int:
    import time

    from bigbang.defects.triage import PRIORITY_NAMES

    run_id = _run_id(args)
    assignee = _actor(args) if args.mine else args.assignee
    rows = _queue(args).list(run_id=run_id, location=args.location, category=args.category, priority=args.priority,
                             state=args.status, assignee=assignee, problem=args.problem, search=args.search,
                             sort=args.sort, breached=args.breached, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    now = time.time()
    first = rows[0] if rows else {}
    out = Console(highlight=False)
    what = f"run {run_id}" + (f" ({first.get('rollout')}, {first.get('mode')})" if first.get("rollout") else "")
    out.print(what + (f", search '{args.search}'" if args.search else "") + f": {len(rows)} defects", markup=False)
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("key", no_wrap=True, min_width=12)
    table.add_column("P", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("device / place", overflow="fold", max_width=18)
    table.add_column("age", no_wrap=True)
    table.add_column("SLA", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1)
    for d in rows:
        where = d["target"] + (f"\n{d['location_id']}" if d["location_id"] and d["location_id"] != d["target"] else "")
        who = f" — {d['user_name'] or d['user_id']}" if (d.get("user_name") or d.get("user_id")) else ""
        title = d["title"].split(": ", 1)[-1] if d["title"].startswith(d["target"] + ":") else d["title"]
        extra = f" [{d['assignee']}]" if d["assignee"] else ""
        table.add_row(d["key"], f"P{d['priority']}", d["state"], where, _age(now - d["first_seen"]),
                      sla_text(d, now), f"{title}{who}{extra}")
    out.print(table)
    if rows:
        out.print("priorities: " + ", ".join(PRIORITY_NAMES.values()), markup=False)
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
    from bigbang.defects.triage import PRIORITY_NAMES

    user = " ".join(x for x in (d.get("user_name") or "", f"({d['user_id']})" if d.get("user_id") else "",
                                d.get("user_phone") or "") if x) or "-"
    reporter = " ".join(x for x in (d.get("reporter") or "", d.get("reporter_contact") or "") if x) or "-"
    due = (f"respond by {format_time(d['response_due'])}, resolve by {format_time(d['resolve_due'])}"
           if d.get("resolve_due") else "-")
    for label, value in (("run", f"{d['run_id'] or '-'} ({d.get('rollout') or '-'}, {d.get('mode') or '-'})"),
                         ("state", d["state"] + (f", duplicate of {d['duplicate_of']}" if d.get("duplicate_of") else "")),
                         ("priority", f"{PRIORITY_NAMES[d['priority']]}: {d.get('priority_reason') or d['score']}"),
                         ("SLA", due),
                         ("target", f"{d['target']} ({d['target_kind']}, {d['model']})"),
                         ("location", d["location_id"] or "-"), ("user", user), ("reporter", reporter),
                         ("category", d["category"]),
                         ("assignee", d["assignee"] or "-"), ("problem", d["problem_key"] or "-"),
                         ("seen", f"{d['occurrences']} times, first {format_time(d['first_seen'])}, "
                                  f"last {format_time(d['last_seen'])}"),
                         ("message", d["message"])):
        out.print(f"  {label:9} {value}", markup=False)
    out.print("history:")
    for h in hist:
        out.print(f"  {format_time(h['at'])}  {h['actor']}: {history_line(h)}", markup=False)
    out.print("observations:")
    for o in obs[:20]:
        out.print(f"  {format_time(o['observed_at'])}  {o['source']} {'fail' if o['failing'] else 'pass'}: "
                  f"{o['message']}", markup=False)
    return 0


def history_line(h: dict) -> str:
    """'created: rollout: ...', 'state new -> triaged: ...', never 'None' nor a doubled word."""
    text = (h.get("text") or "").strip()
    action = h["action"]
    moved = h.get("from_state") and h.get("to_state") and h["from_state"] != h["to_state"]
    head = action
    if moved:
        head = f"{h['from_state']} -> {h['to_state']}" if action == "state" else \
            f"{action} ({h['from_state']} -> {h['to_state']})"
    if text.startswith(("-> ", action + " ")) or text == action:
        text = text.split(" ", 1)[1] if " " in text and not text.startswith("-> ") else ""
    return f"{head}: {text}" if text else head


def _accounts(args, key: str | None = None):
    """The support accounts of the defect's run (its frozen inventory's rollout.staff)."""
    from bigbang.defects.triage import support_accounts
    from bigbang.session import frozen_run
    from bigbang.store.ledger import Ledger

    ledger = Ledger(args.ledger)
    run_id = None
    if key:
        d = _queue(args).get(key)
        run_id = d["run_id"] if d else None
    return support_accounts(frozen_run(ledger, run_id or _run_id(args)).inventory)


def assign(args) -> int:
    d = _queue(args).assign(args.key, args.assignee, _actor(args), _accounts(args, args.key))
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


def bulk(args) -> int:
    accounts = _accounts(args, args.keys[0]) if args.action == "assign" else None
    done, refused = _queue(args).bulk(args.keys, args.action, args.value, _actor(args), accounts)
    err = Console(stderr=True, highlight=False)
    for line in refused:
        err.print(f"refused {line}", markup=False)
    Console(highlight=False).print(f"{args.action}: {len(done)} done, {len(refused)} refused")
    return 1 if refused else 0


def link(args) -> int:
    _queue(args).link(args.key, args.other, _actor(args))
    Console(highlight=False).print(f"{args.key} and {args.other} linked")
    return 0


def merge(args) -> int:
    d = _queue(args).merge(args.duplicate, args.into, _actor(args))
    Console(highlight=False).print(f"{args.duplicate} closed as a duplicate of {d['key']} (seen {d['occurrences']} times)")
    return 0


def fixed(args) -> int:
    d = _queue(args).mark_fixed(args.key, args.note, _actor(args))
    Console(highlight=False).print(f"{d['key']} is {d['state']}: the next passing probe resolves it")
    return 0


def list_runs(args) -> int:
    rows = _queue(args).runs()
    out = Console(highlight=False)
    for r in rows:
        out.print(f"{r['run_id'] or '-'}  {r['mode'] or '-':9}  {r['defects']:6} defects  {r['rollout'] or ''}",
                  markup=False)
    if not rows:
        out.print("no defects yet")
    return 0


def iso(value) -> str:
    """A stored epoch time as ISO 8601 UTC ('' when there is none)."""
    from datetime import UTC, datetime

    return "" if value is None else datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")


def export_rows(rows: list[dict]) -> list[dict]:
    import time

    from bigbang.defects.triage import PRIORITY_NAMES

    now = time.time()
    out = []
    for d in rows:
        row = {k: ("" if d.get(k) is None else d.get(k)) for k in EXPORT_COLUMNS}
        for k in TIME_COLUMNS:
            row[k] = iso(d.get(k))
        row["priority_name"] = PRIORITY_NAMES[d["priority"]]
        row["sla"] = sla_text(d, now)
        out.append(row)
    return out


def export(args) -> int:
    rows = export_rows(_queue(args).list(run_id=_run_id(args), state=args.status, limit=None))
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

    files = render_daily_report(_queue(args), _inventory(args), Path(args.out) if args.out else None,
                                run_id=_run_id(args))
    Console(highlight=False).print(f"{files.html}\n{files.markdown}")
    return 0


def forecast(args) -> int:
    from bigbang.defects.forecast import forecast as make_forecast
    from bigbang.defects.forecast import format_table, write_chart
    from bigbang.report import reports_dir
    from bigbang.session import frozen_run
    from bigbang.store.ledger import Ledger

    ledger = Ledger(args.ledger)
    run = frozen_run(ledger, args.run_id)
    result = make_forecast(ledger, _queue(args), args.run_id, run.inventory, days=args.days)
    out_dir = Path(args.out) if args.out else reports_dir() / args.run_id
    chart = write_chart(result, out_dir / "forecast.png")
    if args.json:
        print(json.dumps({**result.to_dict(), "chart": str(chart)}, indent=2, default=str))
        return 0
    out = Console(highlight=False)
    out.print(format_table(result), markup=False)
    out.print(f"chart: {chart}", markup=False)
    return 0
