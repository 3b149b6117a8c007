"""A warm local Prefect server, so that rehearsals do not pay Prefect's start-up every time.

The first `bigbang run` without a Prefect server works as before, on Prefect's embedded (ephemeral)
server (`EmbeddedServer`: started by the command at its very start, so that it boots while the command
does its own start-up); when it ends it starts a local server in the background, bound to 127.0.0.1 only, with its own
SQLite database in the Prefect home. Later runs find it through a state file and use it. It stops
itself after `BIGBANG_WARM_IDLE` seconds (default 1800) in which no run used it and no flow run is
running. `BIGBANG_WARM_SERVER=0` turns all this off; a `PREFECT_API_URL` the user set always wins.

    python -m bigbang.warm --stop      # stop it now
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bigbang import prefect_db

DEFAULT_IDLE = 1800.0
# Prefect services the warm server leaves off: they act on deployments, workers, schedules and
# automations, which a local `bigbang run` does not use (distributed runs go to `bigbang server`), and the
# triggers look at every event of a run, on the cores the run itself uses (the server's CPU in a warm
# Holstebro rehearsal: 5.3-5.6 s with them, 4.5-4.8 s without). Events, task-run records and logs stay.
LOCAL_RUNS_NEED_NOT = ("TRIGGERS", "SCHEDULER", "LATE_RUNS", "FOREMAN", "REPOSSESSOR", "CANCELLATION_CLEANUP",
                       "DB_VACUUM", "CLEANUP_RECONCILER")
STATE_NAME = "bigbang-warm-server.json"
LOCK_NAME = "bigbang-warm-server.lock"  # held by the one serving process from its first moment


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def state_file() -> Path:
    return prefect_home() / STATE_NAME


def enabled() -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return False  # the user's server wins
    return os.environ.get("BIGBANG_WARM_SERVER", "1").strip().lower() not in ("0", "false", "no", "off")


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _read_state() -> dict[str, Any] | None:
    try:
        data = json.loads(state_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "url" in data and "pid" in data else None


def use() -> str | None:
    """Point this process at the warm server if one is up; its API URL, or None (then: ephemeral)."""
    if not enabled():
        return None
    state = _read_state()
    if state is None or not _alive(int(state["pid"])) or not healthy(state["url"]):
        return None
    os.environ["PREFECT_API_URL"] = state["url"]
    with contextlib.suppress(OSError):
        os.utime(state_file())  # in use: not idle
    return str(state["url"])


def start_in_background() -> bool:
    """Start the warm server for the next run unless one runs; True if this call started it."""
    if not enabled():
        return False
    state = _read_state()
    if state is not None and _alive(int(state["pid"])):
        return False
    if _starting_pid() is not None:  # one is booting: it writes the state file once it answers
        return False
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "bigbang-warm-server.log", "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen([sys.executable, "-m", "bigbang.warm", "--serve"], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True, env=dict(os.environ))
    log.close()
    return True


def stop() -> bool:
    state = _read_state()
    pid = int(state["pid"]) if state is not None else _starting_pid()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        state_file().unlink()
    return True


def _lock_file() -> Path:
    return prefect_home() / LOCK_NAME


def _take_lock() -> int | None:
    """The serving lock's descriptor, held until this process ends; None if another process holds it."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_file(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _starting_pid() -> int | None:
    """The process holding the serving lock (a server starting or running), if any."""
    try:
        fd = os.open(_lock_file(), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return "State:\tZ" not in status  # a zombie has stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running_flow_runs(url: str) -> int:
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "PAUSED"]}}}}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/flow_runs/count", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read()))
    except (OSError, ValueError):
        return 0


def serve(idle: float) -> int:
    """Run the server until it has been idle for `idle` seconds (the background process's body)."""
    from bigbang.commands.server import server_env

    # One server per Prefect home: a second run that starts one while the first is still booting (no state
    # file yet) must not start a second server on the same database.
    if _take_lock() is None:
        return 0
    home = prefect_home()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = server_env(None, None)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home / 'bigbang-warm.db'}"
    env.update({f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in LOCAL_RUNS_NEED_NOT})
    prefect_db.seed(home / "bigbang-warm.db", chosen_by_bigbang=True)  # a new one: migrated already
    child = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                              "--port", str(port)], env=env, stdin=subprocess.DEVNULL)

    def finish(*_: object) -> None:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(20)
        child.kill()
        current = _read_state()
        if current is not None and int(current["pid"]) == os.getpid():
            with contextlib.suppress(OSError):
                state_file().unlink()
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    deadline = time.monotonic() + 180
    while not healthy(url):
        if child.poll() is not None or time.monotonic() > deadline:
            finish()
        time.sleep(0.5)
    state_file().write_text(json.dumps({"url": url, "pid": os.getpid(), "port": port}), encoding="utf-8")
    while True:
        time.sleep(10)
        if child.poll() is not None:
            finish()
        try:
            quiet_for = time.time() - state_file().stat().st_mtime
        except OSError:
            finish()  # someone removed the state file: nobody can find this server any more
        if quiet_for > idle and _running_flow_runs(url) == 0:
            finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigbang.warm", description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stop", action="store_true", help="stop the warm server")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(float(os.environ.get("BIGBANG_WARM_IDLE", DEFAULT_IDLE)))
    if args.stop:
        print("stopped" if stop() else "no warm server")
        return 0
    state = _read_state()
    print(state["url"] if state and healthy(state["url"]) else "no warm server")
    return 0




# ---------------------------------------------------------------- the run's own embedded server


class EmbeddedServer:
    """Prefect's embedded (ephemeral) server, started by `bigbang run` itself at the very start of the
    command, before Prefect is imported: the server boots in its own process while the command imports
    Prefect's client, loads the inventory and freezes the plan, and the command never imports Prefect's
    server modules (Prefect's own ephemeral mode imports them into the client process, ~2 s). The same
    server as Prefect's ephemeral one: its command line, its settings, its database in PREFECT_HOME, bound
    to 127.0.0.1; it stops with the command."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/api"
        self.process = process
        self.log = log

    @classmethod
    def start(cls) -> EmbeddedServer | None:
        """Start it, or None when Prefect's package cannot be found (Prefect's own ephemeral mode then)."""
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            return None
        home = prefect_home()
        home.mkdir(parents=True, exist_ok=True)
        prefect_db.seed(home / "prefect.db")  # a new home: a migrated database instead of Prefect's migrations
        port = _free_port()
        env = dict(os.environ, PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        env.pop("PREFECT_API_URL", None)
        log = home / "bigbang-embedded-server.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "error", "--lifespan", "on"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        server = cls(port, process, log)
        atexit.register(server.stop)
        return server

    def wait(self, timeout: float | None = None) -> None:
        """Return once it answers; ConnectionError (with the end of its log) if it stopped or did not start."""
        limit = timeout if timeout is not None else float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 90)
        deadline = time.monotonic() + limit
        while not healthy(self.url, timeout=1.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = ""
                with contextlib.suppress(OSError):
                    tail = " ".join(self.log.read_text(errors="replace")[-400:].split())
                raise ConnectionError(f"Prefect's local server did not start on {self.url}"
                                      + (f": {tail}" if tail else ""))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


if __name__ == "__main__":
    sys.exit(main())
