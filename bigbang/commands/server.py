"""`bigbang server`: Prefect's own server with bigbang's settings, secure by default.

It listens on loopback unless told otherwise. On any other address it refuses to
start without API authentication: the basic-auth string `user:password` comes
from a reference (`--auth-env NAME` or `--auth-file PATH`, or BIGBANG_PREFECT_AUTH_FILE
/ PREFECT_SERVER_API_AUTH_STRING in the environment), never from a plain-text
option. Prefect's CSRF protection is on and CORS answers only the UI's own origin.

The UI in the browser calls the API at `/api` of the address it was loaded from, so it
connects on any port, host name or reverse proxy; `--ui-origin` makes that address
explicit (a proxy under a path, e.g. https://ops.example.dk/prefect).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

from rich.console import Console

from bigbang.cli import port_number
from bigbang.errors import ConfigError
from bigbang.prefect_env import AUTH_FILE_ENV, apply_defaults, check_auth_string, read_auth_env, read_auth_file


def register(sub) -> None:
    p = sub.add_parser("server", help="start a long-lived Prefect server (UI, pauses for sign-off, schedules)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: loopback; any other address needs --auth-env or --auth-file)")
    p.add_argument("--port", type=port_number, default=4200)
    p.add_argument("--database", metavar="URL",
                   help="Prefect's database, e.g. postgresql+asyncpg://prefect@db/prefect (default: SQLite in PREFECT_HOME)")
    p.add_argument("--redis", metavar="HOST:PORT",
                   help="use Redis as the event broker so no run record is dropped at volume")
    p.add_argument("--auth-env", metavar="NAME",
                   help="environment variable holding the API's basic-auth string `user:password`")
    p.add_argument("--auth-file", metavar="PATH",
                   help=f"file (mode 600) holding `user:password` (default: ${AUTH_FILE_ENV}); "
                        "clients read the same file through that variable")
    p.add_argument("--ui-origin", metavar="URL",
                   help="where browsers reach the UI, e.g. https://prefect.example.dk or a proxy's "
                        "https://ops.example.dk/prefect (the UI calls URL/api; CORS answers only its origin; "
                        "default: the UI calls /api of whatever address it was loaded from)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_string(auth_env: str | None = None, auth_file: str | None = None) -> str | None:
    """The API auth string from its reference, or None when none is given."""
    if auth_env and auth_file:
        raise ConfigError("give --auth-env or --auth-file, not both")
    if auth_env:
        return read_auth_env(auth_env)
    path = auth_file or os.environ.get(AUTH_FILE_ENV)
    if path:
        return read_auth_file(path)
    if os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return check_auth_string(os.environ["PREFECT_SERVER_API_AUTH_STRING"].strip(),
                                 "PREFECT_SERVER_API_AUTH_STRING")
    return None


def ui_origin(host: str, port: int, given: str | None = None) -> str:
    """The origin (scheme://host:port) CORS answers: `given`'s, or the address the server listens on."""
    if given:
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--ui-origin {given!r} is not an http(s) URL", hint="e.g. https://prefect.example.dk")
        return f"{parts.scheme}://{parts.netloc}"
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.getfqdn()
    return f"http://{host}:{port}"


# Relative: the browser calls the server that served the UI, on whatever host, port or proxy it was reached
# through. Prefect's own default (PREFECT_API_URL, else http://HOST:4200/api) breaks on any other port.
RELATIVE_UI_API_URL = "/api"


def ui_api_url(given_origin: str | None = None) -> str:
    """Where the UI's browser code calls the API: under `--ui-origin` when given (path included)."""
    return given_origin.rstrip("/") + "/api" if given_origin else RELATIVE_UI_API_URL


def server_env(database: str | None, redis: str | None, *, auth: str | None = None,
               origin: str | None = None, ui_url: str | None = None) -> dict[str, str]:
    """The server's environment. `ui_url` given (from --ui-origin) wins over PREFECT_UI_API_URL in the
    environment; without it the operator's own PREFECT_UI_API_URL, else the relative /api, is used."""
    env = dict(os.environ)
    apply_defaults()
    env.update({k: os.environ[k] for k in ("PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED")})
    env.pop("PREFECT_SERVER_LOGGING_LEVEL", None)  # a long-lived server should tell its operator what is wrong
    env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] = "true"
    if origin:
        env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] = origin
    if ui_url:
        env.pop("PREFECT_SERVER_UI_API_URL", None)  # Prefect reads this alias first
        env["PREFECT_UI_API_URL"] = ui_url
    elif not env.get("PREFECT_SERVER_UI_API_URL"):
        env.setdefault("PREFECT_UI_API_URL", RELATIVE_UI_API_URL)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        env["PREFECT_API_AUTH_STRING"] = auth  # the server's own clients (services) authenticate too
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    if redis:
        host, _, port = redis.partition(":")
        env.update({
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_SERVER_DOCKET_URL": f"redis://{host}:{port or 6379}/1",
            "PREFECT_REDIS_MESSAGING_HOST": host,
            "PREFECT_REDIS_MESSAGING_PORT": port or "6379",
            "PREFECT_REDIS_MESSAGING_DB": "0",
        })
    return env


def run(args) -> int:
    auth = auth_string(args.auth_env, args.auth_file)
    if auth is None and not is_loopback(args.host):
        raise ConfigError(f"refusing to serve the Prefect API on {args.host} without authentication",
                          hint=f"give --auth-env NAME or --auth-file PATH (or set {AUTH_FILE_ENV}) "
                               "holding user:password, or listen on 127.0.0.1")
    prefect = shutil.which("prefect")
    if prefect is None:
        raise ConfigError("the `prefect` command is not installed", hint="pip install -e .")
    origin = ui_origin(args.host, args.port, args.ui_origin)
    env = server_env(args.database, args.redis, auth=auth, origin=origin,
                     ui_url=ui_api_url(args.ui_origin) if args.ui_origin else None)
    shown = args.host if args.host not in ("0.0.0.0", "::") else "THIS-HOST"
    Console(stderr=True, highlight=False).print(
        f"Prefect server on http://{args.host}:{args.port}; its UI (flow runs, logs, reports):\n"
        f"  {args.ui_origin.rstrip('/') if args.ui_origin else f'http://{shown}:{args.port}'}\n"
        f"Point runs and workers at it with\n"
        f"  export PREFECT_API_URL=http://{shown}:{args.port}/api"
        + (f"\n  export {AUTH_FILE_ENV}=FILE-WITH-THE-AUTH-STRING   (API authentication is on)" if auth else
           "\n  (API authentication is off: loopback only)"))
    cmd = [prefect, "server", "start", "--host", args.host, "--port", str(args.port)]
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
