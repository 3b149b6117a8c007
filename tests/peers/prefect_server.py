"""A real `prefect server start` on PostgreSQL with the Redis event broker, for distributed tests.

Started the way `bigbang server --database URL --redis HOST:PORT` starts it, in its
own session so its children stop with it. Stopping: SIGINT, then SIGKILL to the group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from bigbang.commands.server import server_env
from tests.peers import free_port
from tests.peers.postgres import postgres  # noqa: F401 - fixture used below
from tests.peers.redis import redis  # noqa: F401 - fixture used below

# Quiet, quick clients: no analytics, logs to the API off, workers poll every second.
CLIENT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


class PrefectServer:
    def __init__(self, database_url: str, redis_address: str) -> None:
        self.home = tempfile.mkdtemp(prefix="bigbang-prefect-server-")
        self.port = free_port()
        self.database_url = database_url
        self.redis_address = redis_address
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(self.home, "server.log")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(CLIENT_ENV, PREFECT_API_URL=self.api_url, PREFECT_HOME=os.path.join(self.home, "client"))
        return env

    def start(self, timeout: float = 120) -> PrefectServer:
        env = server_env(self.database_url, self.redis_address)
        env.update(PREFECT_HOME=self.home, PREFECT_SERVER_LOGGING_LEVEL="WARNING", PREFECT_UI_ENABLED="false")
        env.pop("PREFECT_API_URL", None)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [shutil.which("prefect") or "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_healthy(self, "prefect server", timeout)
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


def wait_until_healthy(server, what: str, timeout: float) -> None:
    """Poll `server.api_url`/health until it answers 200; stop the server and say why (with its log) when its
    process exits or `timeout` passes. `server` has `process`, `api_url`, `log()` and `stop()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.api_url + "/health", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    log = server.log()
    server.stop()
    raise RuntimeError(f"{what} not healthy within {timeout:.0f} s:\n{log}")


def api_post(api_url: str, path: str, body: dict, auth: str | None = None) -> object:
    """POST to the REST API as a second client beside Prefect's own: with a CSRF token (bigbang's server
    turns Prefect's CSRF protection on) and the basic-auth string when the server needs one."""
    import base64
    import json
    import uuid

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    client = "bigbang-tests-" + uuid.uuid4().hex[:8]
    req = urllib.request.Request(f"{api_url}/csrf-token?client={client}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            token = json.loads(response.read())["token"]
        headers.update({"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client})
    except urllib.error.HTTPError as exc:
        if exc.code != 422:  # 422: CSRF protection is off on this server
            raise
    req = urllib.request.Request(api_url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def stop_group(process: subprocess.Popen | None, grace: float = 10) -> None:
    """Stop a process started with start_new_session: SIGINT twice (what Prefect's CLIs obey), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    for _ in range(2):
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        try:
            process.wait(grace / 2)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="session")
def prefect_server(postgres, redis):  # noqa: F811 - the imported fixtures
    server = PrefectServer(postgres.url(postgres.create_database().rsplit("/", 1)[1], driver="asyncpg"),
                           redis.address).start()
    yield server
    server.stop()
