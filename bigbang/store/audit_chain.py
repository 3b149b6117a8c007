"""The audit trail's hash chain and its signed head: `FieldStore` writes them, `bigbang audit verify` checks them.

Each audit row's `hash` covers its content and the previous row's hash, so a row changed, removed or slipped in
breaks the chain at the next link. The rows alone cannot show rows removed from the end, nor a forger who
recomputes every hash after the row he changed. Two things do:

- The head (table `field_audit_head`): the row count, the last row and its hash, signed, and updated in the
  transaction of every audit row. Rows removed from the end, or anywhere with the chain recomputed, no longer
  match it; `bigbang audit verify` prints it, so a copy kept elsewhere (`--expect-head`) catches even a trail
  rolled back as a whole.
- The audit key (`BIGBANG_AUDIT_KEY_FILE`: a file only its owner may read; or `BIGBANG_AUDIT_KEY`): with it
  the row hashes and the head's signature are HMAC-SHA256, which nobody without the key can recompute.
  Without it they are plain SHA-256: they catch rows removed or changed with SQL, not a forger who knows
  this code and rewrites the head as well.

Marker rows in the chain (action `audit.head`, no run) say where the head started and where a key was
added, so a deleted head is found too. A trail written before the head existed has no marker: it verifies
as before (its first rows may be unchained) until its next change starts the head.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bigbang.errors import ConfigError

AUDIT_KEY_ENV = "BIGBANG_AUDIT_KEY"
AUDIT_KEY_FILE_ENV = "BIGBANG_AUDIT_KEY_FILE"
MIN_KEY = 16
HEAD_MARK = "audit.head"  # the action of a marker row
HEAD_STARTED, KEY_ADDED = "head started", "key added"
CHAINED = ("id", "request_key", "at", "actor", "role", "source", "action", "run_id", "location_id", "subject",
           "detail")
KEY_HINT = f"set {AUDIT_KEY_FILE_ENV} to a file holding the key (chmod 600), or {AUDIT_KEY_ENV}"


def audit_key() -> bytes | None:
    """The audit key, from the file `BIGBANG_AUDIT_KEY_FILE` names or from `BIGBANG_AUDIT_KEY`; None if neither."""
    path = os.environ.get(AUDIT_KEY_FILE_ENV)
    if path:
        where = f"the audit key file {path}"
        from bigbang.secrets import read_owner_only_file

        key = read_owner_only_file(path, where, unreadable_hint=f"or unset {AUDIT_KEY_FILE_ENV}")
    else:
        where = f"environment variable {AUDIT_KEY_ENV}"
        key = os.environ.get(AUDIT_KEY_ENV, "").strip()
        if not key:
            return None
    if len(key) < MIN_KEY:
        raise ConfigError(f"{where} holds a key of {len(key)} characters",
                          hint=f"use at least {MIN_KEY}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key.encode()


def key_id(key: bytes | None) -> str | None:
    """A name for a key that tells nothing about it: which key signs a trail."""
    return hmac.new(key, b"bigbang audit key id", hashlib.sha256).hexdigest()[:16] if key else None


def _digest(key: bytes | None, payload: str) -> str:
    data = payload.encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()


def row_hash(row: Mapping[str, Any], prev_hash: str | None, key: bytes | None = None) -> str:
    """The chain hash of one audit row: its content and the previous row's hash (HMAC with the audit key)."""
    content = json.dumps({k: row[k] for k in CHAINED}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return _digest(key, f"{prev_hash or ''}\n{content}")


@dataclass(frozen=True)
class Head:
    """The end of the trail as its writers left it."""

    row_count: int  # every row of the trail, unchained old ones included
    last_id: int
    last_hash: str
    key_id: str | None  # the key that signs it (None: a plain hash)

    def signature(self, key: bytes | None) -> str:
        return _digest(key, f"bigbang audit head\n{self.row_count}\n{self.last_id}\n{self.last_hash}\n"
                            f"{self.key_id or ''}")

    @property
    def witness(self) -> str:
        """What to keep elsewhere and give to `bigbang audit verify --expect-head` later."""
        return f"{self.row_count}:{self.last_hash}"


@dataclass(frozen=True)
class ChainReport:
    rows: int  # rows checked
    unchained: int  # rows written before the chain existed (at the start only)
    last_hash: str | None
    broken_at: int | None = None  # the first row whose link is broken (None: the end of the trail is wrong)
    reason: str = ""
    row: dict[str, Any] | None = None
    head: Head | None = None  # the head record, as found
    key_id: str | None = None  # the key the trail is signed with (from its marker on)

    @property
    def ok(self) -> bool:
        return not self.reason


def verify(rows: Iterable[Mapping[str, Any]], head: Head | None, signature: str | None, key: bytes | None,
           expect: tuple[int, str] | None = None) -> ChainReport:
    """Walk the trail in order and compare its end with the head (and with a witnessed head, `expect`:
    row count and a prefix of that row's hash). The first thing that does not hold is reported."""
    prev: str | None = None
    count = unchained = last_id = 0
    chained = started = False
    trail_key: str | None = None
    witnessed: str | None = None
    for row in rows:
        count += 1
        if expect is not None and count == expect[0]:
            witnessed = row["hash"] or ""
        broken = None
        if row["hash"] is None:
            if not chained:
                unchained += 1
                last_id = row["id"]
                continue
            broken = "it has no hash, but rows before it do (inserted outside bigbang?)"
        elif row["prev_hash"] != prev:
            broken = ("its link to the previous row does not match (a row before it was removed or changed, "
                      "or this one was inserted)")
        else:
            if row["action"] == HEAD_MARK:
                broken, started, trail_key = _marker(row, started, trail_key)
            if not broken:
                if trail_key is not None and key_id(key) != trail_key:
                    raise wrong_key(trail_key, key, f"from row {row['id']} on")
                if row_hash(row, prev, key if trail_key else None) != row["hash"]:
                    broken = "its content does not match its hash (changed after it was written)"
        if broken:
            return ChainReport(count, unchained, prev, row["id"], broken, dict(row), head, trail_key)
        chained = True
        prev, last_id = row["hash"], row["id"]
    return ChainReport(count, unchained, prev, head=head, key_id=trail_key,
                       reason=_end_problem(count, last_id, prev, started, trail_key, head, signature, key)
                       or _witness_problem(count, witnessed, expect))


def _marker(row: Mapping[str, Any], started: bool, trail_key: str | None) -> tuple[str | None, bool, str | None]:
    """(what is wrong, head started, key) after a marker row."""
    try:
        detail = json.loads(row["detail"] or "{}")
    except ValueError:
        detail = {}
    event, kid = detail.get("event"), detail.get("key_id")
    if event == HEAD_STARTED and not started:
        return None, True, kid
    if event == HEAD_STARTED:
        return ("the head record was removed before this row, where it starts again: rows removed from the "
                "trail's end before then cannot be counted"), started, trail_key
    if event == KEY_ADDED and started and trail_key is None and kid:
        return None, started, kid
    return "a marker the trail cannot have (a key removed or replaced, or a forged row)", started, trail_key


def _end_problem(count: int, last_id: int, last_hash: str | None, started: bool, trail_key: str | None,
                 head: Head | None, signature: str | None, key: bytes | None) -> str:
    if head is None:
        return ("the head record is missing (deleted?): rows removed from the trail's end cannot be ruled out"
                if started else "")  # a trail from before the head: its next change starts one
    if head.key_id != trail_key:
        return f"the head is signed with key {head.key_id}, the trail with key {trail_key} (the head was replaced)"
    if head.key_id is not None and key_id(key) != head.key_id:
        raise wrong_key(head.key_id, key, "its head")
    if signature != head.signature(key if head.key_id else None):
        return "the head record does not match its signature (changed outside bigbang)"
    if head.row_count > count:
        missing = head.row_count - count
        return (f"{missing} row{'s' if missing != 1 else ''} missing: the head records {head.row_count} rows ending "
                f"with row {head.last_id}, the trail has {count} ending with row {last_id}")
    if head.row_count < count or head.last_id != last_id:
        return (f"rows the head does not record (slipped in outside bigbang): the trail has {count} rows ending with "
                f"row {last_id}, the head records {head.row_count} ending with row {head.last_id}")
    if head.last_hash != last_hash:
        return f"row {last_id}'s hash is not the head's (the end of the trail was rewritten)"
    if key is not None and head.key_id is None:
        return (f"the trail is not signed with the audit key given (key {key_id(key)}): plain hashes only vouch for "
                "it (the key was set after its last change?)")
    return ""


def _witness_problem(count: int, witnessed: str | None, expect: tuple[int, str] | None) -> str:
    if expect is None:
        return ""
    rows, prefix = expect
    if count < rows:
        missing = rows - count
        return (f"{missing} row{'s' if missing != 1 else ''} missing at the end: the expected head is row {rows}, "
                f"the trail has {count} rows")
    if not (witnessed or "").startswith(prefix):
        return f"row {rows} is not the expected one: its hash is {(witnessed or 'none')[:16]}, expected {prefix[:16]}"
    return ""


def wrong_key(trail_key: str, key: bytes | None, where: str) -> ConfigError:
    """The error for a trail signed with a key this process does not have."""
    given = "no audit key is set" if key is None else f"the key set is another one (key {key_id(key)})"
    return ConfigError(f"the audit trail is signed with audit key {trail_key} ({where}); {given}", hint=KEY_HINT)
