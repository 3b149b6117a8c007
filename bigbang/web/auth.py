"""Sign-in, sessions, CSRF tokens and roles for the field app.

Accounts come from the inventory: technicians under `teams[].technicians`
(role technician, bound to their team) and `rollout.staff` (ops_lead, support),
each with a `password_hash` from `bigbang hash-password`. A signed-in session is
a row in the ledger database named by a signed random token in the cookie
(itsdangerous): sign-out revokes it, and it ends `session_hours` after sign-in or
after `idle` without a request, however often the cookie is sent back. Every form carries the
session's CSRF token; `verify_csrf` refuses a POST without it.

For other routers (e.g. the defects pages): depend on `current_user` or
`require_role("support", "ops_lead")`, and put `csrf_token(request)` in a hidden
`csrf_token` field of every form, checked with `Depends(verify_csrf)`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool

from bigbang.errors import ConfigError
from bigbang.inventory.model import Inventory
from bigbang.store.sessions import SessionStore
from bigbang.web.passwords import verify_password

ROLES = ("technician", "ops_lead", "support")
COOKIE = "bigbang_session"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str  # technician | ops_lead | support
    team: str | None = None

    def can_see(self, team_id: str) -> bool:
        return self.role in ("ops_lead", "support") or self.team == team_id

    def can_change(self, team_id: str) -> bool:
        return self.role == "ops_lead" or (self.role == "technician" and self.team == team_id)


@dataclass(frozen=True)
class Account:
    user: User
    username: str
    password_hash: str | None


def accounts_from_inventory(inventory: Inventory) -> dict[str, Account]:
    """lower-cased username -> account; a name used twice is refused (it would make sign-in ambiguous)."""
    accounts: dict[str, Account] = {}
    ids: set[str] = set()

    def add(account: Account) -> None:
        key = account.username.lower()  # phones capitalise the first letter: names match case-insensitively
        if key in accounts or account.user.id in ids:
            raise ConfigError(f"the sign-in name '{account.username}' is used twice in the inventory",
                              hint="give one of them another `username` or id")
        accounts[key] = account
        ids.add(account.user.id)

    for team in inventory.teams:
        for tech in team.technicians:
            add(Account(User(tech.id, tech.name, "technician", team.id), tech.username or tech.id, tech.password_hash))
    for member in inventory.rollout.staff:
        add(Account(User(member.id, member.name, member.role, None), member.username or member.id,
                    member.password_hash))
    return accounts


class NotSignedIn(Exception):
    """No valid session: pages redirect to the sign-in page."""

    def __init__(self, expired: bool = False):
        super().__init__("not signed in")
        self.expired = expired


class Sessions:
    """Session cookies: a signed random token for a signed-in user (the session itself is a row in the
    ledger's `field_sessions`, see bigbang.store.sessions), a signed dict before sign-in (CSRF token, language).

    Signed in, a session ends at sign-out, `lifetime` seconds after sign-in, or `idle` seconds without a
    request; re-signing the cookie never extends it. Without a store (tests of the cookie alone) sessions
    live only in the signed cookie, as before.
    """

    def __init__(self, secret: str, lifetime: float, secure: bool = False, *, store: SessionStore | None = None,
                 idle: float | None = None):
        self.serializer = URLSafeTimedSerializer(secret, salt="bigbang-field-session")
        self.lifetime = lifetime
        self.idle = min(idle or lifetime, lifetime)
        self.secure = secure
        self.store = store

    def load(self, cookie: str | None) -> tuple[dict[str, Any] | None, bool]:
        """(session, expired)."""
        if not cookie or len(cookie) > 4096:
            return None, False
        try:
            data = self.serializer.loads(cookie, max_age=int(self.lifetime))
        except SignatureExpired:
            return None, True
        except BadSignature:
            return None, False
        if not isinstance(data, dict):
            return None, False
        if "sid" in data:
            if self.store is None or not isinstance(data["sid"], str):
                return None, False
            stored, timed_out = self.store.load(data["sid"])
            if stored is None:
                return None, timed_out
            return {"uid": stored.uid, "csrf": stored.csrf, "lang": stored.lang, "iat": stored.created_at,
                    "sid": stored.id}, False
        if data.get("uid") and self.store is not None:
            return None, False  # a signed-in session must be a stored one
        iat = data.get("iat")
        if not isinstance(iat, (int, float)) or time.time() - iat > self.lifetime:
            return None, True  # the first issue counts, however often the cookie was re-signed since
        return data, False

    def dump(self, session: dict[str, Any]) -> str:
        return self.serializer.dumps(session)

    @staticmethod
    def new(uid: str | None = None, lang: str | None = None) -> dict[str, Any]:
        return {"uid": uid, "csrf": secrets.token_urlsafe(24), "iat": time.time(), "lang": lang}


def session_middleware(sessions: Sessions):
    """Loads the session into request.state; writes the cookie back only when it changed."""

    async def middleware(request: Request, call_next):
        data, expired = await run_in_threadpool(sessions.load, request.cookies.get(COOKIE))
        request.state.session_expired = expired
        request.state.session = data if data is not None else Sessions.new()
        request.state.session_changed = data is None
        request.state.sessions = sessions
        response = await call_next(request)
        if request.state.session_changed:
            session = request.state.session
            if sessions.store is not None and session.get("uid"):
                if session.get("sid"):  # the same signed-in session (a new language): the cookie stays
                    await run_in_threadpool(sessions.store.set_lang, session["sid"], session.get("lang"))
                    return response
                client = request.client.host if request.client else ""
                token = await run_in_threadpool(sessions.store.create, session["uid"], session["csrf"],
                                                session.get("lang"), f"web {client}")
                value = sessions.dump({"sid": token})
            else:
                value = sessions.dump(session)
            # The cookie outlives the session by an hour so an expired session is told apart from none.
            response.set_cookie(COOKIE, value, max_age=int(sessions.lifetime) + 3600,
                                httponly=True, samesite="lax", secure=sessions.secure, path="/")
        return response

    return middleware


def start_session(request: Request, uid: str | None) -> None:
    """A new session (and a new CSRF token) at sign-in and sign-out; the old one is revoked."""
    old = request.state.session
    sessions: Sessions | None = getattr(request.state, "sessions", None)
    if old.get("sid") and sessions is not None and sessions.store is not None:
        sessions.store.revoke(old["sid"])
    request.state.session = Sessions.new(uid, old.get("lang"))
    request.state.session_changed = True


def csrf_token(request: Request) -> str:
    """The CSRF token to put in every form's hidden `csrf_token` field."""
    return request.state.session["csrf"]


async def verify_csrf(request: Request) -> None:
    """Dependency for every POST: the form's token must be the session's."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), csrf_token(request).encode()):
        raise HTTPException(status_code=403, detail="csrf")


def authenticate(accounts: dict[str, Account], username: str, password: str) -> User | None:
    account = accounts.get(username.strip().lower())
    if account is None or not account.password_hash:
        verify_password(password, _DUMMY_HASH)  # same cost whether or not the name exists
        return None
    return account.user if verify_password(password, account.password_hash) else None


def current_user(request: Request) -> User:
    """Dependency: the signed-in user; raises NotSignedIn (-> sign-in page) otherwise."""
    uid = request.state.session.get("uid")
    if not uid:
        raise NotSignedIn(expired=bool(getattr(request.state, "session_expired", False)))
    user = request.app.state.field.users_by_id.get(uid)
    if user is None:  # removed from the inventory since signing in
        raise NotSignedIn()
    return user


def require_role(*roles: str) -> Callable[..., User]:
    """Dependency factory: the signed-in user if their role is one of `roles`, else 403."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")

    def dependency(user: User = Depends(current_user)) -> User:
        if user.role not in roles:
            raise HTTPException(status_code=403, detail="forbidden")
        return user

    return dependency


_DUMMY_HASH = "scrypt$16384$8$5$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
