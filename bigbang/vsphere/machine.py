"""A VM as vCenter reports it, how it differs from its inventory entry, and the specs that fix that."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from bigbang.sizes import memory_mb_of
from bigbang.vsphere.catalog import Catalog, Placement

VM_PROPS = [
    "name", "config.hardware.numCPU", "config.hardware.memoryMB", "config.hardware.device", "config.annotation",
    "config.tools.pendingCustomization", "config.template", "config.guestId", "runtime.powerState", "snapshot",
    "resourcePool", "datastore", "parent", "guest.ipAddress", "guest.hostName", "guest.toolsRunningStatus",
]
MARK = "bigbang:"  # annotations bigbang writes start with this
FIRST_BOOT = "first boot pending"
GB_KB = 1024 * 1024


@dataclass(frozen=True)
class Disk:
    key: int
    controller_key: int
    unit: int | None
    capacity_kb: int
    device: Any


@dataclass(frozen=True)
class VmState:
    ref: Any
    name: str
    cpu: int
    memory_mb: int
    disks: tuple[Disk, ...]
    nics: tuple[Any, ...]
    devices: tuple[Any, ...]
    power: str
    annotation: str
    pending_customization: str
    template: bool
    snapshots: dict[str, Any]
    props: dict[str, Any]

    @property
    def made_by_bigbang(self) -> bool:
        return self.annotation.startswith(MARK)

    @property
    def first_boot_pending(self) -> bool:
        return self.made_by_bigbang and FIRST_BOOT in self.annotation and self.power != "poweredOn"


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


def _snapshots(tree: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stack = list(getattr(tree, "rootSnapshotList", None) or [])
    while stack:
        node = stack.pop()
        out.setdefault(node.name, node.snapshot)
        stack.extend(node.childSnapshotList or [])
    return out


def vm_state(ref: Any, props: dict[str, Any]) -> VmState:
    devices = tuple(props.get("config.hardware.device") or ())
    disks = tuple(sorted(
        (Disk(d.key, int(d.controllerKey or 0), int(d.unitNumber or 0), int(d.capacityInKB or 0), d)
         for d in devices if isinstance(d, vim.vm.device.VirtualDisk)),
        key=lambda d: (d.controller_key, d.unit if d.unit is not None else 99, d.key)))
    nics = tuple(d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard))
    return VmState(
        ref=ref, name=props.get("name", ""), cpu=int(props.get("config.hardware.numCPU") or 0),
        memory_mb=int(props.get("config.hardware.memoryMB") or 0), disks=disks, nics=nics, devices=devices,
        power=str(props.get("runtime.powerState") or "unknown"), annotation=props.get("config.annotation") or "",
        pending_customization=props.get("config.tools.pendingCustomization") or "",
        template=bool(props.get("config.template")), snapshots=_snapshots(props.get("snapshot")), props=props,
    )


def nic_network(nic: Any, catalog: Catalog) -> str | None:
    """The name of the network a network card is on."""
    backing = nic.backing
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = backing.port.portgroupKey
        for pg, props in catalog.data()["portgroups"].items():
            if props.get("key") == key:
                return catalog.network_name(pg)
        return key
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        return backing.deviceName or (catalog.network_name(backing.network) if backing.network else None)
    return None


def disk_kb(gb: float) -> int:
    """A disk size in GB (fractions allowed, as discover writes them) in KB, as vCenter counts."""
    return round(gb * GB_KB)


def size_gb(kb: int) -> int | float:
    """KB as GB, exactly: whole GB as an int, else a float (KB / 2**20 is exact in binary floating point)."""
    return kb // GB_KB if kb % GB_KB == 0 else kb / GB_KB


def differences(state: VmState, spec: dict[str, Any], catalog: Catalog) -> list[Change]:
    """What would have to change for the VM to match its inventory entry."""
    changes = []
    if state.cpu != spec["cpu"]:
        changes.append(Change("cpu", state.cpu, spec["cpu"]))
    want_mb = memory_mb_of(spec)
    if state.memory_mb != want_mb:
        if spec.get("memory_mb") is not None or state.memory_mb % 1024:
            changes.append(Change("memory_gb", f"{state.memory_mb} MB", f"{want_mb} MB"))
        else:
            changes.append(Change("memory_gb", f"{state.memory_mb // 1024}", spec["memory_gb"]))
    for i, want_gb in enumerate(spec.get("disks_gb") or []):
        if i >= len(state.disks):
            changes.append(Change(f"disk {i + 1}", "absent", f"{want_gb} GB"))
            continue
        have_kb = state.disks[i].capacity_kb
        if have_kb < disk_kb(want_gb):
            changes.append(Change(f"disk {i + 1}", f"{size_gb(have_kb)} GB", f"{want_gb} GB"))
        elif have_kb > disk_kb(want_gb):
            changes.append(Change(f"disk {i + 1}", f"{size_gb(have_kb)} GB", f"{want_gb} GB", fixable=False,
                                  note="vSphere cannot shrink a disk"))
    if not state.nics:
        changes.append(Change("network", "no network card", spec["network"]))
    else:
        have = nic_network(state.nics[0], catalog)
        if have != spec["network"]:
            changes.append(Change("network", have, spec["network"]))
    return changes


def _network_backing(placement: Placement, catalog: Catalog) -> Any:
    port = catalog.dvs_port(placement.network)
    if port is not None:
        switch_uuid, key = port
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=switch_uuid, portgroupKey=key))
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=placement.network_name,
                                                                 network=placement.network)


def config_spec(state: VmState, spec: dict[str, Any], placement: Placement, catalog: Catalog,
                changes: list[Change], annotation: str | None = None) -> Any:
    """A ReconfigVM spec that applies the fixable `changes` (and an annotation)."""
    config = vim.vm.ConfigSpec()
    device_changes = []
    fields = {c.field for c in changes if c.fixable}
    if "cpu" in fields:
        config.numCPUs = spec["cpu"]
    if "memory_gb" in fields:
        memory: Any = memory_mb_of(spec)
        config.memoryMB = memory
    controller = next((d for d in state.devices if isinstance(d, vim.vm.device.VirtualSCSIController)), None)
    used_units = {d.unit for d in state.disks if controller is not None and d.controller_key == controller.key}
    new_key = -100
    for i, want_gb in enumerate(spec.get("disks_gb") or []):
        if f"disk {i + 1}" not in fields:
            continue
        if i < len(state.disks):
            disk = state.disks[i].device
            disk.capacityInKB = disk_kb(want_gb)
            disk.capacityInBytes = disk_kb(want_gb) * 1024
            device_changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk))
            continue
        if controller is None:
            raise ValueError(f"{state.name} has no SCSI controller to add disk {i + 1} to")
        unit = next(u for u in range(16) if u != 7 and u not in used_units)  # unit 7 is the controller's own
        used_units.add(unit)
        disk = vim.vm.device.VirtualDisk(
            key=new_key, controllerKey=controller.key, unitNumber=unit, capacityInKB=disk_kb(want_gb),
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", thinProvisioned=True,
                                                                  fileName="", datastore=placement.datastore))
        new_key -= 1
        device_changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
    if "network" in fields:
        backing = _network_backing(placement, catalog)
        if state.nics:
            nic = state.nics[0]
            nic.backing = backing
            device_changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        else:
            nic = vim.vm.device.VirtualVmxnet3(
                key=new_key, backing=backing,
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True))
            device_changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    if device_changes:
        config.deviceChange = device_changes
    if annotation is not None:
        config.annotation = annotation
    return config


@dataclass(frozen=True)
class GuestSecrets:
    admin_password: str | None = None
    join_user: str | None = None
    join_password: str | None = None
    windows_timezone: int = 105
    organisation: str = "bigbang"


def customization_spec(spec: dict[str, Any], secrets: GuestSecrets) -> Any:
    """Guest customisation: hostname, IP settings, domain (Windows sysprep or Linux prep)."""
    c = spec.get("customization") or {}
    hostname = c.get("hostname") or spec["name"]
    ip = c.get("ip") or "dhcp"
    domain = c.get("domain")
    if ip == "dhcp":
        ip_settings = vim.vm.customization.IPSettings(ip=vim.vm.customization.DhcpIpGenerator())
    else:
        ip_settings = vim.vm.customization.IPSettings(
            ip=vim.vm.customization.FixedIp(ipAddress=ip), subnetMask=c.get("netmask") or "255.255.255.0",
            gateway=[c["gateway"]] if c.get("gateway") else [])
    if c.get("dns"):
        ip_settings.dnsServerList = list(c["dns"])
    if domain:
        ip_settings.dnsDomain = domain
    global_ip = vim.vm.customization.GlobalIPSettings(dnsServerList=list(c.get("dns") or []),
                                                      dnsSuffixList=[domain] if domain else [])
    identity: Any
    if c.get("os", "windows") == "linux":
        identity = vim.vm.customization.LinuxPrep(
            hostName=vim.vm.customization.FixedName(name=hostname), domain=domain or "localdomain",
            timeZone=c.get("timezone") or "UTC", hwClockUTC=True)
    else:
        password = (vim.vm.customization.Password(value=secrets.admin_password, plainText=True)
                    if secrets.admin_password else None)
        identification = vim.vm.customization.Identification()
        if domain and secrets.join_user:
            identification.joinDomain = domain
            identification.domainAdmin = secrets.join_user
            identification.domainAdminPassword = vim.vm.customization.Password(value=secrets.join_password or "",
                                                                               plainText=True)
        else:
            identification.joinWorkgroup = "WORKGROUP"
        timezone = c.get("timezone")
        identity = vim.vm.customization.Sysprep(
            guiUnattended=vim.vm.customization.GuiUnattended(
                password=password, autoLogon=False, autoLogonCount=0,
                timeZone=int(timezone) if timezone and str(timezone).isdigit() else secrets.windows_timezone),
            userData=vim.vm.customization.UserData(
                fullName=secrets.organisation, orgName=secrets.organisation, productId="",
                computerName=vim.vm.customization.FixedName(name=hostname)),
            identification=identification)
    return vim.vm.customization.Specification(
        identity=identity, globalIPSettings=global_ip,
        nicSettingMap=[vim.vm.customization.AdapterMapping(adapter=ip_settings)])
