"""`bigbang audit verify`: check the field audit trail's hash chain and its signed head."""

from __future__ import annotations

import datetime as dt
import re

from rich.console import Console

from bigbang.errors import UserError

WITNESS = re.compile(r"^(\d+):([0-9a-f]{16,64})$")


def register(sub) -> None:
    p = sub.add_parser("audit", help="the field audit trail (check-offs, sign-offs, problems, check-ins)")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    v = audit_sub.add_parser("verify", help="check the audit trail's hash chain and head; report the first break",
                             description="Walk the audit trail, check every link, and compare its end with the "
                                         "head record (row count and last hash, signed with the audit key from "
                                         "BIGBANG_AUDIT_KEY_FILE or BIGBANG_AUDIT_KEY). Prints the head: keep it "
                                         "elsewhere (the run's report, a witness file) and give it back with "
                                         "--expect-head to check that nothing up to it was removed since.")
    v.add_argument("--ledger", metavar="URL", help="the ledger (default: BIGBANG_LEDGER_URL or .bigbang/ledger.db)")
    v.add_argument("--expect-head", metavar="ROWS:HASH",
                   help="a head printed before: the trail must still have that row with that hash "
                        "(at least 16 hex digits of it)")
    v.set_defaults(func=verify)


def verify(args) -> int:
    from bigbang.store.field import FieldStore
    from bigbang.store.ledger import Ledger

    expect = None
    if args.expect_head:
        match = WITNESS.match(args.expect_head.strip().lower())
        if match is None or int(match[1]) < 1:
            raise UserError(f"--expect-head {args.expect_head!r} is not ROWS:HASH",
                            hint="as `bigbang audit verify` prints it after 'head', e.g. 42:3fa2c1d09b7e5a44")
        expect = (int(match[1]), match[2])
    out = Console(highlight=False)
    report = FieldStore(Ledger(args.ledger)).verify_chain(expect)
    old = f" ({report.unchained} older rows written before the chain)" if report.unchained else ""
    if report.ok:
        if report.head is None:
            tail = f", last hash {report.last_hash[:16]}" if report.last_hash else ""
            out.print(f"audit trail intact: {report.rows} rows{old}{tail}; no head record yet (written before "
                      f"bigbang kept one: the next change starts it)", markup=False)
            return 0
        signed = (f"signed with audit key {report.head.key_id}" if report.head.key_id
                  else "not signed (no audit key: BIGBANG_AUDIT_KEY_FILE)")
        out.print(f"audit trail intact: {report.rows} rows{old}; head {report.head.witness}, {signed}", markup=False)
        return 0
    if report.broken_at is None:  # every row links up, but the trail's end is not what was written
        out.print(f"audit trail BROKEN at its end: {report.reason}; the {report.rows} rows there link up",
                  markup=False)
        return 1
    row = report.row or {}
    when = dt.datetime.fromtimestamp(float(row.get("at") or 0), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.print(f"audit trail BROKEN at row {report.broken_at} ({when}, {row.get('actor')} {row.get('action')} "
              f"{row.get('run_id')}/{row.get('location_id')} {row.get('subject')}): {report.reason}; "
              f"{(report.broken_at or 1) - 1} rows before it are intact", markup=False)
    return 1
