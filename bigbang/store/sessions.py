"""Field-app sessions, kept server-side in the ledger database.

The browser's cookie holds only a random token; the row (keyed by the token's
SHA-256, so a read of the database does not hand out live sessions) says who is
signed in. A session ends at sign-out (revoked: the old cookie no longer works),
`absolute` seconds after sign-in whatever happens, and after `idle` seconds
without a request. Nothing re-issues a session: a longer stay needs a new sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Engine

from bigbang.store.schema import field_sessions

TOUCH_EVERY = 30.0  # seconds: last_seen is written at most this often per session


@dataclass(frozen=True)
class StoredSession:
    id: str
    uid: str
    csrf: str
    lang: str | None
    created_at: float
    last_seen: float


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, engine: Engine, *, absolute: float, idle: float):
        self.engine = engine
        self.absolute = absolute
        self.idle = idle

    def create(self, uid: str, csrf: str, lang: str | None, source: str = "") -> str:
        """A new session; returns the token for the cookie (stored only as its hash)."""
        token = secrets.token_urlsafe(32)
        at = time.time()
        with self.engine.begin() as conn:
            conn.execute(field_sessions.insert().values(id=_key(token), uid=uid, csrf=csrf, lang=lang,
                                                        source=source[:200], created_at=at, last_seen=at))
        if secrets.randbelow(50) == 0:
            self.purge()
        return token

    def load(self, token: str) -> tuple[StoredSession | None, bool]:
        """(session, timed_out): None for an unknown, revoked or timed-out token; touches a live one."""
        if not token or len(token) > 200:
            return None, False
        key = _key(token)
        with self.engine.connect() as conn:
            row = conn.execute(select(field_sessions).where(field_sessions.c.id == key)).mappings().first()
        if row is None or row["revoked_at"] is not None:
            return None, False
        at = time.time()
        if at - row["created_at"] > self.absolute or at - row["last_seen"] > self.idle:
            return None, True
        if at - row["last_seen"] > min(TOUCH_EVERY, self.idle / 10):
            with self.engine.begin() as conn:
                conn.execute(update(field_sessions).where(field_sessions.c.id == key).values(last_seen=at))
        return StoredSession(key, row["uid"], row["csrf"], row["lang"], row["created_at"], at), False

    def set_lang(self, session_id: str, lang: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(field_sessions).where(field_sessions.c.id == session_id).values(lang=lang))

    def revoke(self, session_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(field_sessions).where(field_sessions.c.id == session_id,
                                                      field_sessions.c.revoked_at.is_(None)).values(revoked_at=time.time()))

    def revoke_user(self, uid: str) -> int:
        """End every session of `uid` (e.g. a lost phone); returns how many were live."""
        with self.engine.begin() as conn:
            return conn.execute(update(field_sessions).where(field_sessions.c.uid == uid,
                                                             field_sessions.c.revoked_at.is_(None))
                                .values(revoked_at=time.time())).rowcount

    def purge(self) -> None:
        """Forget sessions that can no longer be used (a day after they ended, for the record)."""
        at = time.time()
        with self.engine.begin() as conn:
            conn.execute(delete(field_sessions).where(or_(
                field_sessions.c.created_at < at - self.absolute - 86400,
                field_sessions.c.revoked_at < at - 86400)))
