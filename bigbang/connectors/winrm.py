"""WinRM connector: Windows workstations and the deployment server through pywinrm.

ws.prestage runs a template on the deployment server (idempotent: it reports
staged=new|updated|unchanged). ws.image first asks the device: already on the target
image, hostname and domain means nothing to do (this is how a resume skips finished
work); otherwise it sends Wake-on-LAN to the location's broadcast address and polls the
device over WinRM until it answers with all three, or `image_timeout` passes.
ws.verify reads the same state plus the software baseline and reports expected against
found. HTTPS certificates are verified unless `insecure` (labs only).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

import requests
from pydantic import BaseModel, ConfigDict, Field

from bigbang.connectors._commands import CommandResult, CommandTemplates, compare, record_substep
from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.errors import ConfigError, ConnectorError
from bigbang.inventory.model import SecretRef
from bigbang.wol import send_magic_packet

log = logging.getLogger("bigbang.winrm")
OPERATION_TIMEOUT_FAULT = 2150858793


class WinrmSettings(BaseModel):
    """How to reach Windows hosts over WS-Management. HTTPS certificates are verified by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: SecretRef | str = Field(description="user name (text or a reference)")
    password: SecretRef = Field(description="reference to the password")
    transport: str = Field("ntlm", pattern="^(basic|ntlm|kerberos)$")
    scheme: str = Field("https", pattern="^(http|https)$")
    port: int | None = Field(None, ge=1, le=65535, description="5986 for https, 5985 for http when empty")
    ca_bundle: str | None = None
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    deployment_server: str | None = Field(None, description="host that pre-stages devices (MDT/MECM/FOG)")
    operation_timeout: float = Field(60, gt=0)
    read_timeout: float = Field(90, gt=0)
    image_timeout: float = Field(5400, gt=0, description="seconds to wait for a device to come up re-imaged")
    max_parallel: int = Field(50, ge=1, le=1000)
    command_timeout: float = Field(600, gt=0, description="seconds one command may run")
    image_poll: float = Field(30, gt=0, description="seconds between checks while a device is imaging")
    wol_port: int = Field(9, ge=1, le=65535, description="UDP port of Wake-on-LAN packets")
    wol_broadcast: str = Field("255.255.255.255", description="broadcast address when a location names none")
    message_encryption: str = Field("auto", pattern="^(auto|always|never)$",
                                    description="NTLM/Kerberos message encryption (auto: only over http)")
    commands_dir: str | None = Field(None, description="directory of command templates overriding the defaults")


class WinrmConnector:
    name: ClassVar[str] = "winrm"

    def __init__(self, settings: WinrmSettings, context: ConnectorContext):
        import winrm.protocol  # noqa: F401 - fail here, not mid-run, if pywinrm is broken

        self.settings = settings
        self.context = context
        self.templates = CommandTemplates(settings.commands_dir)
        self.username = context.resolve_secret(settings.username)
        self.password = context.resolve_secret(settings.password)
        if settings.read_timeout <= settings.operation_timeout:
            raise ConfigError("connectors.winrm.read_timeout must be longer than operation_timeout",
                              hint=f"e.g. read_timeout: {settings.operation_timeout + 30:g}")
        if settings.ca_bundle and not settings.insecure:
            if not Path(settings.ca_bundle).expanduser().is_file():
                raise ConfigError(f"connectors.winrm.ca_bundle {settings.ca_bundle} does not exist")
        self._protocol("settings-check.invalid")  # transport problems (e.g. kerberos missing) show up now
        self._slots = threading.BoundedSemaphore(settings.max_parallel)
        self._idle: dict[str, list[Any]] = {}
        self._last_probe_error: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ protocol
    def run(self, action: Action) -> Outcome:
        try:
            if action.kind == "ws.prestage":
                return self._prestage(action)
            if action.kind == "ws.image":
                return self._image(action)
            if action.kind == "ws.verify":
                return self._verify(action)
            return Outcome.failed(f"the winrm connector cannot run {action.kind}", transient=False)
        except ConnectorError as exc:
            return Outcome.from_error(exc)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for protocols in idle.values():
            for protocol in protocols:
                protocol.transport.close_session()

    # ------------------------------------------------------------ steps
    def _variables(self, action: Action) -> dict[str, Any]:
        p = action.params
        variables = {k: p.get(k) for k in ("location", "mac", "serial", "model", "address", "current_image",
                                            "target_image", "image_version", "hostname", "domain", "baseline",
                                            "broadcast")}
        variables.update(packages=list(p.get("packages") or []), vars=dict(p.get("vars") or {}),
                         target=action.target)
        return variables

    def _expected(self, action: Action) -> dict[str, Any]:
        p = action.params
        return {"image_version": p.get("image_version"), "hostname": str(p.get("hostname") or "").lower(),
                "domain": str(p.get("domain") or "").lower() or None}

    def _prestage(self, action: Action) -> Outcome:
        server = self.settings.deployment_server
        if not server:
            return Outcome.failed("no deployment server: set connectors.winrm.deployment_server", transient=False)
        result = self.run_template(server, "ws_prestage", self._variables(action))
        staged = result.facts.get("staged", "")
        facts = {"deployment_server": server, "staged": staged, "mac": action.params.get("mac"),
                 "image": action.params.get("target_image"), **result.summary()}
        if staged not in ("new", "updated", "unchanged"):
            return Outcome(ok=False, transient=False, facts=facts,
                           message=f"ws_prestage on {server} did not report staged=new|updated|unchanged")
        record_substep(self.context, action.step_id, f"staged on {server}: {staged}")
        return Outcome(ok=True, changed=staged != "unchanged", facts=facts,
                       message=f"{staged} on {server}" if staged != "unchanged" else f"already staged on {server}")

    def _image(self, action: Action) -> Outcome:
        address = str(action.params.get("address") or action.target)
        expected = self._expected(action)
        found = self._probe(address)
        if found is not None and not compare(expected, found):
            return Outcome(ok=True, changed=False, message=f"already on {expected['image_version']}",
                           facts={"expected": expected, "found": found, "substeps": []})
        mac = str(action.params.get("mac"))
        broadcast = action.params.get("broadcast") or self.settings.wol_broadcast
        try:
            send_magic_packet(mac, broadcast, self.settings.wol_port)
        except OSError as exc:
            return Outcome.failed(f"cannot send Wake-on-LAN to {broadcast}:{self.settings.wol_port}: {exc}")
        record_substep(self.context, action.step_id, f"wake-on-lan sent to {mac} via {broadcast}")
        substeps = [f"wake-on-lan {mac} via {broadcast}"]
        deadline = time.monotonic() + self.settings.image_timeout
        while True:
            time.sleep(min(self.settings.image_poll, max(0.0, deadline - time.monotonic())))
            found = self._probe(address)
            if found is not None and not compare(expected, found):
                substeps.append("up with the target image")
                record_substep(self.context, action.step_id, "up with the target image")
                return Outcome(ok=True, changed=True, facts={"expected": expected, "found": found,
                                                             "substeps": substeps},
                               message=f"re-imaged to {expected['image_version']} as {found['hostname']}")
            if time.monotonic() >= deadline:
                seen = (f"no answer over WinRM; last: {self._last_probe_error.get(address, 'none')}"
                        if found is None else "; ".join(compare(expected, found)))
                return Outcome(ok=False, transient=False,
                               facts={"expected": expected, "found": found, "substeps": substeps},
                               message=f"not re-imaged within {self.settings.image_timeout:g} s after "
                                       f"Wake-on-LAN ({seen})")

    def _probe(self, address: str) -> dict[str, str] | None:
        """The device's state, or None while it does not answer as itself yet.

        Any error counts as "not yet": while imaging, a device is off, in the installer, or up
        without its domain account or certificate. The last error is kept for the timeout message.
        """
        try:
            return self._state(address)
        except ConnectorError as exc:
            self._last_probe_error[address] = exc.message
            log.debug("%s not answering yet: %s", address, exc)
            return None

    def _state(self, address: str) -> dict[str, str]:
        facts = self.run_template(address, "ws_state", {}).facts
        facts["hostname"] = facts.get("hostname", "").lower()
        facts["domain"] = facts.get("domain", "").lower()
        return facts

    def _verify(self, action: Action) -> Outcome:
        address = str(action.params.get("address") or action.target)
        expected = self._expected(action)
        found: dict[str, Any] = self._state(address)
        packages = list(action.params.get("packages") or [])
        missing: list[str] = []
        if packages:
            baseline = self.run_template(address, "ws_baseline", self._variables(action)).facts
            missing = [m for m in baseline.get("missing", "").split("|") if m]
        mismatches = compare(expected, found)
        if missing:
            mismatches.append(f"baseline {action.params.get('baseline')}: missing {', '.join(missing)}")
        facts = {"expected": {**expected, "baseline": packages}, "found": found, "baseline_missing": missing,
                 "mismatches": mismatches, "image_version": found.get("image_version"),
                 "hostname": found.get("hostname"), "domain": found.get("domain")}
        if mismatches:
            return Outcome(ok=False, transient=False, facts=facts, message="; ".join(mismatches))
        return Outcome(ok=True, facts=facts, message=f"{found['image_version']} as {found['hostname']}, "
                                                     f"{len(packages)} baseline packages present")

    # ------------------------------------------------------------ commands
    def run_template(self, host: str, stem: str, variables: dict[str, Any]) -> CommandResult:
        """Render `stem.ps1.j2` (PowerShell) or `stem.cmd.j2` (cmd) and run it; raise when it fails."""
        name = self.templates.find(f"{stem}.ps1.j2", f"{stem}.cmd.j2")
        script = self.templates.render(name, variables)
        if name.endswith(".ps1.j2"):
            result = self.run_ps(host, script, name=stem)
        else:
            result = self.run_cmd(host, script, name=stem)
        if not result.ok:
            raise result.failure(host)
        return result

    def run_ps(self, host: str, script: str, *, name: str = "powershell") -> CommandResult:
        encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
        result = self.run_cmd(host, f"powershell -NoProfile -NonInteractive -EncodedCommand {encoded}", name=name)
        if result.stderr.startswith("#< CLIXML"):
            result = CommandResult(result.name, result.exit_code, result.stdout, clixml_errors(result.stderr),
                                   result.seconds)
        return result

    def run_cmd(self, host: str, command: str, args: tuple[str, ...] = (), *, name: str = "command") -> CommandResult:
        with self._slots:
            protocol = self._checkout(host)
            started = time.monotonic()
            healthy = False
            try:
                out, err, code = self._run(protocol, command, args)
                healthy = True
                return CommandResult(name, code, out.decode(errors="replace"), err.decode(errors="replace"),
                                     time.monotonic() - started)
            except ConnectorError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a clear, classified step failure
                raise map_error(exc, host, name) from None
            finally:
                self._checkin(host, protocol, healthy)

    def _run(self, protocol: Any, command: str, args: tuple[str, ...]) -> tuple[bytes, bytes, int]:
        from winrm.exceptions import WinRMOperationTimeoutError

        shell_id = protocol.open_shell(codepage=65001)
        try:
            command_id = protocol.run_command(shell_id, command, args)
            out, err = [], []
            deadline = time.monotonic() + self.settings.command_timeout
            while True:
                try:
                    o, e, code, done = protocol.get_command_output_raw(shell_id, command_id)
                    out.append(o)
                    err.append(e)
                    if done:
                        break
                except WinRMOperationTimeoutError:
                    pass  # no output within one operation timeout: ask again
                if time.monotonic() > deadline:
                    raise ConnectorError(f"command did not finish within {self.settings.command_timeout:g} s",
                                         transient=True)
            protocol.cleanup_command(shell_id, command_id)
            return b"".join(out), b"".join(err), code
        finally:
            try:
                protocol.close_shell(shell_id, close_session=False)
            except Exception:  # noqa: BLE001 - the shell times out on the host anyway
                pass

    def endpoint(self, host: str) -> str:
        s = self.settings
        port = s.port or (5986 if s.scheme == "https" else 5985)
        return f"{s.scheme}://{host}:{port}/wsman"

    def _protocol(self, host: str) -> Any:
        from winrm.exceptions import WinRMError
        from winrm.protocol import Protocol

        s = self.settings
        try:
            return Protocol(
                self.endpoint(host), transport=s.transport,  # type: ignore[arg-type]  # the settings model checks it
                username=self.username, password=self.password,
                server_cert_validation="ignore" if s.insecure else "validate",
                ca_trust_path=s.ca_bundle if s.ca_bundle else "legacy_requests",
                read_timeout_sec=s.read_timeout, operation_timeout_sec=s.operation_timeout,  # type: ignore[arg-type]
                message_encryption=s.message_encryption,  # type: ignore[arg-type]
            )
        except WinRMError as exc:
            raise ConfigError(f"connectors.winrm: {exc}", hint="check transport and message_encryption") from None

    def _checkout(self, host: str) -> Any:
        with self._lock:
            idle = self._idle.get(host)
            if idle:
                return idle.pop()
        return self._protocol(host)

    def _checkin(self, host: str, protocol: Any, healthy: bool) -> None:
        if not healthy:
            protocol.transport.close_session()
            return
        with self._lock:
            self._idle.setdefault(host, []).append(protocol)


def map_error(exc: Exception, host: str, what: str) -> ConnectorError:
    """A pywinrm/requests exception as a clear step failure, transient when a retry may help."""
    from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError, WSManFaultError

    if isinstance(exc, requests.exceptions.SSLError):
        return ConnectorError(f"TLS certificate of {host} not trusted ({_short(exc)})", transient=False,
                              hint="set connectors.winrm.ca_bundle to the CA that issued the WinRM certificate")
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError)):
        return ConnectorError(f"cannot reach {host} over WinRM: {_short(exc)}", transient=True)
    if isinstance(exc, requests.exceptions.Timeout):
        return ConnectorError(f"{host} did not answer {what} in time: {_short(exc)}", transient=True)
    if isinstance(exc, InvalidCredentialsError):
        return ConnectorError(f"{host} rejected the WinRM credentials", transient=False,
                              hint="check connectors.winrm.username/password and transport")
    if isinstance(exc, WSManFaultError):
        code = exc.wsman_fault_code
        reason = (exc.reason or "").strip()
        subcode = f" {exc.fault_subcode}" if exc.fault_subcode else ""
        transient = code == OPERATION_TIMEOUT_FAULT or (exc.code or 0) >= 502
        return ConnectorError(f"WS-Man fault {code}{subcode} from {host} during {what}: {reason}", transient=transient)
    if isinstance(exc, WinRMTransportError):
        return ConnectorError(f"HTTP {exc.code} from {host} during {what}: {_short(exc.response_text or '')}",
                              transient=exc.code >= 500)
    if isinstance(exc, WinRMError):
        return ConnectorError(f"WinRM error from {host} during {what}: {exc}", transient=False)
    return ConnectorError(f"{what} on {host} failed: {exc.__class__.__name__}: {exc}", transient=True)


def clixml_errors(stderr: str) -> str:
    """Plain text of PowerShell's CLIXML error records (as pywinrm's run_ps does)."""
    body = stderr.replace("#< CLIXML", "", 1).strip()
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return stderr
    lines = []
    for node in root.iter():
        if node.tag.endswith("}S") and node.get("S") == "Error":
            lines.append(re.sub(r"_x([0-9A-F]{4})_", lambda m: chr(int(m.group(1), 16)), node.text or ""))
    return "".join(lines).strip()


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def create(settings: WinrmSettings, context: ConnectorContext) -> WinrmConnector:
    return WinrmConnector(settings, context)
