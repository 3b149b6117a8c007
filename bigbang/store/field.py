"""Technicians' check-offs and the audit trail of every change made in the field.

Own tables in their own MetaData, created on the ledger's engine (SQLite or
PostgreSQL), so they live beside the run they belong to. Every change is one
request with a client request key: the audit row is inserted first and its key
is unique, so a retried request (a flaky phone connection, a double tap) finds
its row and changes nothing. Sign-offs and problems go through the ledger
(`Ledger.sign_off`, `Ledger.add_problem`): the sign-off gate and the defect
tracking read them there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    select,
)
from sqlalchemy.exc import IntegrityError

from bigbang.errors import UserError
from bigbang.store.ledger import Ledger, now
from bigbang.store.schema import field_audit, field_checks

REQUEST_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
PROBLEM_CATEGORIES = ("hardware", "image", "network", "peripheral", "access", "user", "other")
MAX_TEXT = 2000
MAX_VALUE = 120


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
        if conn.execute(select(field_audit.c.id).where(field_audit.c.request_key == request_key)).first():
            return False
        conn.execute(field_audit.insert().values(
            request_key=request_key, at=now(), actor=actor.id, role=actor.role, source=actor.source[:200],
            action=action, run_id=run_id, location_id=location_id, subject=subject[:200],
            detail=json.dumps(detail, sort_keys=True, ensure_ascii=False)))
        return True


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
