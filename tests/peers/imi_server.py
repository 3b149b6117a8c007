"""An IGEL UMS stand-in speaking IMI REST API v3 (written from IGEL's IMI v3 reference), for tests.

HTTPS only, with a throwaway CA made for the test (`ca_file`). What it serves, under /umsapi/v3/:

- `POST login` (Basic auth) -> `Set-Cookie: JSESSIONID=...` and `{"message": "JSESSIONID=..."}`;
  `POST logout`. Every other request needs a live session cookie, else 401.
- `GET thinclients` (`?facets=details` or `?facets=online`), `GET thinclients/{id}` (same facets),
  `PUT thinclients/{id}` (update name etc.), `POST thinclients?command=reboot|shutdown|wakeup|
  settings2tc|tcreset2facdefs` with a JSON list of `{"id", "type": "tc"}` -> `{"CommandExecList":
  [{execID, id, mac, exectime, message, state}]}`, one entry per thin client, FAILED for an
  offline or unknown one. `GET thinclients/{id}/assignments/profiles`.
- `GET directories/tcdirectories` (list), `PUT directories/tcdirectories` (create, `{"name"}`),
  `PUT directories/tcdirectories/{id}?operation=move` with a JSON list -> `[{"id", "results":
  "successful"|"does_not_exist"}]`.
- `GET profiles`, `GET profiles/{id}/assignments/thinclients`, `POST` (IMI reference) or `PUT`
  (what pyimi sends) `profiles/{id}/assignments/thinclients/` with a list of assignments
  `{assignee: {id, type: profile}, receiver: {id, type: tc}}`, `DELETE
  profiles/{id}/assignments/thinclients/{tcId}`.
- `GET firmwares` -> `{"FwResourceList": [{id, product, version, firmwareType}]}`.

Device state is simulated: a reboot takes the device offline for `reboot_seconds`, then it is
online with a new `lastBoottime`/`lastContact` (ISO 8601, milliseconds, UTC) and applies the
profiles assigned to it at that moment (a profile may carry a firmware update: the device then
runs that firmware). Devices made with `offline=True` never answer. Assignments and moves are
database changes and work on offline devices too, as in UMS. `requests` counts every request by
endpoint (`POST thinclients?command=reboot`, `GET thinclients/{id}` ...) for tests and the bench;
`expire_sessions()` ends every session as a UMS timeout would; `latency` adds a delay per request.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import secrets
import ssl
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.peers import free_port
from tests.peers.tls import HandshakeInRequestThread, tls_listener
from tests.peers.wsman_server import _make_certificates  # the same throwaway lab CA as the WS-Man peer

COMMANDS = ("reboot", "shutdown", "wakeup", "settings2tc", "tcreset2facdefs")


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Device:
    id: str
    mac: str  # 12 upper-case hex digits, as UMS keeps it
    name: str
    parent_id: str = "-1"
    firmware_id: str = "1"
    offline: bool = False  # never answers (powered off, unplugged)
    online: bool = True
    last_boot: float = field(default_factory=lambda: time.time() - 86400)
    last_contact: float = field(default_factory=lambda: time.time() - 60)
    back_at: float | None = None  # rebooting until then
    applied_profiles: list[str] = field(default_factory=list)
    settings_received: int = 0
    reboots: int = 0


@dataclass
class Profile:
    id: str
    name: str
    firmware_id: str = "1"
    firmware_update: str | None = None  # firmware id a device runs after booting with this profile


class ImiServer:
    def __init__(self, *, username: str = "imi-admin", password: str = "s3cret-imi", reboot_seconds: float = 0.3,
                 session_ttl: float = 3600.0, latency: float = 0.0):
        self.username, self.password = username, password
        self.reboot_seconds = reboot_seconds
        self.session_ttl = session_ttl
        self.latency = latency
        self.dir = Path(tempfile.mkdtemp(prefix="imi-lab-"))
        self.ca_file, cert, key = _make_certificates(self.dir, ["127.0.0.1"])
        self.lock = threading.RLock()
        self.ids = itertools.count(1000)
        self.devices: dict[str, Device] = {}
        self.directories: dict[str, dict[str, str]] = {}
        self.profiles: dict[str, Profile] = {}
        self.assignments: set[tuple[str, str]] = set()  # (profile id, thin client id)
        self.firmwares: dict[str, str] = {"1": "11.10.100", "2": "12.6.1"}
        self.sessions: dict[str, float] = {}  # JSESSIONID -> expiry
        self.requests: Counter[str] = Counter()
        self.logins = 0
        self.port = free_port()
        self.httpd = _Server(("127.0.0.1", self.port), _handler(self))
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = tls_listener(context, self.httpd.socket)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="imi-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ lab set-up
    def next_id(self) -> str:
        return str(next(self.ids))

    def add_profile(self, name: str, *, firmware_update: str | None = None) -> Profile:
        with self.lock:
            profile = Profile(self.next_id(), name, firmware_update=firmware_update)
            self.profiles[profile.id] = profile
            return profile

    def profile(self, name: str) -> Profile:
        return next(p for p in self.profiles.values() if p.name == name)

    def add_directory(self, name: str, parent_id: str = "-1") -> str:
        with self.lock:
            did = self.next_id()
            self.directories[did] = {"name": name, "parentID": parent_id}
            return did

    def directory(self, name: str) -> str | None:
        return next((did for did, d in self.directories.items() if d["name"] == name), None)

    def add_device(self, mac: str, name: str, *, profile: str | None = None, offline: bool = False,
                   firmware_id: str = "1", parent_id: str = "-1") -> Device:
        with self.lock:
            device = Device(self.next_id(), "".join(c for c in mac if c.isalnum()).upper(), name, parent_id=parent_id,
                            firmware_id=firmware_id, offline=offline, online=not offline)
            self.devices[device.id] = device
            if profile:
                pid = self.profile(profile).id
                self.assignments.add((pid, device.id))
                device.applied_profiles = [profile]
            return device

    def device_by_mac(self, mac: str) -> Device:
        key = "".join(c for c in mac if c.isalnum()).upper()
        return next(d for d in self.devices.values() if d.mac == key)

    def assigned(self, device: Device) -> list[str]:
        with self.lock:
            return sorted(self.profiles[pid].name for pid, tc in self.assignments if tc == device.id)

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.logins = 0

    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    # ------------------------------------------------------------ simulation
    def _tick(self, device: Device) -> None:
        """Finish a reboot whose time has come: online, new boot and contact times, profiles applied."""
        if device.back_at is not None and time.time() >= device.back_at:
            device.back_at = None
            device.online = True
            device.last_boot = device.last_contact = time.time()
            device.applied_profiles = self.assigned(device)
            for name in device.applied_profiles:
                update = self.profile(name).firmware_update
                if update:
                    device.firmware_id = update

    def _main(self, device: Device) -> dict[str, Any]:
        self._tick(device)
        base = f"https://127.0.0.1:{self.port}/umsapi/v3"
        parent = "root" if device.parent_id == "-1" else f"{base}/directories/tcdirectories/{device.parent_id}"
        return {"unitID": device.mac, "mac": device.mac, "firmwareID": device.firmware_id,
                "lastIP": f"10.31.{int(device.id) % 250}.{int(device.id) % 200 + 20}", "id": device.id,
                "name": device.name, "parentID": device.parent_id, "movedToBin": False, "objectType": "tc",
                "links": [{"rel": "self", "href": f"{base}/thinclients/{device.id}"}, {"rel": "Parent", "href": parent},
                          {"rel": "Firmware", "href": f"{base}/firmwares/{device.firmware_id}"}]}

    def _view(self, device: Device, facets: str | None) -> dict[str, Any]:
        view = self._main(device)
        if facets == "online":
            view["online"] = device.online
        elif facets == "details":
            view.update(networkName=device.name, site="", department="", costCenter="", comment="", assetID="",
                        inserviceDate="", serialNumber=f"SN{device.mac[-6:]}", productId="UD3-LX 60",
                        umsStructuralTag="", osType="IGEL OS 12", lastBoottime=iso(device.last_boot),
                        lastContact=iso(device.last_contact))
        return view

    def _command(self, command: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        exec_id = f"ID-IMI-LAB-{secrets.token_hex(4)}"
        results = []
        for item in items:
            device = self.devices.get(str(item.get("id")))
            now = time.time()
            entry = {"execID": exec_id, "id": str(item.get("id")), "mac": device.mac if device else "",
                     "exectime": str(int(now * 1000))}
            if device is not None:
                self._tick(device)
            if device is None:
                entry.update(message="Thin client does not exist", state="FAILED")
            elif device.offline or not device.online:
                entry.update(message="Thin client is not reachable", state="FAILED")
            else:
                entry.update(message="OK", state="SUCCESS")
                device.last_contact = now
                if command == "settings2tc":
                    device.settings_received += 1
                elif command == "reboot":
                    device.reboots += 1
                    device.online = False
                    device.back_at = now + self.reboot_seconds
                elif command == "shutdown":
                    device.online = False
            results.append(entry)
        return {"CommandExecList": results}

    # ------------------------------------------------------------ routing
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        with self.lock:
            if parts[:1] == ["thinclients"]:
                return self._thinclients(method, parts[1:], query, body)
            if parts[:2] == ["directories", "tcdirectories"]:
                return self._directories(method, parts[2:], query, body)
            if parts[:1] == ["profiles"]:
                return self._profiles(method, parts[1:], body)
            if parts == ["firmwares"] and method == "GET":
                return 200, {"FwResourceList": [{"id": fid, "product": "IGEL OS", "version": version,
                                                 "firmwareType": "LX"} for fid, version in self.firmwares.items()]}
        return 404, {"message": f"no resource {method} {path}"}

    def _thinclients(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, [self._view(d, query.get("facets")) for d in self.devices.values()]
        if not rest and method == "POST" and query.get("command") in COMMANDS:
            if not isinstance(body, list):
                return 400, {"message": "expected a list of API objects"}
            return 200, self._command(query["command"], body)
        device = self.devices.get(rest[0]) if rest else None
        if device is None:
            return 404, {"message": "Thin client does not exist"}
        if len(rest) == 1 and method == "GET":
            return 200, self._view(device, query.get("facets"))
        if len(rest) == 1 and method == "PUT" and isinstance(body, dict):
            device.name = str(body.get("name", device.name))
            return 200, {"message": "Update successful"}
        if rest[1:] == ["assignments", "profiles"] and method == "GET":
            return 200, [self._assignment(pid, tc) for pid, tc in sorted(self.assignments) if tc == device.id]
        return 404, {"message": "no such resource"}

    def _directories(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, [{"id": did, "name": d["name"], "parentID": d["parentID"], "movedToBin": False,
                          "objectType": "tcdirectory"} for did, d in self.directories.items()]
        if not rest and method == "PUT":
            if not isinstance(body, dict) or not body.get("name"):
                return 400, {"message": "a directory needs a name"}
            parent = str(body.get("parentID", "-1"))
            did = self.add_directory(str(body["name"]), parent)
            return 200, {"message": "Directory successfully inserted.", "id": did, "name": body["name"],
                         "parentID": parent}
        if len(rest) == 1 and method == "PUT" and query.get("operation") == "move":
            if rest[0] not in self.directories:
                return 404, {"message": "Directory does not exist"}
            results = []
            for item in body if isinstance(body, list) else []:
                oid, kind = str(item.get("id")), item.get("type")
                if kind == "tc" and oid in self.devices:
                    self.devices[oid].parent_id = rest[0]
                    results.append({"id": oid, "results": "successful"})
                elif kind == "tcdirectory" and oid in self.directories:
                    self.directories[oid]["parentID"] = rest[0]
                    results.append({"id": oid, "results": "successful"})
                else:
                    results.append({"id": oid, "results": "does_not_exist"})
            return 200, results
        return 404, {"message": "no such resource"}

    def _profiles(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, [{"id": p.id, "name": p.name, "firmwareID": p.firmware_id, "isMasterProfile": False,
                          "overridesSessions": False, "parentID": "-1", "movedToBin": False, "objectType": "profile"}
                         for p in self.profiles.values()]
        profile = self.profiles.get(rest[0]) if rest else None
        if profile is None:
            return 404, {"message": "Profile does not exist"}
        if rest[1:] == ["assignments", "thinclients"]:
            if method == "GET":
                return 200, [self._assignment(pid, tc) for pid, tc in sorted(self.assignments) if pid == profile.id]
            if method in ("POST", "PUT"):
                count = 0
                for item in body if isinstance(body, list) else []:
                    receiver = str(item.get("receiver", {}).get("id"))
                    if item.get("receiver", {}).get("type") == "tc" and receiver in self.devices:
                        self.assignments.add((profile.id, receiver))
                        count += 1
                return 200, {"message": f"{count} asssignments successfully assigned"}  # sic, as UMS says it
        if len(rest) == 4 and rest[1:3] == ["assignments", "thinclients"] and method == "DELETE":
            if (profile.id, rest[3]) not in self.assignments:
                return 404, {"message": "Assignment does not exist"}
            self.assignments.discard((profile.id, rest[3]))
            return 200, {"message": "deassignment successful"}
        return 404, {"message": "no such resource"}

    def _assignment(self, pid: str, tc: str) -> dict[str, Any]:
        return {"assignee": {"id": pid, "type": "profile"}, "receiver": {"id": tc, "type": "tc"},
                "assignmentPosition": 0}


def _endpoint(method: str, path: str, query: dict[str, str]) -> str:
    name = "/".join("{id}" if p.isdigit() else p for p in path.split("/") if p)
    keep = {k: v for k, v in query.items() if k in ("command", "operation", "facets")}
    return f"{method} {name}" + ("?" + "&".join(f"{k}={v}" for k, v in sorted(keep.items())) if keep else "")


class _Server(HandshakeInRequestThread, ThreadingHTTPServer):
    daemon_threads = True


def _handler(lab: ImiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real UMS

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            path = url.path
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not path.startswith("/umsapi/v3/"):
                return self._send(404, {"message": "not an IMI v3 path"})
            path = path[len("/umsapi/v3/"):]
            with lab.lock:
                lab.requests[_endpoint(method, path, query)] += 1
            if lab.latency:
                time.sleep(lab.latency)
            if path.strip("/") == "login" and method == "POST":
                return self._login()
            session = self._session()
            if session is None:
                return self._send(401, {"message": "Unauthorized: log in first"})
            if path.strip("/") == "logout" and method == "POST":
                with lab.lock:
                    lab.sessions.pop(session, None)
                return self._send(200, {"message": "Logout successful"})
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                return self._send(400, {"message": "request body is not JSON"})
            status, answer = lab.handle(method, path, query, body)
            self._send(status, answer)

        def _login(self) -> None:
            auth = self.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
            except ValueError:
                user = password = ""
            if not auth.startswith("Basic ") or (user, password) != (lab.username, lab.password):
                return self._send(401, {"message": "Invalid Login"})
            session = secrets.token_hex(16).upper()
            with lab.lock:
                lab.sessions[session] = time.monotonic() + lab.session_ttl
                lab.logins += 1
            self._send(200, {"message": f"JSESSIONID={session}"},
                       {"Set-Cookie": f"JSESSIONID={session}; Path=/umsapi/; Secure; HttpOnly"})

        def _session(self) -> str | None:
            for part in (self.headers.get("Cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "JSESSIONID":
                    with lab.lock:
                        expiry = lab.sessions.get(value)
                        if expiry is not None and expiry > time.monotonic():
                            return value
            return None

        def _send(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


def thin_client_params(lab: ImiServer, device: Device, *, location: str = "HST-001",
                       location_name: str = "Holstebro Rådhus", target_profile: str = "igel-citrix-2026",
                       current_profile: str | None = "igel-citrix-2022", firmware: str | None = "12.6.1",
                       **extra: Any) -> dict[str, Any]:
    """The params bigbang's plan gives a thin client's steps (see plan._thin_client_plan)."""
    mac = ":".join(device.mac[i:i + 2] for i in range(0, 12, 2)).lower()
    params: dict[str, Any] = {"location": location, "location_name": location_name, "mac": mac, "address": device.name,
              "current_profile": current_profile, "target_profile": target_profile, "firmware": firmware,
              "storefront_url": None, "settings": {}, "hostname": f"{location.lower()}-tc-{device.id}", "vars": {}}
    params.update(extra)
    return params


def populate(lab: ImiServer, count: int, *, prefix: str = "tc", mac_base: int = 0x00E0C5000000) -> list[Device]:
    """`count` thin clients on the old profile at the root, and the old and new profiles (new: firmware 12.6.1)."""
    if not any(p.name == "igel-citrix-2022" for p in lab.profiles.values()):
        lab.add_profile("igel-citrix-2022")
        lab.add_profile("igel-citrix-2026", firmware_update="2")
    start = len(lab.devices)
    return [lab.add_device(f"{mac_base + start + i:012X}", f"{prefix}-{start + i:04d}", profile="igel-citrix-2022")
            for i in range(count)]


@pytest.fixture
def imi_server():
    lab = ImiServer()
    yield lab
    lab.stop()
