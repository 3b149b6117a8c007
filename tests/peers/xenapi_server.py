"""A XenAPI pool for tests: XML-RPC over HTTPS, written from the XenAPI reference (xapi-project/xen-api).

One `XapiPool` is a pool database served by two hosts on loopback: the master (127.0.N.1) and a
member (127.0.N.2), same port, one self-signed CA (`ca_file`) covering both. Logging in to the
member answers HOST_IS_SLAVE with the master's address, as xapi does. Every answer has XenAPI's
shape, `{'Status': 'Success', 'Value': ...}` or `{'Status': 'Failure', 'ErrorDescription': [CODE,
...]}`; int64 values travel as strings, refs as `OpaqueRef:<uuid>`. `Async.*` calls return a task
that finishes after `task_delay` seconds. A running VM reports guest metrics with the IP it was
customised with (xenstore_data `vm-data/ip`, or a DHCP-style address) `boot_delay` seconds after
it started. The classes and fields are those the xen connector and an independent client use:
pool, host, host_metrics, SR, network, VM, VM_metrics, VM_guest_metrics, VDI, VBD, VIF, task, session.

`calls` logs every method (with the host that answered), `fail(...)` injects a XenAPI failure,
`no_ip(name)` makes a guest never report an address. Tests read the pool's state back with
`vm(name)`, `disks(name)` and `records(cls)`.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import os
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from tests.peers import free_port
from tests.peers.tls import HandshakeInRequestThread, tls_listener

GiB = 1024 ** 3
NULL = "OpaqueRef:NULL"
USER = "root"
PASSWORD = "xen-s3cret!"
PASSWORD_ENV = "BIGBANG_TEST_XEN_PASSWORD"

# The fields a client may set with <class>.set_<field> (the rest are read-only or have their own calls).
SETTABLE = {
    "VM": {"name_label", "name_description", "other_config", "xenstore_data", "is_a_template", "affinity"},
    "VDI": {"name_label", "name_description", "other_config"},
    "SR": {"name_label", "name_description", "other_config"},
    "network": {"name_label", "name_description", "other_config"},
    "pool": {"name_label", "name_description", "other_config"},
    "VIF": {"other_config"}, "VBD": {"other_config"}, "host": {"other_config"},
}


class Failure(Exception):
    """A XenAPI failure: the ErrorDescription list."""

    def __init__(self, *description: Any):
        super().__init__(description[0])
        self.description = [str(d) for d in description]


def _ref() -> str:
    return f"OpaqueRef:{uuid.uuid4()}"


def _now() -> xmlrpc.client.DateTime:
    """A XenAPI dateTime (XML-RPC dateTime.iso8601 in UTC)."""
    return xmlrpc.client.DateTime(datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H:%M:%SZ"))


class XapiPool:
    """A pool's database and its two hosts' XML-RPC servers."""

    def __init__(self, name: str = "cl-prod-02", *, subnet: int = 61, srs: dict[str, int] | None = None,
                 networks: tuple[str, ...] = ("vlan110-servers", "vlan120-citrix", "vlan130-mgmt"),
                 templates: dict[str, tuple[int, str]] | None = None, host_memory_gb: int = 512,
                 task_delay: float = 0.05, boot_delay: float = 0.15, directory: Path | None = None,
                 port: int | None = None):
        self.name = name
        self.subnet = subnet
        self.task_delay = task_delay
        self.boot_delay = boot_delay
        self.lock = threading.RLock()
        self.db: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in (
            "pool", "host", "host_metrics", "SR", "network", "VM", "VM_metrics", "VM_guest_metrics", "VDI", "VBD",
            "VIF", "task", "session")}
        self.calls: list[tuple[str, str]] = []  # (host name, method) of every request
        self._faults: list[tuple[str, list[str], Callable[[tuple], bool], list[int]]] = []
        self._no_ip: set[str] = set()
        self._booted: dict[str, float] = {}  # VM ref -> monotonic start time
        self._dhcp = 0
        self.master_address = f"127.0.{subnet}.1"
        self.member_address = f"127.0.{subnet}.2"
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="xapi-") if directory is None else None
        self.dir = Path(self._tmp.name if self._tmp else directory)  # type: ignore[arg-type]
        self.ca_file, cert, key = make_certificates(self.dir, [self.master_address, self.member_address], name)
        self._seed(srs or {"ds-ssd-01": 20_000, "ds-nl-01": 50_000}, networks,
                   templates or {"tpl-win2022": (60, "ds-ssd-01"), "tpl-rhel9": (20, "ds-ssd-01"),
                                 "tpl-win2022-vda": (80, "ds-ssd-01")}, host_memory_gb)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._servers = []
        for host_ref, address in ((self.master_ref, self.master_address), (self.member_ref, self.member_address)):
            server = _Server((address, self.port), _Handler, logRequests=False, allow_none=True)
            server.socket = tls_listener(context, server.socket)
            server.register_instance(_Dispatcher(self, host_ref))
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                             name=f"xapi-{address}").start()
            self._servers.append(server)

    # ------------------------------------------------------------ setup
    def _add(self, cls: str, record: dict[str, Any], ref: str | None = None) -> str:
        ref = ref or _ref()
        record.setdefault("uuid", str(uuid.uuid4()))
        record.setdefault("other_config", {})
        self.db[cls][ref] = record
        return ref

    def _seed(self, srs: dict[str, int], networks: tuple[str, ...], templates: dict[str, tuple[int, str]],
              memory_gb: int) -> None:
        hosts = []
        for i, address in enumerate((self.master_address, self.member_address), start=1):
            metrics = self._add("host_metrics", {"memory_total": str(memory_gb * GiB), "live": True})
            hosts.append(self._add("host", {"name_label": f"xen-{self.subnet}-{i:02d}", "address": address,
                                            "hostname": f"xen-{self.subnet}-{i:02d}", "enabled": True,
                                            "metrics": metrics, "resident_VMs": [], "API_version_major": "2",
                                            "API_version_minor": "20"}))
        self.master_ref, self.member_ref = hosts
        self.pool_ref = self._add("pool", {"name_label": self.name, "name_description": "", "master": hosts[0],
                                           "default_SR": NULL})
        for name, size_gb in srs.items():
            self._add("SR", {"name_label": name, "name_description": "", "type": "lvmoiscsi", "shared": True,
                             "content_type": "", "physical_size": str(size_gb * GiB), "physical_utilisation": "0",
                             "virtual_allocation": "0", "VDIs": []})
        self._add("SR", {"name_label": "XenServer Tools", "type": "iso", "content_type": "iso", "shared": True,
                         "physical_size": "0", "physical_utilisation": "0", "virtual_allocation": "0", "VDIs": []})
        for name in networks:
            self._add("network", {"name_label": name, "name_description": "", "bridge": f"xenbr-{name}",
                                  "VIFs": [], "MTU": "1500"})
        for name, (disk_gb, sr_name) in templates.items():
            vm = self._new_vm(name, template=True, cpu=2, memory=4 * GiB, os="windows" if "win" in name else "linux")
            self._attach_disk(vm, self.sr(sr_name), disk_gb * GiB, "0", bootable=True)
        self.db["VM"][self._add("VM", self._vm_record("Control domain on host", False, 4, 4 * GiB, "linux"))][
            "is_control_domain"] = True

    def _vm_record(self, name: str, template: bool, cpu: int, memory: int, os: str) -> dict[str, Any]:
        return {"name_label": name, "name_description": "", "is_a_template": template, "is_a_snapshot": False,
                "is_control_domain": False, "snapshot_of": NULL, "snapshots": [], "snapshot_time": _now(),
                "power_state": "Halted", "VCPUs_max": str(cpu), "VCPUs_at_startup": str(cpu),
                "memory_static_min": str(min(memory, GiB)), "memory_static_max": str(memory),
                "memory_dynamic_min": str(memory), "memory_dynamic_max": str(memory), "VBDs": [], "VIFs": [],
                "guest_metrics": NULL, "metrics": NULL, "resident_on": NULL, "affinity": NULL, "xenstore_data": {},
                "other_config": {"bigbang-test-os": os}, "platform": {}, "allowed_operations": []}

    def _new_vm(self, name: str, *, template: bool, cpu: int, memory: int, os: str = "linux") -> str:
        vm = self._add("VM", self._vm_record(name, template, cpu, memory, os))
        self.db["VM"][vm]["metrics"] = self._add("VM_metrics", {"VCPUs_number": str(cpu), "memory_actual": "0",
                                                                "start_time": _now()})
        return vm

    def _attach_disk(self, vm: str, sr: str, size: int, device: str, *, bootable: bool = False) -> str:
        vdi = self._vdi_create({"name_label": f"{self.db['VM'][vm]['name_label']} {device}", "SR": sr,
                                "virtual_size": str(size), "type": "system" if bootable else "user",
                                "sharable": False, "read_only": False, "other_config": {}})
        self._vbd_create({"VM": vm, "VDI": vdi, "userdevice": device, "bootable": bootable, "mode": "RW",
                          "type": "Disk", "empty": False, "other_config": {}})
        return vdi

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------ for tests
    def settings(self, *, member: bool = False, **over: Any) -> dict[str, Any]:
        """connectors.xen settings that reach this pool (by default through its master)."""
        conf: dict[str, Any] = {"host": self.member_address if member else self.master_address, "port": self.port,
                                "username": USER, "password": {"env": PASSWORD_ENV}, "ca_file": self.ca_file,
                                "poll_interval": 0.1}
        conf.update(over)
        return conf

    def fail(self, method: str, *description: str, when: Callable[[tuple], bool] | None = None,
             times: int = 1) -> None:
        """The next `times` calls of `method` (also as Async.`method`) whose arguments (without the session)
        satisfy `when` fail with `description`; an Async call's task fails with it."""
        with self.lock:
            self._faults.append((method, list(description), when or (lambda _p: True), [times]))

    def no_ip(self, name: str) -> None:
        self._no_ip.add(name)

    def sr(self, name: str) -> str:
        return next(r for r, rec in self.db["SR"].items() if rec["name_label"] == name)

    def network(self, name: str) -> str:
        return next(r for r, rec in self.db["network"].items() if rec["name_label"] == name)

    def vm_ref(self, name: str) -> str | None:
        with self.lock:
            return next((r for r, rec in self.db["VM"].items() if rec["name_label"] == name
                         and not rec["is_a_template"] and not rec["is_a_snapshot"]), None)

    def vm(self, name: str) -> dict[str, Any] | None:
        """A copy of the VM's record (None when the pool has no such VM)."""
        with self.lock:
            self._tick()
            ref = self.vm_ref(name)
            return copy.deepcopy(self.db["VM"][ref]) if ref else None

    def disks(self, name: str) -> list[tuple[str, int, str]]:
        """(userdevice, size in GiB, SR name) of the VM's disks, in device order."""
        with self.lock:
            ref = self.vm_ref(name)
            out = []
            for vbd in self.db["VM"][ref]["VBDs"] if ref else []:
                rec = self.db["VBD"][vbd]
                if rec["type"] == "Disk" and rec["VDI"] in self.db["VDI"]:
                    vdi = self.db["VDI"][rec["VDI"]]
                    out.append((rec["userdevice"], int(vdi["virtual_size"]) // GiB,
                                self.db["SR"][vdi["SR"]]["name_label"]))
            return sorted(out)

    def vif_networks(self, name: str) -> list[str]:
        with self.lock:
            ref = self.vm_ref(name)
            vifs = sorted((self.db["VIF"][v] for v in self.db["VM"][ref]["VIFs"]), key=lambda v: v["device"])
            return [self.db["network"][v["network"]]["name_label"] for v in vifs]

    def snapshot_names(self, name: str) -> list[str]:
        with self.lock:
            ref = self.vm_ref(name)
            return sorted(self.db["VM"][s]["name_label"] for s in self.db["VM"][ref]["snapshots"]) if ref else []

    def records(self, cls: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.db[cls])

    def add_vm(self, name: str, *, cpu: int = 2, memory_gb: int = 4, memory_mb: int | None = None,
               disks_gb: tuple[float, ...] = (40,), sr: str = "ds-ssd-01", network: str = "vlan110-servers",
               running: bool = True, ip: str | None = None) -> str:
        """A VM that exists before the run (made by someone else); memory_mb wins over memory_gb."""
        memory = memory_mb * 1024 ** 2 if memory_mb is not None else memory_gb * GiB
        with self.lock:
            vm = self._new_vm(name, template=False, cpu=cpu, memory=memory, os="windows")
            for i, size in enumerate(disks_gb):
                self._attach_disk(vm, self.sr(sr), round(size * GiB), str(i), bootable=i == 0)
            self._vif_create({"VM": vm, "network": self.network(network), "device": "0", "MAC": "", "MTU": "1500",
                              "other_config": {}})
            if ip:
                self.db["VM"][vm]["xenstore_data"]["vm-data/ip"] = ip
            if running:
                self._start(vm)
            return vm

    def method_count(self, prefix: str = "") -> int:
        with self.lock:
            return sum(1 for _h, m in self.calls if m.startswith(prefix))

    # ------------------------------------------------------------ the API
    def handle(self, host: str, method: str, params: tuple) -> Any:
        with self.lock:
            self.calls.append((self.db["host"][host]["name_label"], method))
            if method == "session.login_with_password":
                self._faulty(method, params)
                return self._login(host, *params)
            if method in ("session.logout", "session.local_logout"):
                self._session(params)
                self.db["session"].pop(params[0], None)
                return ""
            self._session(params)
            args = params[1:]
            self._tick()
            if method.startswith("Async."):
                return self._async(method[len("Async."):], args)
            return self._call(method, args)

    def _login(self, host: str, user: str = "", password: str = "", *_rest: Any) -> str:
        if host != self.db["pool"][self.pool_ref]["master"]:
            raise Failure("HOST_IS_SLAVE", self.db["host"][self.db["pool"][self.pool_ref]["master"]]["address"])
        if (user, password) != (USER, PASSWORD):
            raise Failure("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
        return self._add("session", {"this_host": host, "last_active": _now(), "originator": "",
                                     "is_local_superuser": True})

    def _session(self, params: tuple) -> None:
        if not params or params[0] not in self.db["session"]:
            raise Failure("SESSION_INVALID", params[0] if params else "")

    def _async(self, method: str, args: tuple) -> str:
        self._resolve(method)  # unknown methods fail at once, as xapi does
        task = self._add("task", {"name_label": f"Async.{method}", "status": "pending", "progress": 0.0,
                                  "result": "", "error_info": [], "created": _now(), "finished": _now()})

        def finish() -> None:
            time.sleep(self.task_delay)
            with self.lock:
                record = self.db["task"].get(task)
                if record is None or record["status"] != "pending":
                    return
                try:
                    value = self._call(method, args)
                    record.update(status="success", progress=1.0, result=f"<value>{value or ''}</value>")
                except Failure as exc:
                    record.update(status="failure", progress=1.0, error_info=exc.description)
                except TypeError as exc:
                    record.update(status="failure", error_info=["MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(exc)])
                record["finished"] = _now()

        threading.Thread(target=finish, daemon=True).start()
        return task

    def _resolve(self, method: str) -> Callable[..., Any]:
        cls, _, op = method.partition(".")
        if cls not in self.db or not op:
            raise Failure("MESSAGE_METHOD_UNKNOWN", method)
        special = getattr(self, f"_op_{cls}_{op}", None)
        if special is not None:
            return special
        table = self.db[cls]

        def record_of(ref: str) -> dict[str, Any]:
            if ref not in table:
                raise Failure("HANDLE_INVALID", cls, ref)
            return table[ref]

        if op == "get_all":
            return lambda: list(table)
        if op == "get_all_records":
            return lambda: copy.deepcopy(table)
        if op == "get_record":
            return lambda ref: copy.deepcopy(record_of(ref))
        if op == "get_by_uuid":
            def by_uuid(value: str) -> str:
                found = next((r for r, rec in table.items() if rec.get("uuid") == value), None)
                if found is None:
                    raise Failure("UUID_INVALID", cls, value)
                return found
            return by_uuid
        if op == "get_by_name_label":
            return lambda label: [r for r, rec in table.items() if rec.get("name_label") == label]
        if op.startswith("get_"):
            field = op[4:]
            return lambda ref: copy.deepcopy(record_of(ref)[field]) if field in record_of(ref) else _unknown(method)
        if op.startswith("set_") and op[4:] in SETTABLE.get(cls, ()):
            def setter(ref: str, value: Any, field: str = op[4:]) -> str:
                record_of(ref)[field] = copy.deepcopy(value)
                return ""
            return setter
        for prefix in ("add_to_", "remove_from_"):
            if op.startswith(prefix) and op[len(prefix):] in SETTABLE.get(cls, ()):
                def change(ref: str, key: str, value: str = "", _add: bool = prefix == "add_to_",
                           field: str = op[len(prefix):]) -> str:
                    mapping = record_of(ref)[field]
                    if _add:
                        if key in mapping:
                            raise Failure("MAP_DUPLICATE_KEY", cls, field, ref, key)
                        mapping[key] = value
                    else:
                        mapping.pop(key, None)
                    return ""
                return change
        raise Failure("MESSAGE_METHOD_UNKNOWN", method)

    def _faulty(self, method: str, args: tuple) -> None:
        for name, description, when, left in self._faults:
            if name == method and left[0] > 0 and when(args):
                left[0] -= 1
                raise Failure(*description)

    def _call(self, method: str, args: tuple) -> Any:
        """Run one method (directly, or as an Async task's work); args without the session."""
        fn = self._resolve(method)
        self._faulty(method, args)
        try:
            return fn(*args)
        except TypeError as exc:
            if "positional argument" in str(exc):
                raise Failure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "?", str(len(args))) from None
            raise

    def _get(self, cls: str, ref: str) -> dict[str, Any]:
        if ref not in self.db[cls]:
            raise Failure("HANDLE_INVALID", cls, ref)
        return self.db[cls][ref]

    def _vm(self, ref: str, *, power: str | None = None, template_ok: bool = True) -> dict[str, Any]:
        vm = self._get("VM", ref)
        if power is not None and vm["power_state"] != power:
            raise Failure("VM_BAD_POWER_STATE", ref, power.lower(), vm["power_state"].lower())
        if not template_ok and vm["is_a_template"]:
            raise Failure("VM_IS_TEMPLATE", ref)
        return vm

    # ------------------------------------------------------------ time passes
    def _tick(self) -> None:
        """Guests that have run for boot_delay report their address (as the guest agent would)."""
        now = time.monotonic()
        for ref, started in list(self._booted.items()):
            vm = self.db["VM"].get(ref)
            if vm is None or vm["power_state"] != "Running":
                self._booted.pop(ref, None)
                continue
            if now - started < self.boot_delay or vm["guest_metrics"] != NULL:
                continue
            self._booted.pop(ref)
            if vm["name_label"] in self._no_ip:
                continue
            ip = vm["xenstore_data"].get("vm-data/ip", "dhcp")
            if ip == "dhcp":
                self._dhcp += 1
                ip = f"10.99.{self._dhcp // 250}.{self._dhcp % 250 + 1}"
            hostname = vm["xenstore_data"].get("vm-data/hostname", vm["name_label"])
            vm["guest_metrics"] = self._add("VM_guest_metrics", {
                "os_version": {"name": vm["other_config"].get("bigbang-test-os", "linux"), "hostname": hostname},
                "PV_drivers_detected": True, "PV_drivers_version": {"major": "9", "minor": "3"},
                "networks": {"0/ip": ip, "0/ipv4/0": ip}, "live": True, "last_updated": _now()})

    # ------------------------------------------------------------ VM
    def _copy_vm(self, ref: str, name: str, sr: str | None, *, snapshot: bool = False) -> str:
        src = self._get("VM", ref)
        record = copy.deepcopy(src)
        record.update(name_label=name, uuid=str(uuid.uuid4()), VBDs=[], VIFs=[], snapshots=[], power_state="Halted",
                      guest_metrics=NULL, resident_on=NULL, is_a_snapshot=snapshot,
                      snapshot_of=ref if snapshot else NULL, snapshot_time=_now())
        new = self._add("VM", record)
        record["metrics"] = self._add("VM_metrics", {"VCPUs_number": record["VCPUs_at_startup"],
                                                     "memory_actual": "0", "start_time": _now()})
        for vbd in src["VBDs"]:
            b = self.db["VBD"][vbd]
            vdi = None
            if not b["empty"] and b["VDI"] in self.db["VDI"]:
                old = self.db["VDI"][b["VDI"]]
                vdi = self._vdi_create({**copy.deepcopy(old), "name_label": f"{name} {b['userdevice']}",
                                        "SR": sr if sr and sr != NULL else old["SR"], "uuid": str(uuid.uuid4())},
                                       snapshot_of=b["VDI"] if snapshot else None)
            self._vbd_create({**copy.deepcopy(b), "VM": new, "VDI": vdi or NULL, "uuid": str(uuid.uuid4())})
        for vif in src["VIFs"]:
            v = self.db["VIF"][vif]
            self._vif_create({**copy.deepcopy(v), "VM": new, "MAC": "" if not snapshot else v["MAC"],
                              "uuid": str(uuid.uuid4())})
        return new

    def _op_VM_clone(self, vm: str, name: str) -> str:
        self._vm(vm, power="Halted")
        return self._copy_vm(vm, name, None)

    def _op_VM_copy(self, vm: str, name: str, sr: str) -> str:
        self._vm(vm, power="Halted")
        if sr != NULL:
            self._get("SR", sr)
        return self._copy_vm(vm, name, sr)

    def _op_VM_provision(self, vm: str) -> str:
        record = self._vm(vm)
        if not record["is_a_template"]:
            raise Failure("PROVISION_ONLY_ALLOWED_ON_TEMPLATE")
        record["other_config"].pop("disks", None)
        return ""

    def _op_VM_set_is_a_template(self, vm: str, value: bool) -> str:
        self._vm(vm)["is_a_template"] = bool(value)
        return ""

    def _op_VM_set_VCPUs_max(self, vm: str, value: str) -> str:
        record = self._vm(vm, power="Halted")
        if int(value) < int(record["VCPUs_at_startup"]):
            raise Failure("VALUE_NOT_SUPPORTED", "VCPU_max", str(value), "VCPU_max must be >= VCPU_at_startup")
        record["VCPUs_max"] = str(value)
        return ""

    def _op_VM_set_VCPUs_at_startup(self, vm: str, value: str) -> str:
        record = self._vm(vm)
        if not 1 <= int(value) <= int(record["VCPUs_max"]):
            raise Failure("VALUE_NOT_SUPPORTED", "VCPU_at_startup", str(value),
                          "value must be between 1 and VCPU_max")
        record["VCPUs_at_startup"] = str(value)
        return ""

    def _op_VM_set_memory_limits(self, vm: str, static_min: str, static_max: str, dynamic_min: str,
                                 dynamic_max: str) -> str:
        record = self._vm(vm, power="Halted")
        values = [int(v) for v in (static_min, dynamic_min, dynamic_max, static_max)]
        if values != sorted(values):
            raise Failure("MEMORY_CONSTRAINT_VIOLATION",
                          "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max")
        record.update(memory_static_min=str(static_min), memory_static_max=str(static_max),
                      memory_dynamic_min=str(dynamic_min), memory_dynamic_max=str(dynamic_max))
        return ""

    def _free_memory(self, host: str) -> int:
        used = sum(int(v["memory_dynamic_max"]) for v in self.db["VM"].values()
                   if v["power_state"] == "Running" and v["resident_on"] == host)
        return int(self.db["host_metrics"][self.db["host"][host]["metrics"]]["memory_total"]) - used

    def _start(self, vm: str) -> None:
        record = self._vm(vm, power="Halted", template_ok=False)
        if record["is_a_snapshot"]:
            raise Failure("OPERATION_NOT_ALLOWED", "snapshots cannot be started")
        need = int(record["memory_static_max"])
        host = max(self.db["host"], key=self._free_memory)
        if self._free_memory(host) < need:
            raise Failure("HOST_NOT_ENOUGH_FREE_MEMORY", str(need), str(self._free_memory(host)))
        record.update(power_state="Running", resident_on=host)
        for vbd in record["VBDs"]:
            self.db["VBD"][vbd]["currently_attached"] = True
        self.db["VM_metrics"][record["metrics"]].update(start_time=_now(), memory_actual=record["memory_dynamic_max"])
        self._booted[vm] = time.monotonic()

    def _op_VM_start(self, vm: str, start_paused: bool = False, force: bool = False) -> str:
        self._start(vm)
        return ""

    def _halt(self, vm: str) -> str:
        record = self._vm(vm, power="Running")
        record.update(power_state="Halted", resident_on=NULL)
        self.db["VM_guest_metrics"].pop(record["guest_metrics"], None)
        record["guest_metrics"] = NULL
        for vbd in record["VBDs"]:
            self.db["VBD"][vbd]["currently_attached"] = False
        return ""

    def _op_VM_clean_shutdown(self, vm: str) -> str:
        return self._halt(vm)

    def _op_VM_hard_shutdown(self, vm: str) -> str:
        return self._halt(vm)

    def _op_VM_snapshot(self, vm: str, name: str, ignore_vdis: list | None = None) -> str:
        record = self._vm(vm, template_ok=False)
        snap = self._copy_vm(vm, name, None, snapshot=True)
        self.db["VM"][snap]["is_a_template"] = True  # snapshots are templates in xapi
        record["snapshots"].append(snap)
        return snap

    def _op_VM_revert(self, snapshot: str) -> str:
        snap = self._get("VM", snapshot)
        if not snap["is_a_snapshot"]:
            raise Failure("OPERATION_NOT_ALLOWED", f"{snapshot} is not a snapshot")
        vm = snap["snapshot_of"]
        record = self._get("VM", vm)
        if record["power_state"] == "Running":
            self._halt(vm)
        for vbd in list(record["VBDs"]):
            vdi = self.db["VBD"][vbd]["VDI"]
            self._op_VBD_destroy(vbd)
            if vdi in self.db["VDI"]:
                self._op_VDI_destroy(vdi)
        for vif in list(record["VIFs"]):
            self._op_VIF_destroy(vif)
        for field in ("VCPUs_max", "VCPUs_at_startup", "memory_static_min", "memory_static_max",
                      "memory_dynamic_min", "memory_dynamic_max", "xenstore_data", "other_config"):
            record[field] = copy.deepcopy(snap[field])
        for vbd in snap["VBDs"]:
            b = self.db["VBD"][vbd]
            vdi = NULL
            if b["VDI"] in self.db["VDI"]:
                old = self.db["VDI"][b["VDI"]]
                vdi = self._vdi_create({**copy.deepcopy(old), "uuid": str(uuid.uuid4()),
                                        "name_label": f"{record['name_label']} {b['userdevice']}"})
            self._vbd_create({**copy.deepcopy(b), "VM": vm, "VDI": vdi, "uuid": str(uuid.uuid4())})
        for vif in snap["VIFs"]:
            self._vif_create({**copy.deepcopy(self.db["VIF"][vif]), "VM": vm, "uuid": str(uuid.uuid4())})
        return ""

    def _op_VM_destroy(self, vm: str) -> str:
        record = self._vm(vm, power="Halted")
        for vbd in list(record["VBDs"]):
            self._op_VBD_destroy(vbd)
        for vif in list(record["VIFs"]):
            self._op_VIF_destroy(vif)
        parent = record.get("snapshot_of")
        if parent in self.db["VM"]:
            self.db["VM"][parent]["snapshots"].remove(vm)
        for snap in record["snapshots"]:
            if snap in self.db["VM"]:
                self.db["VM"][snap]["snapshot_of"] = NULL
        self.db["VM_metrics"].pop(record["metrics"], None)
        del self.db["VM"][vm]
        return ""

    # ------------------------------------------------------------ storage and network
    def _sr_free(self, sr: str) -> int:
        rec = self.db["SR"][sr]
        return int(rec["physical_size"]) - int(rec["physical_utilisation"])

    def _vdi_create(self, record: dict[str, Any], snapshot_of: str | None = None) -> str:
        sr = record.get("SR", NULL)
        self._get("SR", sr)
        size = int(record.get("virtual_size") or 0)
        if size < 0:
            raise Failure("VALUE_NOT_SUPPORTED", "virtual_size", str(size), "must be positive")
        if self._sr_free(sr) < size:
            raise Failure("SR_BACKEND_FAILURE_44", "", "There is insufficient space")
        sr_rec = self.db["SR"][sr]
        ref = self._add("VDI", {"name_label": record.get("name_label", ""), "name_description": "", "SR": sr,
                                "virtual_size": str(size), "physical_utilisation": str(size),
                                "type": record.get("type", "user"), "sharable": bool(record.get("sharable")),
                                "read_only": bool(record.get("read_only")), "VBDs": [], "is_a_snapshot":
                                snapshot_of is not None, "snapshot_of": snapshot_of or NULL,
                                "other_config": dict(record.get("other_config") or {})})
        sr_rec["VDIs"].append(ref)
        sr_rec["physical_utilisation"] = str(int(sr_rec["physical_utilisation"]) + size)
        sr_rec["virtual_allocation"] = str(int(sr_rec["virtual_allocation"]) + size)
        return ref

    def _op_VDI_create(self, record: dict[str, Any]) -> str:
        return self._vdi_create(record)

    def _op_VDI_resize(self, vdi: str, size: str) -> str:
        rec = self._get("VDI", vdi)
        old, new = int(rec["virtual_size"]), int(size)
        if new < old:
            raise Failure("VDI_TOO_SMALL", vdi, str(new))
        if self._sr_free(rec["SR"]) < new - old:
            raise Failure("SR_BACKEND_FAILURE_44", "", "There is insufficient space")
        sr = self.db["SR"][rec["SR"]]
        sr["physical_utilisation"] = str(int(sr["physical_utilisation"]) + new - old)
        sr["virtual_allocation"] = str(int(sr["virtual_allocation"]) + new - old)
        rec.update(virtual_size=str(new), physical_utilisation=str(new))
        return ""

    def _op_VDI_destroy(self, vdi: str) -> str:
        rec = self._get("VDI", vdi)
        if any(self.db["VBD"][b].get("currently_attached") for b in rec["VBDs"] if b in self.db["VBD"]):
            raise Failure("VDI_IN_USE", vdi, "destroy")
        for vbd in list(rec["VBDs"]):
            if vbd in self.db["VBD"]:
                self.db["VBD"][vbd]["VDI"] = NULL
        sr = self.db["SR"][rec["SR"]]
        sr["VDIs"].remove(vdi)
        sr["physical_utilisation"] = str(int(sr["physical_utilisation"]) - int(rec["virtual_size"]))
        sr["virtual_allocation"] = str(int(sr["virtual_allocation"]) - int(rec["virtual_size"]))
        del self.db["VDI"][vdi]
        return ""

    def _vbd_create(self, record: dict[str, Any]) -> str:
        vm = self._get("VM", record["VM"])
        device = str(record.get("userdevice", ""))
        if any(self.db["VBD"][b]["userdevice"] == device for b in vm["VBDs"]):
            raise Failure("DEVICE_ALREADY_EXISTS", device)
        vdi = record.get("VDI", NULL)
        if vdi != NULL:
            self._get("VDI", vdi)
        ref = self._add("VBD", {"VM": record["VM"], "VDI": vdi, "userdevice": device,
                                "bootable": bool(record.get("bootable")), "mode": record.get("mode", "RW"),
                                "type": record.get("type", "Disk"), "empty": bool(record.get("empty")),
                                "currently_attached": False, "other_config": dict(record.get("other_config") or {})})
        vm["VBDs"].append(ref)
        if vdi != NULL:
            self.db["VDI"][vdi]["VBDs"].append(ref)
        return ref

    def _op_VBD_create(self, record: dict[str, Any]) -> str:
        vm = self._get("VM", record.get("VM", NULL))
        if vm["power_state"] != "Halted":
            raise Failure("VM_BAD_POWER_STATE", record["VM"], "halted", vm["power_state"].lower())
        return self._vbd_create(record)

    def _op_VBD_destroy(self, vbd: str) -> str:
        rec = self._get("VBD", vbd)
        if rec.get("currently_attached"):
            raise Failure("DEVICE_ALREADY_ATTACHED", vbd)
        if rec["VM"] in self.db["VM"]:
            self.db["VM"][rec["VM"]]["VBDs"].remove(vbd)
        if rec["VDI"] in self.db["VDI"]:
            self.db["VDI"][rec["VDI"]]["VBDs"].remove(vbd)
        del self.db["VBD"][vbd]
        return ""

    def _vif_create(self, record: dict[str, Any]) -> str:
        vm = self._get("VM", record.get("VM", NULL))
        network = self._get("network", record.get("network", NULL))
        device = str(record.get("device", ""))
        if any(self.db["VIF"][v]["device"] == device for v in vm["VIFs"]):
            raise Failure("DEVICE_ALREADY_EXISTS", device)
        mac = record.get("MAC") or "aa:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])
        ref = self._add("VIF", {"VM": record["VM"], "network": record["network"], "device": device, "MAC": mac,
                                "MTU": str(record.get("MTU", "1500")), "currently_attached": False,
                                "other_config": dict(record.get("other_config") or {})})
        vm["VIFs"].append(ref)
        network["VIFs"].append(ref)
        return ref

    def _op_VIF_create(self, record: dict[str, Any]) -> str:
        return self._vif_create(record)

    def _op_VIF_destroy(self, vif: str) -> str:
        rec = self._get("VIF", vif)
        if rec["VM"] in self.db["VM"]:
            self.db["VM"][rec["VM"]]["VIFs"].remove(vif)
        if rec["network"] in self.db["network"]:
            self.db["network"][rec["network"]]["VIFs"].remove(vif)
        del self.db["VIF"][vif]
        return ""

    # ------------------------------------------------------------ host and task
    def _op_host_compute_free_memory(self, host: str) -> str:
        self._get("host", host)
        return str(self._free_memory(host))

    def _op_host_metrics_get_memory_free(self, metrics: str) -> str:
        host = next(h for h, rec in self.db["host"].items() if rec["metrics"] == metrics)
        return str(self._free_memory(host))

    def _op_task_cancel(self, task: str) -> str:
        rec = self._get("task", task)
        if rec["status"] == "pending":
            rec.update(status="cancelled", error_info=["TASK_CANCELLED", task])
        return ""

    def _op_task_destroy(self, task: str) -> str:
        self._get("task", task)
        del self.db["task"][task]
        return ""


def _unknown(method: str) -> Any:
    raise Failure("MESSAGE_METHOD_UNKNOWN", method)


class _Dispatcher:
    """Turns each XML-RPC call into XenAPI's Status/Value/ErrorDescription answer."""

    def __init__(self, pool: XapiPool, host: str):
        self.pool = pool
        self.host = host

    def _dispatch(self, method: str, params: tuple) -> dict[str, Any]:
        try:
            return {"Status": "Success", "Value": self.pool.handle(self.host, method, params)}
        except Failure as exc:
            return {"Status": "Failure", "ErrorDescription": exc.description}


class _Handler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as xapi serves
    rpc_paths = ("/", "/RPC2")


class _Server(HandshakeInRequestThread, socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that rejects our certificate or hangs up is not the server's problem


def make_certificates(directory: Path, addresses: list[str], pool: str = "") -> tuple[str, str, str]:
    """A self-signed CA and a host certificate for `addresses` (and localhost); returns file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A CA name per pool: several pools' CAs in one ca_file must not be mistaken for each other.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bigbang XenAPI test CA {pool} {addresses[0]}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xapi test host")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (directory / "ca.pem", directory / "host.pem", directory / "host.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture(scope="module")
def xapi():
    """A XenAPI pool (master and member) for one test module; the password is in PASSWORD_ENV."""
    os.environ[PASSWORD_ENV] = PASSWORD
    pool = XapiPool()
    yield pool
    pool.stop()
