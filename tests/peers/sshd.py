"""A lab of thin clients: one real OpenSSH sshd per 127.0.x.y address, each with its own host key.

Every sshd runs as the unprivileged `bbpeer` user (scripts/setup.d/10-sshd.sh) on the same port.
A host's "device" is a directory tree (`DEVICE_ROOT`, set by sshd's SetEnv) that the shipped
command templates change and read. Two commands are emulated on PATH, because the test machine
must not really do them: `reboot` (asks the lab to reboot the host) and `sync` (a fault hook).

A reboot kills the host's sshd and every session it spawned (like power going away), "boots"
the device (running hostname from etc/hostname, staged firmware becomes the running one, a new
boot id) and starts sshd again after `boot_delay`. Faults per host:
  - `never_returns`: the host does not come back after a reboot;
  - `drop_mid_command`: the first `sync` hangs and the host crashes under it (then boots again);
  - a host key the client's known_hosts does not know, or knows differently (see `LabHost`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.peers import free_port

PEER_USER = "bbpeer"
SSHD = "/usr/sbin/sshd"

FAKE_REBOOT = """#!/bin/sh
# Emulated reboot: the lab notices the request and power-cycles this host.
: > "$LAB_REQUESTS/reboot.$DEVICE_NAME"
"""
FAKE_SYNC = """#!/bin/sh
# Emulated sync; with the drop fault armed, the host crashes while this command runs.
if [ -e "$DEVICE_ROOT/fault/drop-mid-command" ]; then
  rm -f "$DEVICE_ROOT/fault/drop-mid-command"
  : > "$LAB_REQUESTS/crash.$DEVICE_NAME"
  sleep 30
fi
exit 0
"""


def new_keypair() -> tuple[bytes, str]:
    """(private key in OpenSSH PEM, public key line) for a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


@dataclass
class LabHost:
    name: str
    address: str
    dir: Path
    public_key: str
    never_returns: bool = False
    boot_delay: float = 0.2
    process: subprocess.Popen | None = None
    boots: int = 0
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        """The device's file system."""
        return self.dir / "device"

    def read(self, relative: str) -> str | None:
        path = self.root / relative
        return path.read_text().strip() if path.exists() else None

    @property
    def running_hostname(self) -> str | None:
        return self.read("proc/sys/kernel/hostname")

    def reset(self) -> None:
        """Back to the state before any reassignment (the benchmark runs two tools on the same hosts)."""
        root = self.root
        for name in ("etc/thinclient/profile.conf", "var/lib/thinclient/active.conf",
                     "var/lib/thinclient/firmware.target"):
            (root / name).unlink(missing_ok=True)
        (root / "etc/hostname").write_text(self.name + "\n")
        (root / "proc/sys/kernel/hostname").write_text(self.name + "\n")
        (root / "etc/thinclient/firmware.version").write_text("11.9.0\n")

    def arm_drop_mid_command(self) -> None:
        (self.root / "fault" / "drop-mid-command").touch()


class ThinClientLab:
    """Many sshd hosts on one port; start them with `add_hosts`, stop with `stop`."""

    def __init__(self, base: Path | None = None) -> None:
        _ensure_user()
        self.user = pwd.getpwnam(PEER_USER)
        self.dir = Path(base or tempfile.mkdtemp(prefix="bigbang-sshlab-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.bin = self.dir / "bin"
        self.bin.mkdir(exist_ok=True)
        self.requests = self.dir / "requests"  # one directory to watch, however many hosts
        self.requests.mkdir(exist_ok=True)
        _chown_tree(self.requests, self.user)
        for name, text in (("reboot", FAKE_REBOOT), ("sync", FAKE_SYNC)):
            (self.bin / name).write_text(text)
            os.chmod(self.bin / name, 0o755)
        self.client_key = self.dir / "client_key"
        private, self.client_public = new_keypair()
        self.client_key.write_bytes(private)
        os.chmod(self.client_key, 0o600)
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(self.client_public + "\n")
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text("")
        self.port = free_port()
        self.hosts: dict[str, LabHost] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._timers: list[threading.Timer] = []

    # ------------------------------------------------------------ hosts
    def add_hosts(self, count: int, prefix: str = "tc", subnet: int = 1, *, known: bool = True,
                  **options) -> list[LabHost]:
        """`count` new hosts named PREFIX-NNN on 127.0.SUBNET.1.., started and ready."""
        made = []
        first = sum(1 for h in self.hosts.values() if h.address.startswith(f"127.0.{subnet}.")) + 1
        for i in range(first, first + count):
            a, b = divmod(i, 250)
            address = f"127.0.{subnet + a}.{b + 1}" if a else f"127.0.{subnet}.{b + 1}"
            made.append(self._make_host(f"{prefix}-{i:03d}", address, known=known, **options))
        for host in made:
            self._start(host)
        for host in made:
            self._wait_ready(host)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="sshlab-watch", daemon=True)
            self._watcher.start()
        return made

    def _make_host(self, name: str, address: str, *, known: bool, **options) -> LabHost:
        hdir = self.dir / "hosts" / name
        root = hdir / "device"
        for sub in ("etc/thinclient", "proc/sys/kernel/random", "run", "fault", "var/lib/thinclient"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        private, public = new_keypair()
        (hdir / "host_key").write_bytes(private)
        (root / "etc/hostname").write_text(name + "\n")
        (root / "proc/sys/kernel/hostname").write_text(name + "\n")
        (root / "proc/sys/kernel/random/boot_id").write_text(str(uuid.uuid4()) + "\n")
        (root / "etc/thinclient/firmware.version").write_text("11.9.0\n")
        (hdir / "sshd_config").write_text("\n".join([
            f"ListenAddress {address}:{self.port}",
            f"HostKey {hdir / 'host_key'}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            "LogLevel ERROR",
            f"SetEnv DEVICE_ROOT={root} DEVICE_NAME={name} LAB_REQUESTS={self.requests} PATH={self.bin}:/usr/bin:/bin",
            "",
        ]))
        host = LabHost(name, address, hdir, public, **options)
        _chown_tree(hdir, self.user)
        os.chmod(hdir / "host_key", 0o600)
        if known:
            self.trust(host)
        self.hosts[name] = host
        return host

    def trust(self, host: LabHost, public_key: str | None = None) -> None:
        """Add the host's key (or another one, to fake a changed key) to known_hosts."""
        with self.known_hosts.open("a") as f:
            f.write(f"[{host.address}]:{self.port} {public_key or host.public_key}\n")

    def _start(self, host: LabHost) -> None:
        log = open(host.dir / "sshd.log", "ab")
        host.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(host.dir / "sshd_config")], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, user=self.user.pw_uid, group=self.user.pw_gid,
            extra_groups=os.getgrouplist(PEER_USER, self.user.pw_gid),
            start_new_session=True, cwd=host.dir,
        )
        log.close()
        host.down = False

    def _wait_ready(self, host: LabHost, timeout: float = 15.0) -> None:
        """Until the host's sshd listens. Read from the kernel's socket table, not by connecting: a probe
        connection makes sshd fork and re-exec a session process for nothing (~26 ms of CPU, taken from the
        cores the tools under test run on, at every boot of every host)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.process.poll() is not None:
                raise RuntimeError(f"sshd for {host.name} exited: {(host.dir / 'sshd.log').read_text()[-500:]}")
            if _listening(host.address, self.port):
                return
            time.sleep(0.01)
        raise RuntimeError(f"sshd for {host.name} not listening after {timeout} s")

    # ------------------------------------------------------------ power
    def _watch(self) -> None:
        while not self._stopping.wait(0.03):
            hosts: dict[str, LabHost] = {}
            boot: set[str] = set()
            for request in os.listdir(self.requests):
                (self.requests / request).unlink(missing_ok=True)
                kind, _, name = request.partition(".")
                host = self.hosts.get(name)
                if host is not None:
                    hosts[name] = host
                    if kind == "crash" or not host.never_returns:
                        boot.add(name)
            if hosts:
                self._power_cycle(list(hosts.values()), boot)

    def _power_cycle(self, hosts: list[LabHost], boot: set[str]) -> None:
        """Power off every host that asked since the last look at once (one /proc scan per freeze round for
        all of them, not per host: a device's reboot does not wait for the other devices'), then boot each
        after its `boot_delay`."""
        for host in hosts:
            host.lock.acquire()
        try:
            self._kill(*hosts)
            for host in hosts:
                host.down = True
        finally:
            for host in hosts:
                host.lock.release()
        for host in hosts:
            if host.name in boot:
                timer = threading.Timer(host.boot_delay, self._boot, (host,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _boot(self, host: LabHost) -> None:
        with host.lock:
            if self._stopping.is_set():
                return
            root = host.root
            shutil.copyfile(root / "etc/hostname", root / "proc/sys/kernel/hostname")
            staged = root / "var/lib/thinclient/firmware.target"
            if staged.exists():
                shutil.copyfile(staged, root / "etc/thinclient/firmware.version")
            (root / "proc/sys/kernel/random/boot_id").write_text(str(uuid.uuid4()) + "\n")
            _chown_tree(root, self.user)
            host.boots += 1
            self._start(host)
        self._wait_ready(host)

    def _kill(self, *hosts: LabHost) -> None:
        """Power off: the sshd and every process below it (sessions, the commands they run)."""
        roots = []
        for host in hosts:
            if host.process is None or host.process.poll() is not None:
                continue
            try:
                os.kill(host.process.pid, signal.SIGSTOP)
            except ProcessLookupError:  # exited on its own just now
                host.process.wait()
                continue
            roots.append(host)
        if not roots:
            return
        # Freeze the whole trees first, so no process can fork (or accept a connection) between the
        # listing and the kill: an orphaned session would outlive the "power loss".
        frozen: set[int] = {host.process.pid for host in roots if host.process is not None}
        while True:
            found = set(_descendants(*frozen)) - frozen
            if not found:
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            frozen |= found
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for host in roots:
            if host.process is not None:
                host.process.wait()

    def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        for host in self.hosts.values():
            with host.lock:
                try:
                    self._kill(host)
                except OSError:  # never leave an sshd behind: at least the listener goes
                    if host.process is not None and host.process.poll() is None:
                        host.process.kill()
                        host.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ for inventories
    def ssh_settings(self, **overrides) -> dict:
        settings = {"username": PEER_USER, "port": self.port, "key_file": str(self.client_key),
                    "known_hosts": str(self.known_hosts), "connect_timeout": 3, "command_timeout": 20,
                    "reboot_timeout": 10}
        settings.update(overrides)
        return settings


def _listening(address: str, port: int) -> bool:
    """Whether a TCP socket listens on address:port in this thread's network namespace."""
    local = f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}:{port:04X}"  # as /proc/net/tcp prints it
    with open("/proc/thread-self/net/tcp") as table:
        return any(fields[1] == local and fields[3] == "0A"  # 0A: LISTEN
                   for fields in (line.split() for line in table) if len(fields) > 3)


def _descendants(*pids: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    if os.geteuid() != 0:
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, user.pw_uid, user.pw_gid)
        for name in filenames:
            try:
                os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)
            except FileNotFoundError:  # a temporary file of a command that just finished
                pass


def _ensure_user() -> None:
    try:
        pwd.getpwnam(PEER_USER)
    except KeyError:
        raise RuntimeError(f"user {PEER_USER} missing: run scripts/setup.d/10-sshd.sh") from None
    if not os.path.exists(SSHD):
        raise RuntimeError("OpenSSH sshd missing: run scripts/setup.d/00-apt.sh")


@pytest.fixture(scope="session")
def thin_client_lab():
    lab = ThinClientLab()
    yield lab
    lab.stop()


def thin_client_params(host: LabHost, **overrides) -> dict:
    """Step params for a thin client on a lab host, shaped like plan._thin_client_plan's."""
    params = {
        "location": "HST-001", "location_name": "Holstebro Rådhus", "mac": "00:e0:c5:31:02:01",
        "address": host.address, "current_profile": "igel-citrix-2022", "target_profile": "igel-citrix-2026",
        "firmware": "12.6.1", "storefront_url": "https://storefront.example.dk/Citrix/Store",
        "settings": {"keyboard": "da", "power_off_at": "22:00"}, "hostname": f"hst-001-{host.name}", "vars": {},
    }
    params.update(overrides)
    return params
