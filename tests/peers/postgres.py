"""A throwaway PostgreSQL cluster on loopback, for tests that need a real server.

initdb refuses root, so the cluster runs as the `postgres` user on a directory it owns.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from tests.peers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/setup.d/00-apt.sh installs postgresql-15)")
    return found[-1]


class PostgresCluster:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bigbang-pg-")
        self.port = free_port()
        self.as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]

    def start(self) -> "PostgresCluster":
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        subprocess.run([*self.as_user, _bin("initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--locale=C.UTF-8", "-N"], check=True, capture_output=True)
        subprocess.run([*self.as_user, _bin("pg_ctl"), "-D", data, "-l", os.path.join(self.dir, "log"), "-w", "-o",
                        f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                        f"-c max_connections=300", "start"], check=True, capture_output=True)
        self._watch_parent(data)
        return self

    def _watch_parent(self, data: str) -> None:
        """Stop the cluster if the test process dies without running its finalizers (pytest killed)."""
        stop = " ".join(shlex.quote(a) for a in [*self.as_user, _bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"])
        subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 2; done; "
                                      f"{stop} >/dev/null 2>&1; rm -rf {shlex.quote(self.dir)}"],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or "t_" + uuid.uuid4().hex[:10]
        subprocess.run([_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return self.url(name)

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        subprocess.run([*self.as_user, _bin("pg_ctl"), "-D", os.path.join(self.dir, "data"), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster().start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", cluster.port)) == 0:
                break
        time.sleep(0.1)
    yield cluster
    cluster.stop()
