"""A VM as XenAPI reports it, how it differs from its inventory entry, and the calls that fix that.

Sizes are bytes; XenAPI sends int64 values as strings. CPU and memory are changed only on a
halted VM (XenAPI refuses VCPUs_max and static memory changes on a running one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bigbang.sizes import MiB, memory_label, memory_mb_of
from bigbang.xen.catalog import Catalog, Placement
from bigbang.xen.client import NULL_REF, XenClient

GiB = 1024 ** 3
MARK_KEY = "bigbang"  # other_config key bigbang writes; its value says what bigbang did
FIRST_BOOT = "first boot pending"
CD_DEVICE = "3"  # XenServer's convention: userdevice 3 is the virtual CD drive
_IP_KEY = re.compile(r"^\d+/(ip|ipv4/\d+)$")


@dataclass(frozen=True)
class Disk:
    vbd: str
    vdi: str
    device: str
    size: int
    sr: str


@dataclass(frozen=True)
class VmState:
    ref: str
    name: str
    cpu: int
    cpu_max: int
    memory: dict[str, int]  # static_min, static_max, dynamic_min, dynamic_max
    disks: tuple[Disk, ...]
    devices: frozenset[str]  # every VBD userdevice in use (disks and CD drives)
    vifs: tuple[tuple[str, str, str], ...]  # (device, VIF ref, network ref), device order
    power: str  # Halted, Running, Paused, Suspended
    template: bool
    mark: str
    other_config: dict[str, str]
    xenstore_data: dict[str, str]
    snapshots: dict[str, str]  # name -> snapshot ref
    guest_metrics: str

    @property
    def made_by_bigbang(self) -> bool:
        return bool(self.mark)

    @property
    def first_boot_pending(self) -> bool:
        return FIRST_BOOT in self.mark and self.power != "Running"


@dataclass(frozen=True)
class Change:
    field: str
    have: Any
    want: Any
    fixable: bool = True
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.field} {self.have} → {self.want}"
        return f"{text} ({self.note})" if self.note else text


def _device_order(device: str) -> tuple[int, str]:
    return (int(device), "") if device.isdigit() else (999, device)


def read_vm(client: XenClient, ref: str, *, snapshots: bool = False) -> VmState:
    """The VM and its disks and network cards (snapshot names only when asked: one call each)."""
    what = "read the VM"
    rec = client.check("VM.get_record", ref, what=what)
    disks, devices = [], set()
    for vbd in rec.get("VBDs") or []:
        b = client.check("VBD.get_record", vbd, what=what)
        devices.add(str(b.get("userdevice")))
        if b.get("type") != "Disk" or b.get("empty") or b.get("VDI") in (None, NULL_REF):
            continue
        v = client.check("VDI.get_record", b["VDI"], what=what)
        disks.append(Disk(vbd, b["VDI"], str(b.get("userdevice")), int(v.get("virtual_size") or 0), v.get("SR", "")))
    vifs = []
    for vif in rec.get("VIFs") or []:
        v = client.check("VIF.get_record", vif, what=what)
        vifs.append((str(v.get("device")), vif, v.get("network", NULL_REF)))
    snaps: dict[str, str] = {}
    if snapshots:
        for snap in rec.get("snapshots") or []:
            snaps.setdefault(client.check("VM.get_name_label", snap, what=what), snap)
    other = dict(rec.get("other_config") or {})
    return VmState(
        ref=ref, name=rec.get("name_label", ""), cpu=int(rec.get("VCPUs_at_startup") or 0),
        cpu_max=int(rec.get("VCPUs_max") or 0),
        memory={k: int(rec.get(f"memory_{k}") or 0) for k in ("static_min", "static_max", "dynamic_min",
                                                               "dynamic_max")},
        disks=tuple(sorted(disks, key=lambda d: _device_order(d.device))), devices=frozenset(devices),
        vifs=tuple(sorted(vifs, key=lambda v: _device_order(v[0]))), power=str(rec.get("power_state") or "unknown"),
        template=bool(rec.get("is_a_template")), mark=other.get(MARK_KEY, ""), other_config=other,
        xenstore_data=dict(rec.get("xenstore_data") or {}), snapshots=snaps,
        guest_metrics=rec.get("guest_metrics") or NULL_REF)


def differences(state: VmState, spec: dict[str, Any], catalog: Catalog) -> list[Change]:
    """What would have to change for the VM to match its inventory entry."""
    changes = []
    if state.cpu != spec["cpu"] or state.cpu_max != spec["cpu"]:
        changes.append(Change("cpu", state.cpu, spec["cpu"]))
    want = memory_mb_of(spec) * MiB
    m = state.memory
    if m["static_max"] != want or m["dynamic_max"] != want or m["dynamic_min"] != want:
        have_mb = m["dynamic_max"] // MiB
        if spec.get("memory_mb") is not None or have_mb % 1024:
            changes.append(Change("memory_gb", f"{have_mb} MB", f"{memory_mb_of(spec)} MB"))
        else:
            changes.append(Change("memory_gb", f"{have_mb // 1024}", spec["memory_gb"]))
    for i, want_gb in enumerate(spec.get("disks_gb") or []):
        if i >= len(state.disks):
            changes.append(Change(f"disk {i + 1}", "absent", f"{want_gb} GB"))
            continue
        have = state.disks[i].size
        if have < round(want_gb * GiB):
            changes.append(Change(f"disk {i + 1}", f"{have / GiB:g} GB", f"{want_gb} GB"))
        elif have > round(want_gb * GiB):
            changes.append(Change(f"disk {i + 1}", f"{have / GiB:g} GB", f"{want_gb} GB", fixable=False,
                                  note="XenAPI cannot shrink a disk"))
    if not state.vifs:
        changes.append(Change("network", "no network card", spec["network"]))
    else:
        have_net = catalog.network_name(state.vifs[0][2])
        if have_net != spec["network"]:
            changes.append(Change("network", have_net, spec["network"]))
    return changes


def apply_changes(client: XenClient, state: VmState, spec: dict[str, Any], placement: Placement,
                  changes: list[Change], timeout: float) -> None:
    """Make a halted VM match `spec` in the fixable `changes`."""
    name = state.name
    fields = {c.field for c in changes if c.fixable}
    if "cpu" in fields:
        want = str(spec["cpu"])
        # VCPUs_at_startup may never exceed VCPUs_max: raise the limit first, lower it last.
        order = (("VM.set_VCPUs_max", want), ("VM.set_VCPUs_at_startup", want))
        if spec["cpu"] < state.cpu_max:
            order = order[::-1]
        for method, value in order:
            client.check(method, state.ref, value, what=f"set {name}'s vCPUs to {want}")
    if "memory_gb" in fields:
        want_bytes = memory_mb_of(spec) * MiB
        static_min = min(state.memory["static_min"] or want_bytes, want_bytes)
        client.check("VM.set_memory_limits", state.ref, str(static_min), *[str(want_bytes)] * 3,
                     what=f"set {name}'s memory to {memory_label(spec)}")
    used = set(state.devices)
    for i, want_gb in enumerate(spec.get("disks_gb") or []):
        if f"disk {i + 1}" not in fields:
            continue
        size = str(round(want_gb * GiB))
        if i < len(state.disks):
            client.run_task("VDI.resize", state.disks[i].vdi, size, timeout=timeout,
                            what=f"grow {name}'s disk {i + 1} to {want_gb} GB")
            continue
        device = next(str(d) for d in range(16) if str(d) not in used and str(d) != CD_DEVICE)
        used.add(device)
        vdi = client.check("VDI.create", {
            "name_label": f"{name} disk {i + 1}", "name_description": "made by bigbang", "SR": placement.sr,
            "virtual_size": size, "type": "user", "sharable": False, "read_only": False, "other_config": {},
            "xenstore_data": {}, "sm_config": {}, "tags": []}, what=f"create {name}'s disk {i + 1} on "
                                                                    f"{placement.sr_name}")
        client.check("VBD.create", {
            "VM": state.ref, "VDI": vdi, "userdevice": device, "bootable": False, "mode": "RW", "type": "Disk",
            "empty": False, "unpluggable": True, "other_config": {}, "qos_algorithm_type": "",
            "qos_algorithm_params": {}}, what=f"attach {name}'s disk {i + 1}")
    if "network" in fields:
        if state.vifs:
            client.check("VIF.destroy", state.vifs[0][1], what=f"remove {name}'s network card")
        client.check("VIF.create", {
            "device": state.vifs[0][0] if state.vifs else "0", "network": placement.network, "VM": state.ref,
            "MAC": "", "MTU": "1500", "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
            "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": []},
            what=f"connect {name} to {placement.network_name}")


def customisation(spec: dict[str, Any]) -> dict[str, str]:
    """xenstore_data a first-boot agent in the template reads (xapi copies it to the guest's xenstore)."""
    c = spec.get("customization") or {}
    values = {"hostname": c.get("hostname") or spec["name"], "ip": c.get("ip") or "dhcp",
              "netmask": c.get("netmask"), "gateway": c.get("gateway"), "dns": ",".join(c.get("dns") or []),
              "domain": c.get("domain"), "os": c.get("os") or "windows", "timezone": c.get("timezone")}
    return {f"vm-data/{k}": str(v) for k, v in values.items() if v}


def guest_addresses(networks: dict[str, str]) -> list[str]:
    """IPv4 addresses the guest agent reports, first card first."""
    keys = sorted((k for k in networks if _IP_KEY.match(k)), key=lambda k: (int(k.split("/")[0]), k))
    out: list[str] = []
    for key in keys:
        if networks[key] and networks[key] not in out:
            out.append(networks[key])
    return out
