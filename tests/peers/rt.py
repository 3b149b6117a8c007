"""A throwaway Request Tracker 5 (Debian's packages) on loopback, one per test session.

Its own site config directory (RT_SITE_CONFIG_DIR replaces Debian's entirely) and
SQLite database under a temp dir; bcrypt cost 4 is set before the database is
initialised, else every Basic-auth request costs ~400 ms. The custom field holding
bigbang's defect key and a "Defects" queue are created with RT's own initialdata
mechanism. Installed by scripts/setup.d/50-rt.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.peers import free_port

SETUP_DATABASE = "/usr/sbin/rt-setup-database-5"
RT_SERVER = "/usr/share/request-tracker5/libexec/rt-server"
ROOT_PASSWORD = "password"  # RT's initialdata default for root
KEY_FIELD = "BigBang Defect"
QUEUE = "Defects"


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even if it is killed before its finalizers run."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RequestTracker:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bigbang-rt-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, RT_SITE_CONFIG_DIR=str(self.dir / "etc"))

    def start(self) -> "RequestTracker":
        for tool in (SETUP_DATABASE, RT_SERVER):
            if not os.path.exists(tool):
                raise RuntimeError(f"{tool} is missing: run scripts/setup.d/50-rt.sh (installs request-tracker5)")
        etc = self.dir / "etc"
        etc.mkdir()
        (self.dir / "mason").mkdir()
        (etc / "RT_SiteConfig.pm").write_text(f"""
Set($rtname, 'bigbang-test');
Set($Organization, 'bigbang.test');
Set($DatabaseType, 'SQLite');
Set($DatabaseName, '{self.dir / "rt.db"}');
Set($WebPath, '');
Set($WebDomain, '127.0.0.1');
Set($WebPort, {self.port});
Set($WebBaseURL, '{self.url}');
Set($MasonDataDir, '{self.dir / "mason"}');
Set($MailCommand, 'testfile');
Set($LogToSTDERR, 'warning');
Set($LogToSyslog, undef);
Set($BcryptCost, 4);
1;
""")
        (self.dir / "initialdata").write_text(f"""
@Queues = ({{ Name => '{QUEUE}', Description => 'bigbang post-rollout defects' }});
@CustomFields = ({{ Name => '{KEY_FIELD}', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
                   ApplyTo => 0, Description => 'bigbang defect key' }},
                 {{ Name => 'BigBang Run', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
                   ApplyTo => 0, Description => 'bigbang run id' }},
                 {{ Name => 'BigBang Resolve By', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
                   ApplyTo => 0, Description => 'bigbang SLA resolve target (UTC)' }});
1;
""")
        for args in (["--action", "init", "--skip-create"],
                     ["--action", "insert", "--datafile", str(self.dir / "initialdata")]):
            done = subprocess.run([SETUP_DATABASE, *args], env=self.env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"rt-setup-database {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen([RT_SERVER, "--port", str(self.port), "--host", "127.0.0.1"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rt-server exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/REST/2.0/queues/all", auth=("root", ROOT_PASSWORD), timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError("rt-server did not answer within 60 s")

    def get(self, path: str, **params) -> dict:
        """A read with RT's own API, independent of bigbang's adapter."""
        r = requests.get(f"{self.url}/REST/2.0/{path.lstrip('/')}", params=params, auth=("root", ROOT_PASSWORD),
                         timeout=15)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def request_tracker():
    rt = RequestTracker()
    try:
        rt.start()
        yield rt
    finally:
        rt.stop()
