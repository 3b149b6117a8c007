"""What a user may type where a run id is asked for: the whole id, `latest` (the newest run in the
ledger), or an unambiguous start of an id (`run-20261127-1700`). One helper, used by every command that
takes a run id and by `frozen_run`'s callers."""

from __future__ import annotations

from sqlalchemy import select

from bigbang.errors import UserError
from bigbang.store.ledger import Ledger
from bigbang.store.schema import runs

LATEST = "latest"


def resolve_run_id(ledger: Ledger, run_id: str | None) -> str:
    """The whole run id `run_id` stands for; UserError if there is no such run or it is ambiguous."""
    if run_id is None or not run_id.strip():
        raise UserError("no run id given", hint="give a run id or `latest` (see `bigbang runs`)")
    text = run_id.strip()
    if text.lower() == LATEST:
        newest = ledger.list_runs(1)
        if not newest:
            raise UserError(f"no runs in the ledger {ledger.safe_url}", hint="start one with `bigbang run`")
        return str(newest[0]["run_id"])
    if ledger.get_run(text) is not None:
        return text
    pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with ledger.engine.connect() as conn:
        found = [r[0] for r in conn.execute(select(runs.c.run_id).where(runs.c.run_id.like(pattern, escape="\\"))
                                            .limit(6))]
    if len(found) == 1:
        return str(found[0])
    if found:
        raise UserError(f"'{text}' matches several runs: {', '.join(found[:5])}", hint="give more of the id")
    raise UserError(f"no run {text} in the ledger {ledger.safe_url}", hint="see `bigbang runs`, or use `latest`")
