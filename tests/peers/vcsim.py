"""VMware's vCenter simulator (govmomi vcsim, model VPX) on a loopback port over HTTPS.

The binary is built by scripts/setup.d/20-vcsim.sh from tests/peers/vcsim/main.go (built here too
when missing, so a bare `pytest` works). Inventory: datacenter DC-Holstebro; clusters cl-prod-01,
cl-prod-02, cl-lab-01 (2 hosts each); datastores ds-ssd-01, ds-nl-01, ds-ssd-02; distributed port
groups vlan110-servers, vlan120-citrix and vlan999-isolated (no DHCP there); templates tpl-win2022
and tpl-rhel9. The certificate is signed by a throwaway CA (`ca_file`); `thumbprint` pins it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bigbang" / "vcsim"
PASSWORD_ENV = "BIGBANG_TEST_VCENTER_PASSWORD"


def vcsim_binary() -> Path:
    binary = CACHE / "vcsim"
    script = ROOT / "scripts" / "setup.d" / "20-vcsim.sh"
    # The script is idempotent and quick when the cached build matches the source.
    subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True, timeout=600)
    if not binary.exists():
        raise RuntimeError(f"vcsim was not built into {binary}; run {script}")
    return binary


class Vcsim:
    def __init__(self, *args: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="bigbang-vcsim-")
        self.user = "bigbang-ops"
        self.password = secrets.token_urlsafe(12)
        self.proc = subprocess.Popen(
            [str(vcsim_binary()), "-dir", self.dir, "-user", self.user, "-password", self.password, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vcsim did not start: {self.proc.stderr.read()}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.host: str = info["host"]
        self.port = int(info["port"])
        self.ca_file: str = info["ca_file"]
        self.thumbprint: str = info["thumbprint"]
        self._ctx = ssl.create_default_context(cafile=self.ca_file)

    # -------------------------------------------------------- what tests put in inventories
    def settings(self, **overrides: Any) -> dict[str, Any]:
        base = {"host": self.host, "port": self.port, "username": self.user, "password": {"env": PASSWORD_ENV},
                "ca_bundle": self.ca_file, "datacenter": "DC-Holstebro", "task_timeout": 60, "ip_timeout": 10,
                "connect_timeout": 5}
        base.update(overrides)
        return base

    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.password}

    # -------------------------------------------------------- faults (see main.go)
    def _control(self, path: str, **query: Any) -> str:
        url = f"https://{self.host}:{self.port}/bigbang/{path}?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), context=self._ctx, timeout=10) as r:
            return r.read().decode()

    def fail_next(self, method: str, vm: str, reason: str) -> None:
        self._control("fail", method=method, vm=vm, reason=reason)

    def delay(self, method: str, ms: int) -> None:
        self._control("delay", method=method, ms=ms)

    def reset(self) -> None:
        """Forget faults, delays and the call log."""
        self._control("reset")

    def calls(self) -> list[dict[str, Any]]:
        """Every SOAP request since the last reset: method, type, this, name (the VM's), start, end."""
        return json.loads(self._control("log")) or []

    # -------------------------------------------------------- an independent client
    def connect(self):
        """A separate pyvmomi session (not bigbang's) for arranging and checking."""
        from pyVim.connect import SmartConnect

        return SmartConnect(host=self.host, port=self.port, user=self.user, pwd=self.password, sslContext=self._ctx)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def vcsim():
    sim = Vcsim()
    os.environ[PASSWORD_ENV] = sim.password
    yield sim
    sim.stop()
