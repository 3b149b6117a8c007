"""`bigbang audit verify`: check the field audit trail's hash chain."""

from __future__ import annotations

import datetime as dt

from rich.console import Console


def register(sub) -> None:
    p = sub.add_parser("audit", help="the field audit trail (check-offs, sign-offs, problems)")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    v = audit_sub.add_parser("verify", help="check the audit trail's hash chain; report the first broken link")
    v.add_argument("--ledger", metavar="URL", help="the ledger (default: BIGBANG_LEDGER_URL or .bigbang/ledger.db)")
    v.set_defaults(func=verify)


def verify(args) -> int:
    from bigbang.store.field import FieldStore
    from bigbang.store.ledger import Ledger

    out = Console(highlight=False)
    report = FieldStore(Ledger(args.ledger)).verify_chain()
    if report.ok:
        tail = f", last hash {report.last_hash[:16]}" if report.last_hash else ""
        old = f" ({report.unchained} older rows written before the chain)" if report.unchained else ""
        out.print(f"audit trail intact: {report.rows} rows{old}{tail}", markup=False)
        return 0
    row = report.row or {}
    when = dt.datetime.fromtimestamp(float(row.get("at") or 0), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.print(f"audit trail BROKEN at row {report.broken_at} ({when}, {row.get('actor')} {row.get('action')} "
              f"{row.get('run_id')}/{row.get('location_id')} {row.get('subject')}): {report.reason}; "
              f"{(report.broken_at or 1) - 1} rows before it are intact", markup=False)
    return 1
