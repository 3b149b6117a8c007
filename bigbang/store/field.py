"""Technicians' check-offs and the audit trail of every change made in the field.

Own tables in their own MetaData, created on the ledger's engine (SQLite or
PostgreSQL), so they live beside the run they belong to. Every change is one
request with a client request key: the audit row is inserted first and its key
is unique, so a retried request (a flaky phone connection, a double tap) finds
its row and changes nothing. The audit rows form a hash chain with a signed head
(bigbang.store.audit_chain), so `verify_chain` finds the first row that was
altered, removed or slipped in, and rows removed from the end. Sign-offs, problems and check-ins go
through the ledger (`Ledger.sign_off`, `Ledger.add_problem`, `Ledger.check_in`): the sign-off gate,
the defect tracking and a location's start read them there.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from bigbang.errors import UserError
from bigbang.store.audit_chain import (
    HEAD_MARK,
    HEAD_STARTED,
    KEY_ADDED,
    ChainReport,
    Head,
    audit_key,
    key_id,
    row_hash,
    verify,
    wrong_key,
)
from bigbang.store.ledger import Ledger, now
from bigbang.store.schema import field_audit, field_audit_head, field_checks

__all__ = ["Actor", "ChainReport", "CheckState", "FieldInputError", "FieldStore", "row_hash"]

REQUEST_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
PROBLEM_CATEGORIES = ("hardware", "image", "network", "peripheral", "access", "user", "other")
MAX_TEXT = 2000
MAX_VALUE = 120
HEAD_ID = 1  # one trail per ledger: one head row
_UNREAD = object()


class FieldInputError(UserError):
    """A field request is malformed (too long, unknown category, bad request key)."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change and from where."""

    id: str
    role: str
    source: str


@dataclass(frozen=True)
class CheckState:
    item_id: str
    checked: bool
    value: str | None
    by: str
    at: float


class FieldStore:
    """Check-offs, sign-offs and problems of one ledger; every change audited once per request key."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.engine = ledger.engine  # the ledger created every table of the schema
        self._key: Any = _UNREAD  # read when first needed: reading check-offs needs no key
        self._add_chain_columns()

    def _add_chain_columns(self) -> None:
        """A ledger made before the audit chain gets its two columns (its old rows stay unchained)."""
        columns = {c["name"] for c in inspect(self.engine).get_columns("field_audit")}
        for name in ("prev_hash", "hash"):
            if name not in columns:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(text(f"ALTER TABLE field_audit ADD COLUMN {name} VARCHAR(64)"))
                except Exception:  # noqa: BLE001 - another process added it at the same moment
                    if name not in {c["name"] for c in inspect(self.engine).get_columns("field_audit")}:
                        raise

    def audit_key(self) -> bytes | None:
        if self._key is _UNREAD:
            self._key = audit_key()
        return self._key

    def check_audit_key(self) -> None:
        """Refuse to start (one line) when the trail is signed with a key this process does not have: its
        writes would be refused one by one."""
        head = self._head()
        if head is not None and head[0].key_id is not None and key_id(self.audit_key()) != head[0].key_id:
            raise wrong_key(head[0].key_id, self.audit_key(), "nothing can be recorded without it")

    def verify_chain(self, expect_head: tuple[int, str] | None = None) -> ChainReport:
        """Walk the audit trail in order and compare its end with the head (and `expect_head`: a row count and
        a prefix of that row's hash, as `bigbang audit verify` printed it); the first thing that does not hold
        is reported."""
        head = self._head()
        return verify(self._rows(), head[0] if head else None, head[1] if head else None, self.audit_key(),
                      expect_head)

    def _rows(self) -> Iterator[dict[str, Any]]:
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                batch = conn.execute(select(field_audit).where(field_audit.c.id > last_id)
                                     .order_by(field_audit.c.id).limit(1000)).mappings().all()
            if not batch:
                return
            for row in batch:
                yield dict(row)
            last_id = batch[-1]["id"]

    def _head(self, conn=None) -> tuple[Head, str] | None:
        query = select(field_audit_head).where(field_audit_head.c.id == HEAD_ID)
        if conn is None:
            with self.engine.connect() as own:
                row = own.execute(query).mappings().first()
        else:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return Head(row["row_count"], row["last_id"], row["last_hash"], row["key_id"]), row["signature"]

    # ------------------------------------------------------------ reads
    def checks(self, run_id: str, location_id: str | None = None) -> dict[tuple[str, str], CheckState]:
        query = select(field_checks).where(field_checks.c.run_id == run_id)
        if location_id is not None:
            query = query.where(field_checks.c.location_id == location_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return {(r["location_id"], r["item_id"]): CheckState(r["item_id"], bool(r["checked"]), r["value"], r["by"],
                                                             r["at"]) for r in rows}

    def audit(self, run_id: str, location_id: str | None = None) -> list[dict[str, Any]]:
        query = select(field_audit).where(field_audit.c.run_id == run_id)
        if location_id is not None:
            query = query.where(field_audit.c.location_id == location_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(field_audit.c.id)).mappings().all()
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # ------------------------------------------------------------ changes
    def set_check(self, run_id: str, location_id: str, item_id: str, checked: bool, actor: Actor,
                  request_key: str, value: str | None = None) -> bool:
        """Set one item checked or not; False if this request key was seen before (nothing changed)."""
        value = _clean(value, "value", MAX_VALUE) if value else None
        detail = {"checked": checked, **({"value": value} if value else {})}
        try:
            with self.engine.begin() as conn:
                if not self._audit(conn, request_key, actor, "check" if checked else "uncheck", run_id,
                                   location_id, item_id, detail):
                    return False
                key = and_(field_checks.c.run_id == run_id, field_checks.c.location_id == location_id,
                           field_checks.c.item_id == item_id)
                row = dict(checked=checked, value=value, by=actor.id, at=now())
                if conn.execute(select(field_checks.c.item_id).where(key)).first() is None:
                    conn.execute(field_checks.insert().values(run_id=run_id, location_id=location_id,
                                                              item_id=item_id, **row))
                else:
                    conn.execute(field_checks.update().where(key).values(**row))
        except IntegrityError:  # the same request arrived twice at the same moment: the other one won
            return False
        return True

    def add_problem(self, run_id: str, location_id: str, category: str, text: str, actor: Actor,
                    request_key: str, device: str | None = None) -> bool:
        """File a problem as a defect-to-be in the ledger; False if this request key was seen before."""
        if category not in PROBLEM_CATEGORIES:
            raise FieldInputError(f"unknown problem category '{category}'",
                                  hint="use one of " + ", ".join(PROBLEM_CATEGORIES))
        text = _clean(text, "text", MAX_TEXT)
        if not text:
            raise FieldInputError("describe the problem (the text is empty)")
        _check_key(request_key)
        # The ledger first: it is idempotent by the same key, so a crash in between loses nothing.
        added = self.ledger.add_problem(request_key, run_id, location_id, category, text, actor.id, device=device,
                                        source="field")
        self._audit_once(request_key, actor, "problem", run_id, location_id, device or "",
                         {"category": category, "text": text})
        return added

    def sign_off(self, run_id: str, location_id: str, actor: Actor, request_key: str, note: str = "",
                 open_items: int = 0, failed_devices: int = 0) -> bool:
        """Sign the location off, which releases its gate; False if it was signed off already.

        A sign-off with open work (items not ticked, devices failed) records what it signed and why in the
        audit trail and, as a problem, in the defect queue: the reason must not be lost in a note.
        """
        note = _clean(note, "note", MAX_TEXT)
        _check_key(request_key)
        done = self.ledger.sign_off(run_id, location_id, actor.id, note)
        detail: dict[str, Any] = {"note": note}
        if open_items or failed_devices:
            detail.update(open_items=open_items, failed_devices=failed_devices, reason=note)
        self._audit_once(request_key, actor, "signoff" if done else "signoff.repeated", run_id, location_id,
                         location_id, detail)
        if done and (open_items or failed_devices):
            text = (f"Signed off with {open_items} item{'' if open_items == 1 else 's'} not ticked and "
                    f"{failed_devices} device{'' if failed_devices == 1 else 's'} failed. Reason: {note}")
            self.ledger.add_problem(_derived_key(request_key, "signoff"), run_id, location_id, "other",
                                    text[:MAX_TEXT], actor.id, source="signoff")
        return done

    def check_in(self, run_id: str, location_id: str, actor: Actor, request_key: str) -> bool:
        """Record that `actor` arrived at the location (which may let it start); False if it was checked in
        before. The ledger's event and the audit row both say who entered it, and from where."""
        _check_key(request_key)
        done = self.ledger.check_in(run_id, location_id, f"by {actor.id} ({actor.source})")
        self._audit_once(request_key, actor, "checkin" if done else "checkin.repeated", run_id, location_id,
                         location_id, {})
        return done

    def _audit_once(self, request_key: str, actor: Actor, action: str, run_id: str, location_id: str,
                    subject: str, detail: dict[str, Any]) -> bool:
        try:
            with self.engine.begin() as conn:
                return self._audit(conn, request_key, actor, action, run_id, location_id, subject, detail)
        except IntegrityError:
            return False

    def _audit(self, conn, request_key: str, actor: Actor, action: str, run_id: str, location_id: str,
               subject: str, detail: dict[str, Any]) -> bool:
        _check_key(request_key)
        if conn.dialect.name == "postgresql":  # one chain: appends take turns
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('bigbang_field_audit_chain'))"))
        else:  # SQLite: take the write lock before reading the head (an update takes it, even of no row)
            conn.execute(update(field_audit_head).where(field_audit_head.c.id == HEAD_ID).values(id=HEAD_ID))
        if conn.execute(select(field_audit.c.id).where(field_audit.c.request_key == request_key)).first():
            return False
        found = self._head(conn)
        head = found[0] if found else None
        key = self.audit_key()
        kid = key_id(key)
        if head is None or head.key_id != kid:
            if head is not None and head.key_id is not None:  # never fall back to plain hashes
                raise wrong_key(head.key_id, key, "nothing can be recorded without it")
            head = self._mark(conn, head, key)
        values = dict(request_key=request_key, at=now(), actor=actor.id, role=actor.role, source=actor.source[:200],
                      action=action, run_id=run_id, location_id=location_id, subject=subject[:200],
                      detail=json.dumps(detail, sort_keys=True, ensure_ascii=False))
        row_id, chain_hash = self._append(conn, values, key)
        self._set_head(conn, Head(head.row_count + 1, row_id, chain_hash, kid), key, insert=False)
        return True

    def _mark(self, conn, head: Head | None, key: bytes | None) -> Head:
        """Start the head (a trail from before it, or a new one), or note that a key signs it from now on: a
        marker row in the chain says so, so a head deleted later is noticed."""
        event = HEAD_STARTED if head is None else KEY_ADDED
        rows_before = head.row_count if head else conn.execute(select(func.count()).select_from(field_audit)).scalar()
        detail = {"event": event, "key_id": key_id(key), "rows_before": rows_before}
        values = dict(request_key=f"head-{secrets.token_hex(16)}", at=now(), actor="bigbang", role="system",
                      source="bigbang", action=HEAD_MARK, run_id="", location_id="", subject=event,
                      detail=json.dumps(detail, sort_keys=True))
        mark_id, mark_hash = self._append(conn, values, key)
        marked = Head(int(rows_before or 0) + 1, mark_id, mark_hash, key_id(key))
        self._set_head(conn, marked, key, insert=head is None)
        return marked

    def _append(self, conn, values: dict[str, Any], key: bytes | None) -> tuple[int, str]:
        """Insert one row linked to the row before it; (its id, its hash)."""
        row_id = conn.execute(field_audit.insert().values(**values)).inserted_primary_key[0]
        prev = conn.execute(select(field_audit.c.hash).where(field_audit.c.id < row_id)
                            .order_by(field_audit.c.id.desc()).limit(1)).scalar()
        chain_hash = row_hash({**values, "id": row_id}, prev, key)
        conn.execute(field_audit.update().where(field_audit.c.id == row_id).values(prev_hash=prev, hash=chain_hash))
        return row_id, chain_hash

    def _set_head(self, conn, head: Head, key: bytes | None, insert: bool) -> None:
        values = dict(row_count=head.row_count, last_id=head.last_id, last_hash=head.last_hash, key_id=head.key_id,
                      signature=head.signature(key if head.key_id else None), updated_at=now())
        if insert:
            conn.execute(field_audit_head.insert().values(id=HEAD_ID, **values))
        else:
            conn.execute(field_audit_head.update().where(field_audit_head.c.id == HEAD_ID).values(**values))


def _derived_key(request_key: str, what: str) -> str:
    """A second record's key made from a request's key: the same request always gives the same key."""
    import hashlib

    return what + "-" + hashlib.sha256(request_key.encode()).hexdigest()[:40]


def _check_key(request_key: str) -> None:
    if not isinstance(request_key, str) or not REQUEST_KEY.match(request_key):
        raise FieldInputError("malformed request key", hint="8 to 64 letters, digits, '-' or '_'")


def _clean(text: str | None, name: str, limit: int) -> str:
    text = (text or "").strip()
    if len(text) > limit:
        raise FieldInputError(f"the {name} is too long ({len(text)} characters)", hint=f"at most {limit}")
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        raise FieldInputError(f"the {name} contains control characters")
    return text
