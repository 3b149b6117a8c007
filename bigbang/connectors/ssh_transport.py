"""SSH transport of the thin-client connector (paramiko): connections, host keys, commands.

What a step does on a device is `ssh.py`'s business; this module only runs shell scripts on hosts:

- one authenticated connection per host, reused for all of its commands (TCP_NODELAY set: ~6 ms per
  command instead of ~48 ms); at most `max_parallel` commands run at once;
- `run_scripts` runs several scripts one after the other in one session (one channel, one round trip),
  stopping at the first that fails, and reports each script's result as soon as it has finished;
- `wait_until_closed` / `pause` let a caller wait for a host's connection to end (a device going down
  closes it) instead of sleeping a fixed time.

Host keys are verified against `known_hosts` on every connection; an unknown key is refused unless
`trust_on_first_use`, and then its fingerprint is recorded there and in the run's events. Nothing
secret (keys, passphrases) is logged: only host names and fingerprints.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from bigbang.connectors._commands import CommandResult
from bigbang.errors import ConfigError, ConnectorError

if TYPE_CHECKING:
    from bigbang.connectors.base import ConnectorContext
    from bigbang.connectors.ssh import SshSettings

log = logging.getLogger("bigbang.ssh")
# paramiko reports every reset connection (expected while a device reboots) through the last-resort handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
_KNOWN_HOSTS_LOCK = threading.Lock()
NETWORK_ERRORS = (paramiko.SSHException, OSError, EOFError)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Pipeline:
    """Several POSIX shell scripts as one command: each runs in its own subshell (so its `exit` or `set -e`
    ends only itself), followed by a marker line with its exit code; the first that fails ends the command
    with its code. The marker holds a random nonce, so no script's output can fake one."""

    def __init__(self, scripts: Sequence[tuple[str, str]], on_done: Callable[[CommandResult], None] | None):
        self.names = [name for name, _ in scripts]
        self.on_done = on_done
        self.mark = f"__bigbang_done_{secrets.token_hex(8)}"
        self.results: list[CommandResult] = []
        self._pos = 0  # where the current script's output starts
        parts: list[str] = []
        for _name, script in scripts:
            body = script if script.endswith("\n") else script + "\n"  # a last-line comment must not eat ")"
            parts.append(f"(\n{body})\n__bb_rc=$?\nprintf '\\n{self.mark} %s %s\\n' '{len(parts)}' \"$__bb_rc\"\n"
                         f"[ \"$__bb_rc\" -eq 0 ] || exit \"$__bb_rc\"\n")
        self.command = "".join(parts)

    def feed(self, out: bytes | bytearray, err: bytes | bytearray, started: float, final: bool = False) -> None:
        """Look for the next finished scripts in the output so far. A failed script ends the command: its
        result waits for the end (`final`), as its stderr may come after its marker on stdout."""
        needle = f"\n{self.mark} ".encode()
        while len(self.results) < len(self.names):
            at = out.find(needle, self._pos)
            if at < 0:
                return
            end = out.find(b"\n", at + len(needle))
            if end < 0:
                return
            fields = out[at + len(needle):end].split()
            try:
                code = int(fields[1])
            except (IndexError, ValueError):
                code = 255
            if code and not final:
                return
            name = self.names[len(self.results)]
            result = CommandResult(name, code, bytes(out[self._pos:at]).decode(errors="replace"),
                                   bytes(err).decode(errors="replace") if code else "", time.monotonic() - started)
            self._pos = end + 1
            self.results.append(result)
            if self.on_done is not None:
                self.on_done(result)


class SshSessions:
    """Connections to many hosts under one set of settings; thread-safe."""

    def __init__(self, settings: SshSettings, context: ConnectorContext):
        self.settings = settings
        self.context = context
        self.known_hosts_path = Path(settings.known_hosts).expanduser()
        self.host_keys = paramiko.HostKeys()
        if self.known_hosts_path.exists():
            try:
                self.host_keys.load(str(self.known_hosts_path))
            except (OSError, paramiko.SSHException) as exc:
                raise ConfigError(f"cannot read known_hosts {self.known_hosts_path}: {exc}") from None
        elif not settings.trust_on_first_use:
            raise ConfigError(f"known_hosts file {self.known_hosts_path} does not exist",
                              hint="collect the thin clients' host keys into it, or set trust_on_first_use "
                                   "for a first contact")
        self.keys = self._load_keys()
        self._slots = threading.BoundedSemaphore(settings.max_parallel)
        self._transports: dict[str, paramiko.Transport] = {}
        self._host_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _load_keys(self) -> list[paramiko.PKey]:
        s = self.settings
        if s.key_file:
            path = Path(s.key_file).expanduser()
            passphrase = self.context.resolve_secret(s.key_passphrase) if s.key_passphrase else None
            try:
                return [paramiko.PKey.from_path(path, passphrase.encode() if passphrase else None)]  # type: ignore[arg-type]  # paramiko takes bytes
            except FileNotFoundError:
                raise ConfigError(f"SSH key_file {path} does not exist") from None
            except (paramiko.SSHException, ValueError, OSError) as exc:
                raise ConfigError(f"cannot load SSH key_file {path}: {exc}",
                                  hint="check the file and key_passphrase") from None
        keys: list[paramiko.PKey] = list(paramiko.Agent().get_keys())
        if not keys:
            raise ConfigError("no SSH key_file set and the SSH agent offers no keys",
                              hint="set connectors.ssh.key_file, or start an agent (SSH_AUTH_SOCK) with the key")
        return keys

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            try:
                transport.close()
            except NETWORK_ERRORS:  # closing a dead connection
                pass

    # ------------------------------------------------------------ commands
    def execute(self, address: str, command: str, *, name: str = "command",
                timeout: float | None = None) -> CommandResult:
        """Run one command; raise ConnectorError (transient for network trouble) when it cannot finish."""
        return self._run(address, command, name, timeout, None)

    def run_scripts(self, address: str, scripts: Sequence[tuple[str, str]], *, timeout: float | None = None,
                    on_done: Callable[[CommandResult], None] | None = None) -> list[CommandResult]:
        """Run (name, POSIX shell script) pairs in order in one session, up to the first that fails: the
        results of those that ran. `on_done` hears of each as soon as it finished, so a caller learns what
        was done on the device even when the connection breaks later in the session (which raises
        ConnectorError, as `execute` does)."""
        if not scripts:
            return []
        pipeline = _Pipeline(scripts, on_done)
        try:
            whole = self._run(address, pipeline.command, "+".join(pipeline.names), timeout, pipeline)
        except ConnectorError:
            if len(pipeline.results) == len(scripts) and all(r.ok for r in pipeline.results):
                return pipeline.results  # every script finished; the host went away before the session's end
            raise                        # (a reboot a moment after the last one returned does that)
        if len(pipeline.results) < len(scripts) and (not pipeline.results or pipeline.results[-1].ok):
            # the session ended without a marker for a script that did not succeed (killed, or not POSIX sh)
            name = pipeline.names[len(pipeline.results)]
            pipeline.results.append(CommandResult(name, whole.exit_code or 255, "", whole.stderr, whole.seconds))
        return pipeline.results

    def _run(self, address: str, command: str, name: str, timeout: float | None,
             pipeline: _Pipeline | None) -> CommandResult:
        timeout = timeout or self.settings.command_timeout
        with self._slots:
            transport = self._transport(address)
            started = time.monotonic()
            try:
                channel = transport.open_session(timeout=self.settings.connect_timeout)
            except NETWORK_ERRORS as exc:
                self.drop(address)
                raise ConnectorError(f"cannot open a session on {address}: {exc or exc.__class__.__name__}",
                                     transient=True) from None
            try:
                return self._collect(channel, address, command, name, started, timeout, pipeline)
            finally:
                try:
                    channel.close()
                except NETWORK_ERRORS:  # the connection is gone already
                    self.drop(address)

    def _collect(self, channel: paramiko.Channel, address: str, command: str, name: str, started: float,
                 timeout: float, pipeline: _Pipeline | None) -> CommandResult:
        deadline = started + timeout
        out, err = bytearray(), bytearray()
        try:
            channel.exec_command(command)
            while True:
                channel.settimeout(max(0.01, deadline - time.monotonic()))
                data = channel.recv(65536)
                if not data:
                    break
                out += data
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if pipeline is not None:
                    pipeline.feed(out, err, started)
            channel.status_event.wait(max(0.0, deadline - time.monotonic()))
            # sshd may send the end of stderr after the channel's EOF and the exit status (it reads the
            # command's stderr pipe until that closes), but never after closing the channel: wait for the
            # close (a millisecond or so), then take what stderr holds.
            until = min(deadline, time.monotonic() + 2.0)
            while not channel.closed and time.monotonic() < until:
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                else:
                    time.sleep(0.001)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if pipeline is not None:
                pipeline.feed(out, err, started, final=True)
        except TimeoutError:
            self.drop(address)
            raise ConnectorError(f"{name} on {address} did not finish within {timeout:g} s",
                                 transient=True) from None
        except NETWORK_ERRORS as exc:
            self.drop(address)
            raise ConnectorError(f"connection to {address} lost during {name}: {exc}", transient=True) from None
        if not channel.status_event.is_set():
            self.drop(address)
            raise ConnectorError(f"{name} on {address} did not finish within {timeout:g} s", transient=True)
        if channel.exit_status == -1 or (not channel.get_transport() or not channel.get_transport().is_active()):
            self.drop(address)
            raise ConnectorError(f"connection to {address} dropped during {name} (no exit status); "
                                 f"output so far: {bytes(out[-200:]).decode(errors='replace').strip() or 'none'}",
                                 transient=True)
        return CommandResult(name, channel.exit_status, out.decode(errors="replace"), err.decode(errors="replace"),
                             time.monotonic() - started)

    # ------------------------------------------------------------ waiting for a host to go away
    def wait_until_closed(self, address: str, timeout: float) -> bool:
        """Wait up to `timeout` s for the host's connection to end (a device going down closes it); whether
        it has (or there was none). Costs nothing while waiting: paramiko's reader thread ends with it."""
        with self._lock:
            transport = self._transports.get(address)
        if transport is None:
            return True
        if transport.is_active():
            transport.join(max(0.0, timeout))
        if transport.is_active():
            return False
        self.drop(address)
        return True

    def pause(self, address: str, seconds: float) -> None:
        """Sleep `seconds`, or less if the host's open connection ends meanwhile."""
        with self._lock:
            transport = self._transports.get(address)
        if transport is not None and transport.is_active():
            transport.join(max(0.0, seconds))
        elif seconds > 0:
            time.sleep(seconds)

    # ------------------------------------------------------------ connections
    def _transport(self, address: str) -> paramiko.Transport:
        with self._lock:
            host_lock = self._host_locks.setdefault(address, threading.Lock())
        with host_lock:  # one connection per host, even when two steps ask at once
            transport = self._transports.get(address)
            if transport is not None and transport.is_active():
                return transport
            transport = self._connect(address)
            with self._lock:
                self._transports[address] = transport
            return transport

    def drop(self, address: str) -> None:
        with self._lock:
            transport = self._transports.pop(address, None)
        if transport is not None:
            try:
                transport.close()
            except NETWORK_ERRORS:
                pass

    def _connect(self, address: str) -> paramiko.Transport:
        s = self.settings
        where = f"{address}:{s.port}"
        try:
            sock = socket.create_connection((address, s.port), timeout=s.connect_timeout)
        except TimeoutError:
            raise ConnectorError(f"connecting to {where} timed out after {s.connect_timeout:g} s",
                                 transient=True) from None
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
            raise ConnectorError(f"cannot connect to {where}: {exc.strerror or exc} {reason}".strip(),
                                 transient=True) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = s.connect_timeout
        try:
            transport.start_client(timeout=s.connect_timeout)
            self._check_host_key(address, transport.get_remote_server_key())
            self._authenticate(transport, where)
        except ConnectorError:
            transport.close()
            raise
        except NETWORK_ERRORS as exc:
            transport.close()
            raise ConnectorError(f"SSH handshake with {where} failed: {exc or exc.__class__.__name__}",
                                 transient=True) from None
        return transport

    def _authenticate(self, transport: paramiko.Transport, where: str) -> None:
        for key in self.keys:
            try:
                transport.auth_publickey(self.settings.username, key)
            except paramiko.AuthenticationException:
                if not transport.is_active():  # the host went away mid-login (e.g. rebooting): not a key problem
                    raise ConnectorError(f"{where} closed the connection during login", transient=True) from None
                continue
            if transport.is_authenticated():
                return
        raise ConnectorError(f"{where} refused the key for user {self.settings.username}",
                             transient=False, hint="install the public key in the device's authorized_keys")

    def _check_host_key(self, address: str, key: paramiko.PKey) -> None:
        port = self.settings.port
        name = address if port == 22 else f"[{address}]:{port}"
        with _KNOWN_HOSTS_LOCK:
            known = self.host_keys.lookup(name)
            if known and key.get_name() in known:
                if known[key.get_name()] == key:
                    return
                raise ConnectorError(
                    f"HOST KEY MISMATCH for {name}: {self.known_hosts_path} has "
                    f"{fingerprint(known[key.get_name()])}, the host presented {fingerprint(key)}",
                    transient=False, hint="possible man-in-the-middle, or a re-installed device: "
                                          "check it, then replace its line in known_hosts")
            if known:  # known by another key type: a changed key all the same
                raise ConnectorError(f"HOST KEY MISMATCH for {name}: known_hosts has {', '.join(known.keys())}, "
                                     f"the host presented {key.get_name()} {fingerprint(key)}", transient=False)
            if not self.settings.trust_on_first_use:
                raise ConnectorError(
                    f"unknown host key for {name} ({key.get_name()} {fingerprint(key)}): not in {self.known_hosts_path}",
                    transient=False, hint="verify the fingerprint and add it to known_hosts, or set "
                                          "trust_on_first_use for a first contact")
            self.host_keys.add(name, key.get_name(), key)
            self.known_hosts_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.known_hosts_path, "a") as f:
                f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
            os.chmod(self.known_hosts_path, 0o600)
        log.warning("trusted %s on first use: %s", name, fingerprint(key))
        ledger = self.context.state
        if ledger is not None:
            try:
                ledger.add_event(self.context.run_id, "host-key-trusted", name, f"{key.get_name()} {fingerprint(key)}")
            except Exception:  # noqa: BLE001 - the key is recorded in known_hosts already
                pass

