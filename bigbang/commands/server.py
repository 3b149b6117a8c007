from __future__ import annotations

import os
import shutil
import subprocess

from rich.console import Console

from bigbang.errors import ConfigError
from bigbang.prefect_env import apply_defaults


def register(sub) -> None:
    p = sub.add_parser("server", help="start a long-lived Prefect server (UI, pauses for sign-off, schedules)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for workers elsewhere)")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--database", metavar="URL",
                   help="Prefect's database, e.g. postgresql+asyncpg://prefect@db/prefect (default: SQLite in PREFECT_HOME)")
    p.add_argument("--redis", metavar="HOST:PORT",
                   help="use Redis as the event broker so no run record is dropped at volume")
    p.set_defaults(func=run)


def server_env(database: str | None, redis: str | None) -> dict[str, str]:
    env = dict(os.environ)
    apply_defaults()
    env.update({k: os.environ[k] for k in ("PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED")})
    env.pop("PREFECT_SERVER_LOGGING_LEVEL", None)  # a long-lived server should tell its operator what is wrong
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
    prefect = shutil.which("prefect")
    if prefect is None:
        raise ConfigError("the `prefect` command is not installed", hint="pip install -e .")
    env = server_env(args.database, args.redis)
    Console(stderr=True).print(
        f"Prefect server on http://{args.host}:{args.port} — point runs and workers at it with\n"
        f"  export PREFECT_API_URL=http://{args.host if args.host != '0.0.0.0' else 'THIS-HOST'}:{args.port}/api")
    cmd = [prefect, "server", "start", "--host", args.host, "--port", str(args.port)]
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
