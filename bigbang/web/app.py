"""The field app: server-rendered pages for technicians and the ops lead's board.

Small pages that work without JavaScript on a phone over a weak connection:
every change is one POST form with a CSRF token and a request key (the form's
idempotency key), answered by a redirect back to the page (post/redirect/get),
so a reload or a retried request never counts twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigbang.checklists import (
    Checklist,
    build_checklist,
    html_to_pdf,
    item_ids,
    languages,
    location_status,
    render_checklist_html,
    schedule,
    template_env,
    translator,
)
from bigbang.errors import UserError
from bigbang.inventory import load_inventory
from bigbang.session import frozen_run, inventory_plan
from bigbang.status import DeviceStatus, device_status
from bigbang.store.field import (
    MAX_TEXT,
    MAX_VALUE,
    PROBLEM_CATEGORIES,
    Actor,
    FieldInputError,
    FieldStore,
)
from bigbang.store.ledger import Ledger
from bigbang.store.sessions import SessionStore
from bigbang.web.auth import (
    NotSignedIn,
    Sessions,
    User,
    accounts_from_inventory,
    authenticate,
    current_user,
    require_role,
    session_middleware,
    start_session,
    verify_csrf,
)
from bigbang.web.security import SecurityHeaders

log = logging.getLogger("bigbang.web")
STATIC = Path(__file__).resolve().parent / "static"

MAX_BODY = 64 * 1024  # a form here is a few hundred bytes; anything larger is refused before parsing
BOARD_REFRESH = 15
VERIFY_REFRESH = 5
LOCK_AFTER, LOCK_WINDOW = 5, 300.0  # failed sign-ins per user name and source, seconds: then a pause
LOCK_USER_ANYWHERE = 50  # failures for one user from all unknown sources in the window: unknown devices pause too
LOCK_SOURCE = 30  # failures from one address for any users in the window (someone trying many names)
DEVICE_COOKIE = "bb_device"  # a phone that signed in as a user before: its own failures only count for it


class FieldApp:
    """What the pages need: inventory, plan, ledger, check-offs, accounts; shared by all requests."""

    def __init__(self, inventory_path: str | Path, ledger_url: str | None, run_id: str | None, lang: str | None,
                 base_url: str | None):
        self.inventory_path = Path(inventory_path)
        self.ledger = Ledger(ledger_url)
        if run_id is not None:  # a run's pages follow its frozen plan and inventory, never the YAML
            from bigbang.run_ids import resolve_run_id

            run_id = resolve_run_id(self.ledger, run_id)  # also `latest`
            run = frozen_run(self.ledger, run_id)
            self.inventory, self.plan = run.inventory, run.plan
        else:
            self.inventory = load_inventory(self.inventory_path)
            self.plan = inventory_plan(self.inventory, self.inventory_path)
        self.store = FieldStore(self.ledger)
        self.store.check_audit_key()  # a trail signed with another key: refuse to start, not every request
        self.fixed_run_id = run_id
        self.lang = lang or inventory_language(self.inventory)
        self.zone = self.inventory.rollout.window.zone
        self.base_url = base_url or self.inventory.rollout.field_url  # else the PDF's request's address
        self.accounts = accounts_from_inventory(self.inventory)
        self.users_by_id = {a.user.id: a.user for a in self.accounts.values()}
        self.schedule = schedule(self.plan)
        self._failures: dict[tuple[str, str], list[float]] = {}  # (user, source) -> times of recent failures
        self.known_devices: dict[str, str] = {}  # device cookie -> the user who signed in with it
        if run_id is not None and self.ledger.get_run(run_id) is None:
            raise UserError(f"no run {run_id} in the ledger {self.ledger.safe_url}")

    # ------------------------------------------------------------ sign-in lockout
    # Failures count per (user, source): a source is a known device (a cookie from an earlier sign-in as
    # this user) or else the address. Someone typing a technician's id from elsewhere pauses only
    # themselves; the technician's own phone still signs in. An ops lead can lift a lock from the board.

    def _recent(self, key: tuple[str, str]) -> list[float]:
        cut = time.monotonic() - LOCK_WINDOW
        recent = [t for t in self._failures.get(key, []) if t > cut]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def lock_until(self, username: str, address: str, device: str | None) -> float | None:
        """Seconds (monotonic) until which this sign-in is paused, or None."""
        known = device is not None and self.known_devices.get(device) == username
        keys = [(username, "device:" + device)] if known and device else [(username, "addr:" + address),
                                                                              ("*", "addr:" + address)]
        limits = {"*": LOCK_SOURCE}
        until = None
        for key in keys:
            recent = self._recent(key)
            if len(recent) >= limits.get(key[0], LOCK_AFTER):
                until = max(until or 0.0, recent[-limits.get(key[0], LOCK_AFTER)] + LOCK_WINDOW)
        if not known:
            anywhere = [t for k, ts in list(self._failures.items()) if k[0] == username and not
                        k[1].startswith("device:") for t in ts if t > time.monotonic() - LOCK_WINDOW]
            if len(anywhere) >= LOCK_USER_ANYWHERE:
                until = max(until or 0.0, sorted(anywhere)[-LOCK_USER_ANYWHERE] + LOCK_WINDOW)
        return until

    def sign_in_failed(self, username: str, address: str, device: str | None) -> None:
        if len(self._failures) > 10_000:  # bounded memory under a flood of made-up names
            self._failures.clear()
        known = device is not None and self.known_devices.get(device) == username
        now = time.monotonic()
        if known and device:
            self._failures.setdefault((username, "device:" + device), []).append(now)
        else:
            self._failures.setdefault((username, "addr:" + address), []).append(now)
            self._failures.setdefault(("*", "addr:" + address), []).append(now)

    def signed_in(self, username: str, device: str | None) -> str:
        """A successful sign-in: this device is now known for `username`; returns its token."""
        if device is None or self.known_devices.get(device) != username:
            device = secrets.token_urlsafe(18)
            if len(self.known_devices) > 50_000:
                self.known_devices.clear()
            self.known_devices[device] = username
        return device

    def locks(self) -> list[dict[str, Any]]:
        """Current locks for the board: user, source, until (epoch seconds)."""
        out = []
        for (user, source), _ in list(self._failures.items()):
            limit = LOCK_SOURCE if user == "*" else LOCK_AFTER
            recent = self._recent((user, source))
            if len(recent) >= limit:
                until = recent[-limit] + LOCK_WINDOW
                out.append({"user": user, "source": source.split(":", 1)[1] if source.startswith("addr:")
                            else "known device", "until": time.time() + (until - time.monotonic()),
                            "key": f"{user}|{source}"})
        return sorted(out, key=lambda lock: lock["user"])

    def unlock(self, key: str) -> bool:
        user, _, source = key.partition("|")
        found = self._failures.pop((user, source), None) is not None
        if user != "*":  # the user's failures from everywhere: a lead vouched for them
            for k in [k for k in self._failures if k[0] == user]:
                self._failures.pop(k, None)
                found = True
        return found

    def run_id(self) -> str | None:
        """The run the pages show: the one given, else the newest run of this inventory."""
        if self.fixed_run_id:
            return self.fixed_run_id
        for row in self.ledger.list_runs(50):
            if row["inventory_digest"] == self.inventory.digest:
                return row["run_id"]
        return None

    def visible_location(self, user: User, location_id: str) -> str:
        """The location's team if `user` may see it; 404 otherwise (the same answer for 'not yours')."""
        entry = self.schedule.get(location_id)
        if entry is None or not user.can_see(entry[1].team):
            raise HTTPException(status_code=404, detail="not_found")
        return entry[1].team

    def checklist(self, location_id: str, run_id: str | None, base_url: str | None = None) -> Checklist:
        return build_checklist(self.inventory, self.plan, location_id, ledger=self.ledger if run_id else None,
                               run_id=run_id, base_url=self.base_url or base_url)


ZONE_LANGUAGES = {"Europe/Copenhagen": "da", "Europe/Stockholm": "sv", "Europe/Oslo": "nb",
                  "Atlantic/Faroe": "da", "America/Nuuk": "da", "Europe/Mariehamn": "sv"}


def inventory_language(inventory) -> str:
    """The app's default language: the inventory's `rollout.language` if it has one, else its window's zone."""
    lang = getattr(inventory.rollout, "language", None) or ZONE_LANGUAGES.get(inventory.rollout.window.timezone)
    return lang if lang in languages() else "en"


def create_app(inventory_path: str | Path, ledger_url: str | None = None, run_id: str | None = None, *,
               lang: str | None = None, base_url: str | None = None, secret: str | None = None,
               session_hours: float = 12.0, secure_cookies: bool = False,
               idle_minutes: float = 120.0) -> FastAPI:
    """The field app for one inventory and ledger; `run_id` None shows the inventory's newest run."""
    field = FieldApp(inventory_path, ledger_url, run_id, lang, base_url)  # lang None: the inventory's
    store = SessionStore(field.ledger.engine, absolute=session_hours * 3600, idle=idle_minutes * 60)
    sessions = Sessions(secret or os.environ.get("BIGBANG_WEB_SECRET") or secrets.token_urlsafe(32),
                        session_hours * 3600, secure_cookies, store=store, idle=idle_minutes * 60)
    app = FastAPI(title="bigbang field app", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.field = field
    app.state.render = page  # the defect pages render with the field app's layout without importing it

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return page(request, "web/error.html.j2", status=411, message="error.bad_request")
            if int(length) > MAX_BODY:
                return page(request, "web/error.html.j2", status=413, message="error.too_large")
        return await call_next(request)

    app.middleware("http")(session_middleware(sessions))  # added last: runs first, so error pages have a session
    app.add_middleware(_CompressPages)
    app.add_middleware(SecurityHeaders)  # outermost: every response, error pages included

    _errors(app)
    _routes(app, field, secure_cookies)
    _include_defects(app)
    return app


class _CompressPages:
    """gzip for the big pages (a location with a hundred devices: ~270 kB -> ~25 kB on a phone's weak link).

    Not for pages that echo request input beside the CSRF token (sign-in's `next`): compressing a secret
    next to attacker-chosen text would let a network observer guess it from sizes (BREACH).
    """

    def __init__(self, app):
        from starlette.middleware.gzip import GZipMiddleware

        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=2048)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"].startswith("/l/") or scope["path"] in ("/", "/board")):
            return await self.gzip(scope, receive, send)
        return await self.app(scope, receive, send)


# ---------------------------------------------------------------- rendering

@lru_cache(maxsize=16)
def _env(lang: str, zone: str = "UTC"):
    """Templates in `lang`; times shown in the rollout's zone with the language's day names."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    env = template_env(lang)
    t, tz = translator(lang), ZoneInfo(zone)
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

    def clock(ts: float | None) -> str:
        if not ts:
            return "–"
        local = datetime.fromtimestamp(ts, tz)
        return f"{t('day.' + days[local.weekday()])} {local:%H:%M}"

    env.filters["clock"] = clock
    # who did it: the rehearsal's simulated technician in the page's language
    env.filters["who"] = lambda name: t("web.simulated_technician") if name == "simulated technician" else name
    env.filters["hhmm"] = lambda ts: datetime.fromtimestamp(ts, tz).strftime("%H:%M") if ts else "–"
    return env


def env_for(request: Request):
    return _env(request_lang(request), request.app.state.field.inventory.rollout.window.timezone)


def request_lang(request: Request) -> str:
    lang = request.state.session.get("lang") if hasattr(request.state, "session") else None
    return lang if lang in languages() else request.app.state.field.lang


def page(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> HTMLResponse:
    """Render templates/<template> with the request's language, user and CSRF token."""
    lang = request_lang(request)
    session = getattr(request.state, "session", None) or {}
    user = request.app.state.field.users_by_id.get(session.get("uid")) if session.get("uid") else None
    values: dict[str, Any] = {"refresh": None, "detail": None, "error": None, "msg": None, "wide": False,
                              "has_defects": getattr(request.app.state, "has_defects", False)}
    values.update(context)
    try:
        html = _env(lang, request.app.state.field.inventory.rollout.window.timezone).get_template(template).render(
            request=request, user=user, csrf=session.get("csrf", ""),
            rollout=request.app.state.field.inventory.rollout, new_key=lambda: secrets.token_urlsafe(12), **values)
    except Exception:  # noqa: BLE001 - an error page must never fail into a traceback
        if template == "web/error.html.j2":
            log.exception("rendering the error page failed")
            return HTMLResponse("<!doctype html><title>Error</title><p>Error " + str(status) + "</p>",
                                status_code=status)
        raise
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def wants_json(request: Request) -> bool:
    """A request sent by field.js (fetch) gets a small JSON answer instead of a redirect or a page."""
    return request.headers.get("x-bigbang-fetch") == "1"


def error_page(request: Request, status: int, message: str, detail: str | None = None) -> Response:
    if wants_json(request):
        t = env_for(request).globals["t"]
        return JSONResponse({"ok": False, "status": status, "error": t(message), "detail": detail},
                            status_code=status, headers={"Cache-Control": "no-store"})
    return page(request, "web/error.html.j2", status=status, message=message, detail=detail)


def _errors(app: FastAPI) -> None:
    messages = {400: "error.bad_request", 403: "error.forbidden", 404: "error.not_found", 413: "error.too_large",
                422: "error.bad_request"}

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn):
        if request.method == "GET":
            target = "/login?next=" + _quote(request.url.path) + ("&expired=1" if exc.expired else "")
            return RedirectResponse(target, status_code=303)
        return error_page(request, 401, "web.session_expired" if exc.expired else "error.forbidden")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        key = "error.csrf" if exc.detail == "csrf" else messages.get(exc.status_code, "error.bad_request")
        return error_page(request, exc.status_code, key,
                          exc.detail if exc.detail not in ("csrf", "not_found", "forbidden", "Not Found") else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
        return error_page(request, 422, "error.bad_request", "check: " + ", ".join(fields) if fields else None)

    @app.exception_handler(FieldInputError)
    async def bad_field(request: Request, exc: FieldInputError):
        return error_page(request, 422, "error.bad_request", str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        ref = secrets.token_hex(4)
        log.exception("field app error %s on %s %s", ref, request.method, request.url.path)
        return error_page(request, 500, "error.internal", f"ref {ref}")


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an absolute or scheme-relative URL (open redirect).
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _source(request: Request) -> str:
    client = request.client.host if request.client else "?"
    agent = (request.headers.get("user-agent") or "")[:80]
    return f"web {client} {agent}".strip()


# ---------------------------------------------------------------- routes

def _routes(app: FastAPI, field: FieldApp, secure_cookies: bool = False) -> None:
    technician_or_lead = require_role("technician", "ops_lead", "support")

    @app.get("/sw.js", include_in_schema=False)
    def service_worker():
        # At the site's root so that its scope covers every page; never cached by HTTP (updates reach phones).
        return FileResponse(STATIC / "sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(status_code=404, detail="not_found")
        kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        return FileResponse(path, media_type=kinds.get(path.suffix, "application/octet-stream"),
                            headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", expired: int = 0):
        return page(request, "web/login.html.j2", next=_safe_next(next), error="web.session_expired" if expired else None)

    @app.post("/login", response_class=HTMLResponse, dependencies=[Depends(verify_csrf)])
    def login(request: Request, username: str = Form(..., max_length=64), password: str = Form(..., max_length=256),
              next: str = Form("/", max_length=300)):
        name = username.strip().lower()
        address = request.client.host if request.client else "?"
        device = request.cookies.get(DEVICE_COOKIE)
        until = field.lock_until(name, address, device)
        if until is not None:
            wait = max(1, int(until - time.monotonic() + 59) // 60)
            log.warning("locked sign-in for %r from %s", username[:64], _source(request))
            return page(request, "web/login.html.j2", status=429, next=_safe_next(next), error="web.locked",
                        username=username, wait_minutes=wait, retry_at=time.time() + (until - time.monotonic()),
                        headers={"Retry-After": str(int(until - time.monotonic()) + 1)})
        user = authenticate(field.accounts, username, password)
        if user is None:
            field.sign_in_failed(name, address, device)
            log.warning("failed sign-in for %r from %s", username[:64], _source(request))
            return page(request, "web/login.html.j2", status=401, next=_safe_next(next), error="web.bad_login",
                        username=username)
        start_session(request, user.id)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(DEVICE_COOKIE, field.signed_in(name, device), max_age=365 * 86400, httponly=True,
                            samesite="lax", secure=secure_cookies, path="/login")
        return response

    @app.post("/board/unlock", dependencies=[Depends(verify_csrf)])
    def unlock(request: Request, key: str = Form(..., max_length=300),
               user: User = Depends(require_role("ops_lead"))):
        if field.unlock(key):
            log.warning("sign-in lock %r lifted by %s", key[:100], user.id)
        return RedirectResponse("/board#locks", status_code=303)

    @app.post("/logout", dependencies=[Depends(verify_csrf)])
    def logout(request: Request):
        start_session(request, None)
        return RedirectResponse("/login", status_code=303)

    @app.get("/lang/{code}")
    def set_lang(request: Request, code: str, next: str = "/"):
        if code not in languages():
            raise HTTPException(status_code=404, detail="not_found")
        request.state.session["lang"] = code
        request.state.session_changed = True
        return RedirectResponse(_safe_next(next), status_code=303)

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, user: User = Depends(technician_or_lead)):
        if user.role != "technician":  # support staff land on their queue, ops leads on the board
            landing = "/defects" if user.role == "support" and getattr(request.app.state, "has_defects", False) \
                else "/board"
            return RedirectResponse(landing, status_code=303)
        run_id = field.run_id()
        rows = _location_rows(field, run_id, [lid for lid, (_, lp) in field.schedule.items() if lp.team == user.team])
        return page(request, "web/home.html.j2", rows=rows, run_id=run_id)

    @app.get("/board", response_class=HTMLResponse)
    def board(request: Request, team: str = "", region: str = "", status: str = "", problems: int = 0,
              q: str = "", sort: str = "planned", desc: int = 0,
              user: User = Depends(require_role("ops_lead", "support"))):
        from bigbang.web.board import board_view

        run_id = field.run_id()
        rows = _location_rows(field, run_id, list(field.schedule))
        view = board_view(field, run_id, rows, team=team[:80], region=region[:80], status=status[:40],
                          problems=bool(problems), q=q[:100], sort=sort[:20], desc=bool(desc))
        return page(request, "web/board.html.j2", rows=view.rows, run_id=run_id, refresh=BOARD_REFRESH, v=view,
                    wide=True, locks=field.locks() if user.role == "ops_lead" else [])

    @app.get("/l/{location_id}", response_class=HTMLResponse)
    def location(request: Request, location_id: str, msg: str | None = None,
                 user: User = Depends(technician_or_lead)):
        team = field.visible_location(user, location_id)
        run_id = field.run_id()
        checklist = field.checklist(location_id, run_id)
        verifying = checklist.signoff is not None and (checklist.verify is None or not checklist.verify.final)
        open_items, failed_devices = open_work(checklist)
        from bigbang.web.board import Timeline

        line = Timeline.of(field, run_id)
        return page(request, "web/location.html.j2", at=line.at, c=checklist, run_id=run_id, can_change=user.can_change(team),
                    categories=PROBLEM_CATEGORIES, msg=msg if msg in ("saved", "already", "problem") else None,
                    refresh=VERIFY_REFRESH if verifying else None, max_text=MAX_TEXT, max_value=MAX_VALUE,
                    loc_id=location_id, rendered=time.time(), open_items=open_items, failed_devices=failed_devices)

    @app.get("/l/{location_id}/checklist.pdf")
    def location_pdf(request: Request, location_id: str, user: User = Depends(technician_or_lead)):
        field.visible_location(user, location_id)
        checklist = field.checklist(location_id, field.run_id(), base_url=str(request.base_url))
        html = render_checklist_html(checklist, field.inventory, request_lang(request))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "checklist.pdf"
            html_to_pdf(html, out)
            data = out.read_bytes()
        return Response(data, media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{location_id}.pdf"'})

    def changing(request: Request, location_id: str, user: User) -> tuple[str, Checklist]:
        team = field.visible_location(user, location_id)
        if not user.can_change(team):
            raise HTTPException(status_code=403, detail="forbidden")
        run_id = field.run_id()
        if run_id is None:
            raise HTTPException(status_code=409, detail="no run has started yet")
        return run_id, field.checklist(location_id, run_id)

    def actor(request: Request, user: User) -> Actor:
        return Actor(user.id, user.role, _source(request))

    @app.post("/l/{location_id}/check", dependencies=[Depends(verify_csrf)])
    def check(request: Request, location_id: str, item: str = Form(..., max_length=200),
              action: str = Form(..., pattern="^(check|uncheck)$"), value: str = Form("", max_length=MAX_VALUE),
              request_key: str = Form(..., max_length=64), user: User = Depends(technician_or_lead)):
        run_id, checklist = changing(request, location_id, user)
        it = checklist.item(item)
        if it is None:
            raise HTTPException(status_code=404, detail=f"no item '{item[:60]}' at this location")
        if it.needs_value and action == "check" and not value.strip():
            raise HTTPException(status_code=422, detail="type or scan the serial number first")
        done = field.store.set_check(run_id, location_id, item, action == "check", actor(request, user), request_key,
                                     value=value if it.needs_value else None)
        if wants_json(request):  # one item's new HTML (a few hundred bytes), not the whole location
            after = field.checklist(location_id, run_id)
            t = env_for(request).globals["t"]
            return _small(request, done, item=item, it=after.item(item), loc_id=location_id,
                          checked=t("web.checked", done=after.checked_count, total=len(after.items)))
        return _back(location_id, "saved" if done else "already", item)

    @app.post("/l/{location_id}/problem", dependencies=[Depends(verify_csrf)])
    def problem(request: Request, location_id: str, category: str = Form(..., max_length=40),
                text: str = Form(..., max_length=MAX_TEXT), device: str = Form("", max_length=120),
                request_key: str = Form(..., max_length=64), user: User = Depends(technician_or_lead)):
        run_id, checklist = changing(request, location_id, user)
        if device and device not in checklist.device_hostnames:
            raise HTTPException(status_code=404, detail=f"no device '{device[:60]}' at this location")
        done = field.store.add_problem(run_id, location_id, category, text, actor(request, user), request_key,
                                       device=device or None)
        if wants_json(request):
            saved = [p for p in field.ledger.problems(run_id, location_id) if p["problem_id"] == request_key]
            return _small(request, done, problem=request_key, p=saved[0] if saved else None, loc_id=location_id)
        return _back(location_id, "problem" if done else "already", "problems")

    @app.post("/l/{location_id}/signoff", dependencies=[Depends(verify_csrf)])
    def signoff(request: Request, location_id: str, note: str = Form("", max_length=MAX_TEXT),
                request_key: str = Form(..., max_length=64), user: User = Depends(technician_or_lead)):
        run_id, checklist = changing(request, location_id, user)
        if checklist.signoff is None and checklist.status in ("planned", "in_progress"):
            raise HTTPException(status_code=409, detail="the location's work is not finished yet; sign off after it")
        open_items, failed_devices = open_work(checklist)
        if checklist.signoff is None and (open_items or failed_devices) and not note.strip():
            raise HTTPException(status_code=422, detail=f"{_n(open_items, 'item')} not ticked, "
                                f"{_n(failed_devices, 'device')} failed: give the reason to sign off anyway")
        done = field.store.sign_off(run_id, location_id, actor(request, user), request_key, note,
                                    open_items=open_items, failed_devices=failed_devices)
        if wants_json(request):
            return _small(request, done, reload=True)
        return _back(location_id, "saved" if done else "already", "signoff")


def open_work(checklist: Checklist) -> tuple[int, int]:
    """What a sign-off signs: (items not ticked, devices failed)."""
    return checklist.open_work


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _small(request: Request, done: bool, **context: Any) -> JSONResponse:
    """The answer to one small action: whether it changed anything and the HTML of what it changed."""
    body: dict[str, Any] = {"ok": True, "saved": done, "at": time.time()}
    if context.get("it") is not None or context.get("p") is not None:
        session = request.state.session
        body["html"] = env_for(request).get_template("web/fragment.html.j2").render(
            can_change=True, run_id=True, csrf=session.get("csrf", ""), max_value=MAX_VALUE,
            new_key=lambda: secrets.token_urlsafe(12), **{"it": None, "p": None, **context}).strip()
    body.update({k: v for k, v in context.items() if k in ("item", "problem", "checked", "reload")})
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _back(location_id: str, msg: str, anchor: str) -> RedirectResponse:
    return RedirectResponse(f"/l/{location_id}?msg={msg}#{anchor}", status_code=303)


def _location_rows(field: FieldApp, run_id: str | None, location_ids: list[str]) -> list[dict[str, Any]]:
    """One row per location for the lists and the board: planned vs actual, status, checks, problems."""
    ledger = field.ledger
    results = ledger.location_results(run_id) if run_id else {}
    checks = field.store.checks(run_id) if run_id else {}
    problems = ledger.problems(run_id) if run_id else []
    steps = ledger.step_results(run_id) if run_id else {}
    signoffs = _signoffs(ledger, run_id) if run_id else {}
    rows = []
    from bigbang.web.board import Timeline

    line = Timeline.of(field, run_id)
    for location_id in location_ids:
        position, loc_plan = field.schedule[location_id]
        loc = field.inventory.location_by_id[location_id]
        row = results.get(location_id)
        signoff = signoffs.get(location_id)
        status = location_status(row, steps, loc_plan, signoff) if run_id else "planned"
        devices = [device_status([steps[s.id].status if s.id in steps else None for s in d.steps])
                   for d in loc_plan.devices]
        rows.append({
            "id": location_id, "name": loc.name, "address": loc.address, "team": loc_plan.team,
            "position": position, "criticality": loc.criticality,
            "region": loc.region or "", "crew": line.crew(location_id, loc_plan),
            "plan_start": line.planned(location_id, loc_plan)[0], "plan_end": line.planned(location_id, loc_plan)[1],
            "actual_start": line.actual(row, "start"), "actual_end": line.actual(row, "end"),
            "planned": line.at(line.planned(location_id, loc_plan)[0]),
            "planned_end": line.at(line.planned(location_id, loc_plan)[1]),
            "started": line.at(line.actual(row, "start")), "finished": line.at(line.actual(row, "end")),
            "status": status, "reason": row["reason"] if row else "",
            "devices": len(loc_plan.devices),
            "devices_done": devices.count(DeviceStatus.SUCCEEDED),
            "devices_failed": devices.count(DeviceStatus.FAILED),
            "checked": sum(1 for (lid, _), c in checks.items() if lid == location_id and c.checked),
            "item_total": len(item_ids(loc)),
            "problems": sum(1 for p in problems if p["location_id"] == location_id),
            "signoff": signoff,
        })
    return rows


def _signoffs(ledger: Ledger, run_id: str) -> dict[str, dict[str, Any]]:
    return ledger.signoffs(run_id)


def _include_defects(app: FastAPI) -> None:
    """The support staff's defect pages (issue 6), when that module is installed."""
    try:
        from bigbang.defects.web import router
    except ModuleNotFoundError as exc:
        if exc.name not in ("bigbang.defects", "bigbang.defects.web"):
            log.warning("defect pages unavailable: %s", exc)
        return
    except Exception as exc:  # noqa: BLE001 - the field app must start even if the defect pages are broken
        log.warning("defect pages unavailable: %s", exc)
        return
    app.include_router(router, dependencies=[Depends(current_user)])
    from bigbang.defects.web import public_router  # end users' self-service report form: no sign-in

    app.include_router(public_router)
    app.state.has_defects = True

