"""A WS-Management shell server (WinRS) for tests: no real Windows host can run here.

It speaks the wire protocol a Windows WinRM service speaks for remote shells: SOAP 1.2
over HTTP or HTTPS on /wsman, Basic authentication, Create / Command / Send / Receive /
Signal / Delete on the cmd shell resource, base64 streams, exit codes, operation timeouts
(fault 2150858793, which clients answer by polling again) and WS-Man faults. It is checked
by two independent clients (pywinrm and pypsrp) in tests/test_wsman_server.py.

Each lab host listens on its own 127.0.x.y address (same port for all), so a powered-off
host really refuses connections. Commands run in a subprocess with the host's state
directory in STATE_DIR. There is no PowerShell on this machine: `powershell
-EncodedCommand` scripts are decoded (UTF-16LE, as sent) and run by /bin/sh, and their
stderr comes back as CLIXML error records like PowerShell's. The command templates the
tests use are written for that stand-in (tests/peers/winrm_commands/).

The lab also plays the imaging infrastructure: a Wake-on-LAN listener that, for a MAC the
deployment server has staged, "re-images" the device (writes its new image version,
hostname, domain and software from the staging record) and powers it on.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from tests.peers import free_port
from tests.peers.tls import HandshakeInRequestThread, tls_listener

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "delete",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command": "command",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive": "receive",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send": "send",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal": "signal",
}
DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
SIGNAL_TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate"
OPERATION_TIMEOUT = 2150858793
SHELL_NOT_FOUND = 2150858843
ACCESS_DENIED = 5
ENCODED = re.compile(r"^\s*powershell(?:\.exe)?\b.*?\s-e(?:nc|ncodedcommand)?\s+([A-Za-z0-9+/=]+)\s*$", re.I | re.S)


class WsmanFault(Exception):
    def __init__(self, code: int, subcode: str, reason: str, *, sender: bool = True, status: int = 500):
        super().__init__(reason)
        self.code, self.subcode, self.reason, self.sender, self.status = code, subcode, reason, sender, status


@dataclass
class Command:
    id: str
    process: subprocess.Popen
    powershell: bool
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    readers: int = 2


@dataclass
class Shell:
    id: str
    owner: str
    commands: dict[str, Command] = field(default_factory=dict)


@dataclass
class WsmanHost:
    name: str
    address: str
    dir: Path
    mac: str | None = None
    command_fault: tuple[int, str] | None = None  # (WSManFault code, message) for every Command
    server: ThreadingHTTPServer | None = None
    shells: dict[str, Shell] = field(default_factory=dict)
    commands_run: list[str] = field(default_factory=list)
    receive_sizes: list[tuple[int, int]] = field(default_factory=list)  # (response bytes, client's MaxEnvelopeSize)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def read(self, name: str) -> str | None:
        path = self.state / name
        return path.read_text().strip() if path.exists() else None

    @property
    def powered(self) -> bool:
        return self.server is not None


class WsmanLab:
    """WS-Man hosts on 127.0.SUBNET.x:PORT, over HTTPS (a lab CA) or HTTP, with Basic auth."""

    def __init__(self, *, scheme: str = "https", username: str = "bigbang", password: str = "s3cret!",
                 subnet: int = 40, image_delay: float = 0.5, auth: tuple[str, ...] = ("basic",)) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bigbang-wsman-"))
        self.scheme = scheme
        self.auth = auth
        if "ntlm" in auth:
            # pyspnego's NTLM acceptor reads its accounts from this file (DOMAIN:USER:PASSWORD). A local account
            # of a Windows host answers to an empty domain, to the host's target name (what Windows clients and
            # other NTLM libraries send with a bare user name: the TargetName of the server's challenge) and to
            # the NetBIOS domain the challenge names.
            users = self.dir / "ntlm_users"
            target = socket.gethostname().upper()  # the TargetName pyspnego's acceptor puts in its challenge
            users.write_text("".join(f"{domain}:{username}:{password}\n" for domain in ("", target, "WORKSTATION")))
            os.environ["NTLM_USER_FILE"] = str(users)
        self.username, self.password = username, password
        self.subnet = subnet
        self.image_delay = image_delay
        self.port = free_port()
        self.hosts: dict[str, WsmanHost] = {}
        self.ssl_context: ssl.SSLContext | None = None
        if scheme == "https":
            self.ca_file, cert, key = _make_certificates(self.dir, [f"127.0.{subnet}.{i}" for i in range(1, 255)])
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(cert, key)
        self.wol_port = 0
        self.wol_packets: list[tuple[str, bytes]] = []  # (destination, payload) of every packet seen
        self._wol_socket: socket.socket | None = None
        self._stopping = threading.Event()
        self._timers: list[threading.Timer] = []

    # ------------------------------------------------------------ hosts
    def add_host(self, name: str, *, mac: str | None = None, powered: bool = True, **state: str) -> WsmanHost:
        address = f"127.0.{self.subnet}.{len(self.hosts) + 1}"
        host = WsmanHost(name, address, self.dir / "hosts" / name, mac=mac.lower() if mac else None)
        host.state.mkdir(parents=True)
        for key, value in state.items():
            (host.state / key).write_text(value + "\n")
        self.hosts[name] = host
        if powered:
            self.power_on(host)
        return host

    def power_on(self, host: WsmanHost) -> None:
        with host.lock:
            if host.server is not None:
                return
            server = _Server((host.address, self.port), _Handler)
            server.lab, server.host = self, host
            if self.ssl_context is not None:
                server.socket = tls_listener(self.ssl_context, server.socket)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                             name=f"wsman-{host.name}").start()
            host.server = server

    def power_off(self, host: WsmanHost) -> None:
        with host.lock:
            server, host.server = host.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
            for shell in list(host.shells.values()):
                _kill_shell(shell)
            host.shells.clear()

    def endpoint(self, host: WsmanHost) -> str:
        return f"{self.scheme}://{host.address}:{self.port}/wsman"

    # ------------------------------------------------------------ Wake-on-LAN and imaging
    def start_wol_listener(self) -> int:
        """Listen for magic packets on a free UDP port (all 127/8 addresses); returns the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.settimeout(0.1)
        self._wol_socket = sock
        self.wol_port = sock.getsockname()[1]
        threading.Thread(target=self._wol_loop, daemon=True, name="wsman-wol").start()
        return self.wol_port

    def _wol_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                payload, (source, _) = self._wol_socket.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            self.wol_packets.append((source, payload))
            mac = _magic_packet_mac(payload)
            for host in self.hosts.values():
                if mac and host.mac == mac and not host.powered:
                    timer = threading.Timer(self.image_delay, self._image, (host,))
                    timer.daemon = True
                    self._timers.append(timer)
                    timer.start()

    def _image(self, host: WsmanHost) -> None:
        """PXE-boot the device: apply the deployment server's staging record for its MAC, then power on."""
        if self._stopping.is_set() or host.powered:
            return
        for server in self.hosts.values():
            record = server.state / "deploy" / (host.mac.replace(":", "-") + ".conf")
            if record.exists():
                values = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
                for key in ("image_version", "hostname", "domain", "packages"):
                    (host.state / key).write_text(values.get(key, "") + "\n")
                self.power_on(host)
                return

    def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        for host in self.hosts.values():
            self.power_off(host)
        if self._wol_socket is not None:
            self._wol_socket.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Server(HandshakeInRequestThread, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    lab: WsmanLab
    host: WsmanHost

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def process_request(self, request, client_address) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-response (its process killed, its link cut) is no server error."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Power loss: open keep-alive connections die too."""
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.split("?")[0].lower() != "/wsman":
            return self._send(404, b"", "text/plain")
        if not self._authorised():
            return

        message_id = ""
        try:
            try:
                envelope = ET.fromstring(body)
            except ET.ParseError as exc:
                raise WsmanFault(2150858817, "w:SchemaValidationError", f"The SOAP XML in the message is "
                                 f"malformed: {exc}") from None
            message_id = _text(envelope, "s:Header/a:MessageID")
            action = _text(envelope, "s:Header/a:Action")
            op = ACTIONS.get(action)
            if op is None:
                raise WsmanFault(2150858754, "a:ActionNotSupported", f"The action {action!r} is not supported.")
            response_action, response_body = getattr(self, "_op_" + op)(envelope)
            data = _envelope(response_action, message_id, response_body)
            if op == "receive":
                self.server.host.receive_sizes.append((len(data), _max_envelope(envelope)))
            self._send(200, data)
        except WsmanFault as fault:
            self._send(fault.status, _fault(fault, message_id, self.server.host.name))
        except Exception as exc:  # noqa: BLE001 - like the service: an internal error is a SOAP fault too
            fault = WsmanFault(2150858782, "w:InternalError", f"The WS-Management service cannot process the "
                               f"request: {type(exc).__name__}: {exc}", sender=False)
            self._send(500, _fault(fault, message_id, self.server.host.name))

    def _authorised(self) -> bool:
        """Basic per request; NTLM per connection (as the Windows service does). Answers 401 itself."""
        lab = self.server.lab
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and "basic" in lab.auth:
            try:
                user, _, password = base64.b64decode(token).decode().partition(":")
            except ValueError:
                user = password = ""
            if user == lab.username and password == lab.password:
                return True
        elif scheme in ("ntlm", "negotiate") and "ntlm" in lab.auth:
            return self._ntlm_step(scheme, token)
        elif not header and getattr(self, "ntlm_user", None):
            return True  # this connection completed an NTLM handshake
        self._challenge()
        return False

    def _ntlm_step(self, scheme: str, token: str) -> bool:
        import spnego

        context = getattr(self, "ntlm_context", None)
        if context is None:
            context = self.ntlm_context = spnego.server(protocol="negotiate" if scheme == "negotiate" else "ntlm")
        try:
            answer = context.step(base64.b64decode(token))
        except Exception:  # noqa: BLE001 - a bad token or wrong password: the client sees 401
            self.ntlm_context = None
            self._challenge()
            return False
        if context.complete:
            self.ntlm_context, self.ntlm_user = None, context.client_principal
            return True
        challenge = f"{'Negotiate' if scheme == 'negotiate' else 'NTLM'} {base64.b64encode(answer).decode()}"
        self._send(401, b"", "text/plain", [("WWW-Authenticate", challenge)])
        return False

    def _challenge(self) -> None:
        offers = []
        if "ntlm" in self.server.lab.auth:
            offers += [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
        if "basic" in self.server.lab.auth:
            offers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        self._send(401, b"", "text/plain", offers)

    def _send(self, status: int, body: bytes, content_type: str = "application/soap+xml;charset=UTF-8",
              headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers or []:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    # ------------------------------------------------------------ operations
    def _shell(self, envelope: ET.Element) -> Shell:
        shell_id = ""
        for selector in envelope.findall("s:Header/w:SelectorSet/w:Selector", NS):
            if selector.get("Name") == "ShellId":
                shell_id = selector.text or ""
        shell = self.server.host.shells.get(shell_id)
        if shell is None:
            raise WsmanFault(SHELL_NOT_FOUND, "w:InvalidSelectors", f"The request for the Windows Remote Shell with "
                             f"ShellId {shell_id} failed because the shell was not found on the server.")
        return shell

    def _op_create(self, envelope: ET.Element) -> tuple[str, str]:
        resource = _text(envelope, "s:Header/w:ResourceURI")
        if resource != SHELL_URI:
            raise WsmanFault(2150858770, "w:DestinationUnreachable", f"The resource URI {resource} is not supported.")
        shell = Shell(str(uuid.uuid4()).upper(), self.server.lab.username)
        self.server.host.shells[shell.id] = shell
        host = self.server.host
        address = f"{self.server.lab.scheme}://{host.address}:{self.server.lab.port}/wsman"
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", (
            f"<x:ResourceCreated><a:Address>{address}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">{shell.id}"
            f"</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId><rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(shell.owner)}</rsp:Owner><rsp:ClientIP>{self.client_address[0]}</rsp:ClientIP>"
            f"<rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut><rsp:InputStreams>stdin</rsp:InputStreams>"
            f"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            f"<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
        )

    def _op_delete(self, envelope: ET.Element) -> tuple[str, str]:
        shell = self._shell(envelope)
        _kill_shell(shell)
        self.server.host.shells.pop(shell.id, None)
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", ""

    def _op_command(self, envelope: ET.Element) -> tuple[str, str]:
        shell = self._shell(envelope)
        host = self.server.host
        if host.command_fault is not None:
            code, message = host.command_fault
            raise WsmanFault(code, "w:AccessDenied" if code == ACCESS_DENIED else "w:InternalError", message)
        line = envelope.find("s:Body/rsp:CommandLine", NS)
        if line is None:
            raise WsmanFault(2150858817, "w:SchemaValidationError", "The Command body has no rsp:CommandLine.")
        command_id = line.get("CommandId") or str(uuid.uuid4()).upper()
        executable = _text(line, "rsp:Command")
        arguments = [a.text or "" for a in line.findall("rsp:Arguments", NS)]
        command_line = " ".join([executable, *arguments]).strip()
        host.commands_run.append(command_line)
        match = ENCODED.match(command_line)
        if match:
            try:
                script = base64.b64decode(match.group(1)).decode("utf-16-le")
            except (ValueError, UnicodeDecodeError):
                raise WsmanFault(2150858817, "w:SchemaValidationError", "-EncodedCommand is not base64 "
                                 "UTF-16LE text.") from None
        else:
            script = command_line
        env = {"PATH": "/usr/bin:/bin", "STATE_DIR": str(host.state), "COMPUTERNAME": host.name.upper(),
               "LANG": "C.UTF-8"}
        process = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=host.state, env=env, start_new_session=True)
        command = Command(command_id, process, powershell=bool(match))
        for pipe, buffer in ((process.stdout, command.stdout), (process.stderr, command.stderr)):
            threading.Thread(target=_pump, args=(command, pipe, buffer), daemon=True).start()
        shell.commands[command_id] = command
        return ("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse",
                f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>")

    def _command(self, shell: Shell, element: ET.Element | None) -> Command:
        command_id = element.get("CommandId") if element is not None else None
        command = shell.commands.get(command_id or "")
        if command is None:
            raise WsmanFault(2150858843, "w:InvalidParameter", f"The command {command_id} was not found.")
        return command

    def _op_send(self, envelope: ET.Element) -> tuple[str, str]:
        shell = self._shell(envelope)
        stream = envelope.find("s:Body/rsp:Send/rsp:Stream", NS)
        command = self._command(shell, stream)
        if stream.text:
            command.process.stdin.write(base64.b64decode(stream.text))
            command.process.stdin.flush()
        if (stream.get("End") or "").lower() == "true":
            command.process.stdin.close()
        return "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse", "<rsp:SendResponse/>"

    def _op_receive(self, envelope: ET.Element) -> tuple[str, str]:
        shell = self._shell(envelope)
        desired = envelope.find("s:Body/rsp:Receive/rsp:DesiredStream", NS)
        command = self._command(shell, desired)
        deadline = time.monotonic() + _duration(_text(envelope, "s:Header/w:OperationTimeout") or "PT60S")
        limit = _max_envelope(envelope)
        # What fits: the envelope around the streams takes about 1.2 KB (ids, actions, namespaces); base64 adds a
        # third; PowerShell's CLIXML error records can more than double stderr. Windows splits output the same way:
        # the rest stays for the next Receive, and the command is Done only once everything has been received.
        room = (limit - 2048) * 3 // 4
        if room <= 0:
            raise WsmanFault(2150858817, "w:EncodingLimit", f"The MaxEnvelopeSize {limit} is too small for any "
                             "response.")
        with command.changed:
            while not (command.stdout or command.stderr or command.exit_code is not None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WsmanFault(OPERATION_TIMEOUT, "w:TimedOut", "The WS-Management service cannot complete "
                                     "the operation within the time specified in OperationTimeout.", sender=False)
                command.changed.wait(remaining)
            out = bytes(command.stdout[:room])
            del command.stdout[:len(out)]
            err_room = (room - len(out)) // (3 if command.powershell else 1)
            err = bytes(command.stderr[:err_room])
            if command.powershell and len(err) < len(command.stderr) and b"\n" in err:
                err = err[:err.rindex(b"\n") + 1]  # whole lines: each becomes one error record
            del command.stderr[:len(err)]
            exit_code = command.exit_code if not (command.stdout or command.stderr) else None
        if command.powershell and err:
            err = _clixml(err)
        cid = command.id
        parts = [f'<rsp:Stream Name="stdout" CommandId="{cid}">{base64.b64encode(out).decode()}</rsp:Stream>'
                 if out else "",
                 f'<rsp:Stream Name="stderr" CommandId="{cid}">{base64.b64encode(err).decode()}</rsp:Stream>'
                 if err else ""]
        if exit_code is None:
            parts.append(f'<rsp:CommandState CommandId="{cid}" State="{RUNNING}"/>')
        else:
            parts.append(f'<rsp:Stream Name="stdout" CommandId="{cid}" End="true"></rsp:Stream>'
                         f'<rsp:Stream Name="stderr" CommandId="{cid}" End="true"></rsp:Stream>'
                         f'<rsp:CommandState CommandId="{cid}" State="{DONE}"><rsp:ExitCode>{exit_code}'
                         f'</rsp:ExitCode></rsp:CommandState>')
        return ("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse",
                f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>")

    def _op_signal(self, envelope: ET.Element) -> tuple[str, str]:
        shell = self._shell(envelope)
        signal = envelope.find("s:Body/rsp:Signal", NS)
        command = self._command(shell, signal)
        code = _text(signal, "rsp:Code").lower()  # pywinrm sends .../terminate, pypsrp .../Terminate
        if code.endswith(("/terminate", "/ctrl_c", "/ctrl_break")):
            if command.process.poll() is None:
                command.process.kill()
            if code.endswith("/terminate"):
                shell.commands.pop(command.id, None)
        return "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse", "<rsp:SignalResponse/>"


# ---------------------------------------------------------------- helpers

def _pump(command: Command, pipe, buffer: bytearray) -> None:
    for chunk in iter(lambda: pipe.read1(65536), b""):
        with command.changed:
            buffer += chunk
            command.changed.notify_all()
    pipe.close()
    with command.changed:
        command.readers -= 1
        if command.readers == 0:
            command.exit_code = command.process.wait()
            command.changed.notify_all()


def _kill_shell(shell: Shell) -> None:
    for command in shell.commands.values():
        if command.process.poll() is None:
            command.process.kill()
    shell.commands.clear()


def _text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    return (found.text or "").strip() if found is not None else ""


def _max_envelope(envelope: ET.Element) -> int:
    """The client's w:MaxEnvelopeSize in bytes (WinRM's default, 500 KB, when it sends none)."""
    text = _text(envelope, "s:Header/w:MaxEnvelopeSize")
    if not text:
        return 512000
    try:
        return int(text)
    except ValueError:
        raise WsmanFault(2150858817, "w:InvalidOptions", f"MaxEnvelopeSize {text!r} is not a number.") from None


def _duration(value: str) -> float:
    """Seconds from an xs:duration like PT20S or PT60.000S."""
    match = re.match(r"^P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$", value.strip())
    if not match:
        raise WsmanFault(2150858817, "w:InvalidOptions", f"OperationTimeout {value!r} is not a duration.")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{NS["x"]}" '
        f'xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" xmlns:p="{NS["p"]}"><s:Header><a:Action>{action}</a:Action>'
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _fault(fault: WsmanFault, relates_to: str, machine: str) -> bytes:
    side = "s:Sender" if fault.sender else "s:Receiver"
    addressing = fault.subcode.startswith("a:")  # WS-Addressing faults carry their own action, as Windows sends
    body = (f"<s:Fault><s:Code><s:Value>{side}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode>"
            f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason><s:Detail>'
            f'<f:WSManFault xmlns:f="{NS["f"]}" Code="{fault.code}" Machine="{escape(machine)}">'
            f"<f:Message>{escape(fault.reason)}</f:Message></f:WSManFault></s:Detail></s:Fault>")
    action = ("http://schemas.xmlsoap.org/ws/2004/08/addressing/fault" if addressing
              else "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault")
    return _envelope(action, relates_to, body)


def _clixml(stderr: bytes) -> bytes:
    """stderr as PowerShell sends error records over WinRM."""
    def encode(line: str) -> str:
        return escape(line).replace("\r", "").replace("\n", "") + "_x000D__x000A_"

    records = "".join(f'<S S="Error">{encode(line)}</S>' for line in stderr.decode(errors="replace").splitlines())
    return ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
            f"{records}</Objs>").encode()


def _magic_packet_mac(payload: bytes) -> str | None:
    """The MAC a Wake-on-LAN magic packet wakes (6 x 0xFF, then the MAC 16 times), or None."""
    if len(payload) < 102 or payload[:6] != b"\xff" * 6:
        return None
    mac = payload[6:12]
    if payload[6:102] != mac * 16:
        return None
    return ":".join(f"{b:02x}" for b in mac)


def _make_certificates(directory: Path, addresses: list[str]) -> tuple[str, str, str]:
    """A lab CA and a server certificate for `addresses` (and localhost); returns file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bigbang test lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsman lab")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return tuple(str(p) for p in paths)


@pytest.fixture(scope="session")
def wsman_lab():
    lab = WsmanLab(scheme="https")
    lab.start_wol_listener()
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def wsman_http_lab():
    lab = WsmanLab(scheme="http", subnet=41, auth=("basic", "ntlm"))
    yield lab
    lab.stop()


COMMANDS_DIR = Path(__file__).resolve().parent / "winrm_commands"


def workstation_params(host: WsmanHost, **overrides) -> dict:
    """Step params for a workstation on a lab host, shaped like plan._workstation_plan's."""
    params = {
        "location": "HST-001", "mac": host.mac, "serial": f"SN-{host.name}", "model": "ThinkCentre M70q",
        "address": host.address, "current_image": "win10-2022", "target_image": "win11-2026.11",
        "image_version": "10.0.26100.2314", "hostname": f"hst-{host.name}", "domain": "ad.example.dk",
        "baseline": "std-2026", "packages": ["Microsoft 365 Apps 2411", "Citrix Workspace 2409"],
        "broadcast": "127.255.255.255", "vars": {},
    }
    params.update(overrides)
    return params
