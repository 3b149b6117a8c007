"""Sign-in, sessions, CSRF tokens and roles for the field app.

Accounts come from the inventory: technicians under `teams[].technicians`
(role technician, bound to their team) and `rollout.staff` (ops_lead, support),
each with a `password_hash` from `bigbang hash-password`. A session is a signed,
timestamped cookie (itsdangerous): it expires `session_hours` after sign-in and
cannot be forged or altered without the server's key. Every form carries the
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

from bigbang.errors import ConfigError
from bigbang.inventory.model import Inventory
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
    """Signed session cookies that expire `lifetime` seconds after they were issued."""

    def __init__(self, secret: str, lifetime: float, secure: bool = False):
        self.serializer = URLSafeTimedSerializer(secret, salt="bigbang-field-session")
        self.lifetime = lifetime
        self.secure = secure

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
        return (data, False) if isinstance(data, dict) else (None, False)

    def dump(self, session: dict[str, Any]) -> str:
        return self.serializer.dumps(session)

    @staticmethod
    def new(uid: str | None = None, lang: str | None = None) -> dict[str, Any]:
        return {"uid": uid, "csrf": secrets.token_urlsafe(24), "iat": time.time(), "lang": lang}


def session_middleware(sessions: Sessions):
    """Loads the session into request.state; writes the cookie back only when it changed."""

    async def middleware(request: Request, call_next):
        data, expired = sessions.load(request.cookies.get(COOKIE))
        request.state.session_expired = expired
        request.state.session = data if data is not None else Sessions.new()
        request.state.session_changed = data is None
        response = await call_next(request)
        if request.state.session_changed:
            # The cookie outlives the signature by an hour so an expired session is told apart from none.
            response.set_cookie(COOKIE, sessions.dump(request.state.session), max_age=int(sessions.lifetime) + 3600,
                                httponly=True, samesite="lax", secure=sessions.secure, path="/")
        return response

    return middleware


def start_session(request: Request, uid: str | None) -> None:
    """A new session (and a new CSRF token) at sign-in and sign-out."""
    lang = request.state.session.get("lang")
    request.state.session = Sessions.new(uid, lang)
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


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
