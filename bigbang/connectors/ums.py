"""IGEL UMS connector: IGEL thin clients reassigned through UMS's IMI REST API v3.

tc.reassign finds the device in UMS by MAC (or `vars.ums_id`), moves it into its location's
directory (created if missing), assigns the target profile and removes the old one, sends
the settings, reboots it and waits until it has contacted UMS after the reboot and is
online; then it checks directory, profiles and firmware. It does only what differs, so a
re-run changes nothing and a retry after an offline device only sends settings and reboots.
tc.verify reads the same state and reports expected against found, for defect tracking.

The HTTP side (one login per run, 401 renewal, TLS, batching, the in-flight bound) is
`bigbang.connectors.imi`. Here: what a reassignment is, and the run-long caches that
keep 1,500 devices from costing 1,500 lookups (one listing of thin clients, profiles,
directories and firmwares, refreshed when something asked for is missing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from bigbang.connectors._commands import record_substep
from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.connectors.imi import ImiEndpoint, ImiNotFound, ImiSession, MicroBatcher
from bigbang.errors import ConfigError, ConnectorError
from bigbang.inventory.model import SecretRef

log = logging.getLogger("bigbang.ums")
T = TypeVar("T")


class UmsSettings(BaseModel):
    """How to reach IGEL UMS's IMI API. Certificates are verified unless `insecure: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="UMS server host name or address")
    port: int = Field(8443, ge=1, le=65535, description="IMI port (UMS web server)")
    username: SecretRef | str = Field(description="IMI user (text or a reference)")
    password: SecretRef = Field(description="reference to the password: {env: VAR} or {prefect_secret: NAME}")
    ca_file: str | None = Field(None, description="PEM file of CAs to trust instead of the system store")
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    directory_name: str = Field("{location} {location_name}",
                                description="name of each location's thin-client directory ({location}, {location_name})")
    batch_window: float = Field(0.05, ge=0, le=5, description="seconds to collect concurrent commands into one request")
    max_batch: int = Field(500, ge=1, le=10000, description="most thin clients in one batched request")
    max_in_flight: int = Field(8, ge=1, le=256, description="most IMI requests at a time")
    connect_timeout: float = Field(10, gt=0)
    request_timeout: float = Field(60, gt=0, description="seconds to wait for one IMI answer")
    reboot_timeout: float = Field(600, gt=0, description="seconds to wait for a thin client to report back after reboot")
    reboot_poll: float = Field(5, gt=0, description="seconds between looks at a rebooting thin client")


def normalize_mac(mac: str) -> str:
    """UMS spells MACs as 12 upper-case hex digits (00E0C54DCB8E)."""
    return "".join(ch for ch in str(mac) if ch.isalnum()).upper()


class _Index(Generic[T]):
    """A run-long copy of one IMI listing, fetched again when a key is missing from a copy made
    before the question was asked (concurrent misses share one fetch)."""

    def __init__(self, fetch: Callable[[], dict[str, T]]):
        self._fetch = fetch
        self._items: dict[str, T] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        asked = time.monotonic()
        with self._lock:
            if key not in self._items and self._fetched_at < asked:
                self._fetched_at = time.monotonic()
                self._items = self._fetch()
            return self._items.get(key)

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value

    def items(self) -> list[tuple[str, T]]:
        """Everything in the copy (fetched first if there is none yet)."""
        with self._lock:
            if self._fetched_at == float("-inf"):
                self._fetched_at = time.monotonic()
                self._items = self._fetch()
            return list(self._items.items())


class UmsConnector:
    name: ClassVar[str] = "ums"

    def __init__(self, settings: UmsSettings, context: ConnectorContext):
        self.settings = settings
        self.context = context
        s = settings
        if s.ca_file and not s.insecure and not Path(s.ca_file).expanduser().is_file():
            raise ConfigError(f"connectors.ums.ca_file {s.ca_file} does not exist",
                              hint="point it at the PEM file of the CA that issued the UMS certificate")
        verify: bool | str = False if s.insecure else (str(Path(s.ca_file).expanduser()) if s.ca_file else True)
        self.imi = ImiSession(ImiEndpoint(
            host=s.host, port=s.port, username=context.resolve_secret(s.username),
            password=context.resolve_secret(s.password), verify=verify, connect_timeout=s.connect_timeout,
            request_timeout=s.request_timeout, max_in_flight=s.max_in_flight))
        self.batcher = MicroBatcher(self._send_batch, window=s.batch_window, max_items=s.max_batch)
        self._devices_by_mac: _Index[dict[str, Any]] = _Index(lambda: self._fetch_devices()[0])
        self._devices_by_id: dict[str, dict[str, Any]] = {}
        self._profiles: _Index[str] = _Index(self._fetch_profiles)
        self._directories: _Index[str] = _Index(self._fetch_directories)
        self._firmwares: _Index[str] = _Index(self._fetch_firmwares)
        self._create_lock = threading.Lock()
        self._pending_reboot: set[str] = set()  # changed in UMS, not yet rebooted (survives retries, not a resume)

    # ------------------------------------------------------------ protocol
    def run(self, action: Action) -> Outcome:
        done: list[str] = []
        try:
            if action.kind == "tc.reassign":
                return self._reassign(action, done)
            if action.kind == "tc.verify":
                return self._verify(action)
            return Outcome.failed(f"the ums connector cannot run {action.kind}", transient=False)
        except ConnectorError as exc:
            return Outcome(ok=False, changed=bool(done), transient=exc.transient, message=f"{action.target}: {exc}",
                           facts={"substeps": done, "mac": action.params.get("mac"), "ums": self.settings.host})

    def close(self) -> None:
        self.imi.logout()

    # ------------------------------------------------------------ steps
    def expected(self, params: Any) -> dict[str, Any]:
        return {"directory": self.directory_name(params), "profile": params.get("target_profile"),
                "firmware": params.get("firmware"), "online": True}

    def directory_name(self, params: Any) -> str:
        try:
            return self.settings.directory_name.format(location=params.get("location") or "",
                                                       location_name=params.get("location_name") or "").strip()
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"connectors.ums.directory_name {self.settings.directory_name!r}: {exc}",
                              hint="use {location} and {location_name}") from None

    def _reassign(self, action: Action, done: list[str]) -> Outcome:
        p = action.params
        expected = self.expected(p)
        device = self.device(p)
        tc_id = str(device["id"])
        target = self._profile_id(str(p.get("target_profile")))
        old_name = p.get("current_profile")
        old = self._profiles.get(str(old_name)) if old_name and old_name != p.get("target_profile") else None
        directory = self.directory_id(expected["directory"])

        def note(message: str) -> None:
            done.append(message)
            record_substep(self.context, action.step_id, message)

        if str(device.get("parentID")) != directory:
            self._move(tc_id, directory)
            note(f"moved to {expected['directory']}")
        assigned = self._assigned(tc_id)
        if old is not None and old in assigned:
            self._unassign(tc_id, old)
            assigned.discard(old)
            note(f"unassigned {old_name}")
        if target not in assigned:
            self._assign(tc_id, target)
            assigned.add(target)
            note(f"assigned {p.get('target_profile')}")
        if not done and tc_id not in self._pending_reboot:
            state = self.state(tc_id)
            mismatches = _mismatches(expected, state, old_name)
            if not [m for m in mismatches if not m.startswith("online:")]:  # offline: it applies them at boot
                return Outcome(ok=True, changed=False, facts=self._facts(p, tc_id, expected, state, done, mismatches),
                               message=f"already in {expected['directory']} with {expected['profile']}"
                                       + ("" if state["online"] else " (offline now)"))
            # UMS is right but the device is not (firmware, old profile): settings and a reboot fix that
        self._pending_reboot.add(tc_id)
        self._command(tc_id, "settings2tc", action.target)
        note("settings sent")
        rebooted_at = self._command(tc_id, "reboot", action.target)
        state = self._wait_for_reboot(tc_id, rebooted_at, action.target, assigned)
        self._pending_reboot.discard(tc_id)
        note("rebooted")
        mismatches = _mismatches(expected, state, old_name)
        facts = self._facts(p, tc_id, expected, state, done, mismatches)
        if mismatches:
            return Outcome(ok=False, changed=True, transient=False, facts=facts,
                           message=f"{action.target} after reassignment: " + "; ".join(mismatches))
        return Outcome(ok=True, changed=True, facts=facts,
                       message=f"{', '.join(done)}; reports {expected['profile']} in {expected['directory']}")

    def _verify(self, action: Action) -> Outcome:
        p = action.params
        expected = self.expected(p)
        tc_id = str(self.device(p)["id"])
        state = self.state(tc_id)
        mismatches = _mismatches(expected, state, p.get("current_profile"))
        facts = self._facts(p, tc_id, expected, state, [], mismatches)
        facts.update(profile=state["profile"], hostname=state["hostname"], firmware=state["firmware"])
        if mismatches:
            # offline is worth a later look; a wrong profile or directory is not fixed by waiting
            transient = all(m.startswith("online:") for m in mismatches)
            return Outcome(ok=False, transient=transient, facts=facts,
                           message=f"{action.target}: " + "; ".join(mismatches))
        return Outcome(ok=True, facts=facts, message=f"reports {state['profile']} in {state['directory']}, "
                                                     f"firmware {state['firmware']}, online")

    def _facts(self, params: Any, tc_id: str, expected: dict[str, Any], state: dict[str, Any], done: list[str],
               mismatches: list[str]) -> dict[str, Any]:
        return {"substeps": list(done), "expected": expected, "found": state, "mismatches": mismatches,
                "ums_id": tc_id, "mac": params.get("mac")}

    # ------------------------------------------------------------ device state
    def device(self, params: Any) -> dict[str, Any]:
        """The thin client's entry in the run's listing, by `vars.ums_id` or MAC."""
        ums_id = (params.get("vars") or {}).get("ums_id")
        mac = normalize_mac(params.get("mac") or "")
        if ums_id is not None:  # known id: no listing needed, one look-up per run
            found = self._devices_by_id.get(str(ums_id)) or self._fetch_device(str(ums_id))
        else:
            found = self._devices_by_mac.get(mac) if mac else None
        if found is None:
            raise ConnectorError(f"UMS {self.settings.host} knows no thin client with MAC {params.get('mac')}",
                                 transient=False, hint="register the device in UMS, or fix its MAC in the inventory")
        if found.get("movedToBin"):
            raise ConnectorError(f"the thin client with MAC {params.get('mac')} is in the UMS recycle bin",
                                 transient=False, hint="restore it in the UMS console")
        return found

    def state(self, tc_id: str) -> dict[str, Any]:
        """What UMS reports now: directory, assigned profiles, firmware, online and last contact."""
        details = self.imi.call("GET", f"thinclients/{tc_id}", params={"facets": "details"})
        online = self.imi.call("GET", f"thinclients/{tc_id}", params={"facets": "online"}).get("online")
        return self._state_from(details, bool(online))

    def _state_from(self, details: dict[str, Any], online: bool, profile_ids: set[str] | None = None) -> dict[str, Any]:
        """State from a details answer; the assigned profiles are read unless this run just set them."""
        tc_id = str(details["id"])
        self._remember_device(details)
        if profile_ids is None:
            profile_ids = self._assigned(tc_id)
        names = {pid: name for name, pid in self._profiles.items()}
        profiles = sorted(names.get(pid, f"id {pid}") for pid in profile_ids)
        parent = str(details.get("parentID"))
        directories = {did: name for name, did in self._directories.items()}
        firmware_id = str(details.get("firmwareID"))
        firmware = self._firmwares.get(firmware_id)
        return {"directory": directories.get(parent, "(root)" if parent == "-1" else f"id {parent}"),
                "profiles": profiles, "profile": profiles[0] if len(profiles) == 1 else ", ".join(profiles) or None,
                "firmware": firmware or f"id {firmware_id}", "online": online,
                "last_contact": details.get("lastContact"), "last_boot": details.get("lastBoottime"),
                "hostname": details.get("networkName") or details.get("name"), "ums_name": details.get("name")}

    def _wait_for_reboot(self, tc_id: str, rebooted_at: int | None, target: str,
                         assigned: set[str]) -> dict[str, Any]:
        """Look until the device has booted since the reboot command, contacted UMS since, and is online."""
        s = self.settings
        deadline = time.monotonic() + s.reboot_timeout
        last = "no boot since the reboot command"
        while True:
            time.sleep(min(s.reboot_poll, max(0.0, deadline - time.monotonic())))
            details = self.imi.call("GET", f"thinclients/{tc_id}", params={"facets": "details"})
            # booted after the command, and heard from since: the details already show the new boot
            # (lastContact alone is not proof: UMS notes a contact when it sends the command itself)
            booted, contact = _millis(details.get("lastBoottime")), _millis(details.get("lastContact"))
            if booted is not None and (rebooted_at is None or booted > rebooted_at) and (contact or 0) >= booted:
                online = self.imi.call("GET", f"thinclients/{tc_id}", params={"facets": "online"}).get("online")
                if online:
                    return self._state_from(details, True, assigned)
                last = "contacted UMS after the reboot, offline again"
            if time.monotonic() >= deadline:
                raise ConnectorError(f"{target} did not report back to UMS within {s.reboot_timeout:g} s after the "
                                     f"reboot ({last}; last boot {details.get('lastBoottime')}, last contact "
                                     f"{details.get('lastContact')})", transient=True,
                                     hint="is it powered and on the network? a retry reboots it again")

    # ------------------------------------------------------------ operations (batched where IMI takes a list)
    def _send_batch(self, key: Hashable, items: list[Any]) -> Any:
        method, path, params = cast(tuple[str, str, tuple[tuple[str, str], ...]], key)
        return self.imi.call(method, path, params=dict(params), body=items)

    def _command(self, tc_id: str, command: str, target: str) -> int | None:
        """Send a thin-client command (batched); its UMS execution time in ms. Offline devices fail transiently."""
        answer = self.batcher.submit(("POST", "thinclients", (("command", command),)), {"id": tc_id, "type": "tc"})
        entry = next((e for e in _entries(answer, "CommandExecList") if str(e.get("id")) == tc_id), None)
        if entry is None:
            raise ConnectorError(f"UMS did not report on the {command} command for thin client {tc_id}", transient=True)
        if str(entry.get("state", "")).upper() != "SUCCESS":
            raise ConnectorError(f"{target} is offline or unreachable: UMS could not send {command} "
                                 f"({entry.get('state')}: {entry.get('message')})", transient=True,
                                 hint="power it on or check its network; the step is retried")
        return _millis(entry.get("exectime"))

    def _move(self, tc_id: str, directory: str) -> None:
        answer = self.batcher.submit(("PUT", f"directories/tcdirectories/{directory}", (("operation", "move"),)),
                                     {"id": tc_id, "type": "tc"})
        entry = next((e for e in _entries(answer) if str(e.get("id")) == tc_id), None)
        if entry is None or str(entry.get("results")).lower() != "successful":
            raise ConnectorError(f"UMS did not move thin client {tc_id} into directory {directory}: "
                                 f"{(entry or {}).get('results', 'no result')}", transient=False)
        cached = self._devices_by_id.get(tc_id)
        if cached is not None:
            cached["parentID"] = directory

    def _assign(self, tc_id: str, profile: str) -> None:
        self.batcher.submit(("POST", f"profiles/{profile}/assignments/thinclients/", ()),
                            {"assignee": {"id": profile, "type": "profile"}, "receiver": {"id": tc_id, "type": "tc"}})

    def _unassign(self, tc_id: str, profile: str) -> None:
        try:
            self.imi.call("DELETE", f"profiles/{profile}/assignments/thinclients/{tc_id}")
        except ImiNotFound:  # already gone: what we wanted
            pass

    def _assigned(self, tc_id: str) -> set[str]:
        """Ids of the profiles directly assigned to the thin client, as UMS has them now."""
        answer = self.imi.call("GET", f"thinclients/{tc_id}/assignments/profiles")
        return {str(a["assignee"]["id"]) for a in _entries(answer) if a.get("assignee", {}).get("type") == "profile"}

    def directory_id(self, name: str) -> str:
        """The location's directory, created at the root when UMS has none of that name."""
        found = self._directories.get(name)
        if found is not None:
            return found
        with self._create_lock:  # two devices of a new location: one directory
            found = dict(self._directories.items()).get(name)
            if found is None:
                created = self.imi.call("PUT", "directories/tcdirectories", body={"name": name})
                found = str(created["id"])
                self._directories.put(name, found)
                log.info("created UMS directory %s (id %s)", name, found)
            return found

    def _profile_id(self, name: str) -> str:
        found = self._profiles.get(name)
        if found is None:
            raise ConnectorError(f"UMS {self.settings.host} has no profile named {name!r}", transient=False,
                                 hint="create it in UMS, or fix thin_client_profiles in the inventory")
        return found

    # ------------------------------------------------------------ listings
    def _fetch_devices(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        listing = self.imi.call("GET", "thinclients", params={"facets": "details"})
        by_mac: dict[str, dict[str, Any]] = {}
        for entry in _entries(listing):
            device = self._remember_device(entry)
            if not device.get("movedToBin") or normalize_mac(device.get("mac", "")) not in by_mac:
                by_mac[normalize_mac(device.get("mac", ""))] = device
        return by_mac, self._devices_by_id

    def _fetch_device(self, tc_id: str) -> dict[str, Any] | None:
        try:
            return self._remember_device(self.imi.call("GET", f"thinclients/{tc_id}"))
        except ImiNotFound:
            return None

    def _remember_device(self, entry: dict[str, Any]) -> dict[str, Any]:
        tc_id = str(entry["id"])
        fresh = {k: entry.get(k) for k in ("mac", "name", "firmwareID", "movedToBin")}
        fresh.update(id=tc_id, parentID=str(entry.get("parentID")))
        device = self._devices_by_id.setdefault(tc_id, fresh)
        device.update(fresh)  # in place: the MAC index holds the same dict
        return device

    def _fetch_profiles(self) -> dict[str, str]:
        return {str(e["name"]): str(e["id"]) for e in _entries(self.imi.call("GET", "profiles"))
                if not e.get("movedToBin")}

    def _fetch_directories(self) -> dict[str, str]:
        return {str(e["name"]): str(e["id"]) for e in _entries(self.imi.call("GET", "directories/tcdirectories"))
                if not e.get("movedToBin")}

    def _fetch_firmwares(self) -> dict[str, str]:
        return {str(e["id"]): str(e.get("version")) for e in _entries(self.imi.call("GET", "firmwares"))}


def _entries(answer: Any, key: str | None = None) -> list[dict[str, Any]]:
    """The list in an IMI answer: a bare list, or a list under `key` (or under the answer's only key)."""
    if isinstance(answer, list):
        return [e for e in answer if isinstance(e, dict)]
    if isinstance(answer, dict):
        if key is not None:
            return _entries(answer.get(key, []))
        lists = [v for v in answer.values() if isinstance(v, list)]
        if len(lists) == 1:  # e.g. {"FwResourceList": [...]}
            return _entries(lists[0])
    return []


def _millis(value: Any) -> int | None:
    """A UMS time (epoch milliseconds, or ISO 8601 text) as epoch milliseconds."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def firmware_matches(expected: str, found: str) -> bool:
    """Versions compared part by part as numbers, the expected one a prefix: '12.6.1' matches
    '12.06.01' and '12.6.1.100', not '12.6.10' or '12.7'."""
    def parts(version: str) -> list[str]:
        return [str(int(p)) if p.isdigit() else p.lower() for p in str(version).replace("-", ".").split(".") if p]

    want, have = parts(expected), parts(found)
    return bool(want) and have[: len(want)] == want


def _mismatches(expected: dict[str, Any], state: dict[str, Any], old_profile: str | None) -> list[str]:
    problems = []
    if state["directory"] != expected["directory"]:
        problems.append(f"directory: expected {expected['directory']!r}, found {state['directory']!r}")
    if expected["profile"] not in state["profiles"]:
        problems.append(f"profile: expected {expected['profile']!r}, found {state['profile']!r}")
    if old_profile and old_profile != expected["profile"] and old_profile in state["profiles"]:
        problems.append(f"profile: {old_profile!r} is still assigned")
    if expected["firmware"] and not firmware_matches(expected["firmware"], state["firmware"]):
        problems.append(f"firmware: expected {expected['firmware']!r}, found {state['firmware']!r}")
    if not state["online"]:
        problems.append("online: expected True, found False")
    return problems


def create(settings: UmsSettings, context: ConnectorContext) -> UmsConnector:
    return UmsConnector(settings, context)
