"""Read the VMs a vCenter has and write them as inventory `servers:` entries.

What discover writes diffs as "already fine" against the same, untouched vCenter: memory in MB
where it is not whole GB, disk sizes exactly as vCenter reports them, each server with its
datacenter (and folder), a template from that datacenter. A VM name that repeats in several
datacenters becomes one server per datacenter, named `NAME-DATACENTER` with `vm_name: NAME`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import yaml
from pyVmomi import vim

from bigbang.vsphere.catalog import Catalog, PlacementError
from bigbang.vsphere.client import VcenterClient
from bigbang.vsphere.machine import VM_PROPS, nic_network, size_gb, vm_state

_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.IGNORECASE)
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _os(guest_id: str | None) -> str:
    return "windows" if (guest_id or "").lower().startswith("win") else "linux"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def discover(client: VcenterClient, catalog: Catalog, datacenter: str | None = None
             ) -> tuple[list[dict[str, Any]], list[str]]:
    """(server entries, VMs left out with the reason), sorted by name. PlacementError for an unknown datacenter."""
    data = catalog.data(refresh=True)
    dc_names = {dc: p["name"] for dc, p in data["dcs"].items()}
    if datacenter and datacenter not in dc_names.values():
        raise PlacementError(f"datacenter '{datacenter}' not found in vCenter; datacenters there: "
                             f"{', '.join(sorted(dc_names.values())) or 'none'}")
    props = client.list_objects(vim.VirtualMachine, VM_PROPS + ["config.guestId"])
    dc_of = data["dc_of"]
    templates_by_guest: dict[tuple[Any, str], str] = {}  # (datacenter, guest id) -> template name
    for ref, p in sorted(props.items(), key=lambda kv: kv[1].get("name", "")):
        if p.get("config.template"):
            templates_by_guest.setdefault((dc_of(ref), p.get("config.guestId") or ""), p["name"])
    vms = [(ref, p) for ref, p in props.items() if not p.get("config.template")]
    repeated = Counter(p.get("name", "").lower() for _ref, p in vms)
    pools = data["pools"]
    servers, skipped = [], []
    for ref, p in sorted(vms, key=lambda kv: (kv[1].get("name", "").lower(), dc_names.get(dc_of(kv[0]), ""))):
        name = p.get("name", "")
        dc_ref = dc_of(ref)
        dc_name = dc_names.get(dc_ref)
        if datacenter and dc_name != datacenter:
            continue
        if not _NAME.match(name):
            skipped.append(f"{name!r}: not a valid server name (letters, digits and dashes, at most 63)")
            continue
        server_name = name.lower()
        vm_name = None
        if repeated[server_name] > 1:  # the same name in several datacenters (or folders): one server each
            folder = catalog.folder_path(p.get("parent"))
            server_name = "-".join(x for x in (server_name, _slug(dc_name or ""), _slug(folder)) if x)
            vm_name = name
            if not _NAME.match(server_name):
                skipped.append(f"{name} in {dc_name}: its name repeats elsewhere and {server_name} is too long "
                               "to be a server name")
                continue
        state = vm_state(ref, p)
        pool = p.get("resourcePool")
        cluster_ref = pools.get(pool, {}).get("owner")
        cluster = data["clusters"].get(cluster_ref, {}).get("name")
        if cluster is None:
            skipped.append(f"{name}: not in a cluster or resource pool bigbang can see")
            continue
        datastores = p.get("datastore") or []
        entry: dict[str, Any] = {
            "name": server_name,
            **({"vm_name": vm_name} if vm_name else {}),
            "template": templates_by_guest.get((dc_ref, p.get("config.guestId") or ""), "unknown"),
            "datacenter": dc_name,
            "cluster": cluster,
            "datastore": catalog.object_name(datastores[0]) if datastores else "unknown",
            "network": (nic_network(state.nics[0], catalog) if state.nics else None) or "unknown",
            "cpu": state.cpu,
        }
        if state.memory_mb % 1024 == 0 and state.memory_mb >= 1024:
            entry["memory_gb"] = state.memory_mb // 1024
        else:
            entry["memory_mb"] = state.memory_mb
        entry["disks_gb"] = [size_gb(d.capacity_kb) for d in state.disks]
        entry["existing"] = True
        if pool is not None and pool != data["clusters"].get(cluster_ref, {}).get("resourcePool"):
            entry["resource_pool"] = pools[pool]["name"]
        folder = catalog.folder_path(p.get("parent"))
        if folder:
            entry["folder"] = folder
        custom: dict[str, Any] = {"os": _os(p.get("config.guestId"))}
        ip = p.get("guest.ipAddress")
        if ip and _IPV4.match(ip):
            custom["ip"] = ip
        entry["customization"] = custom
        servers.append(entry)
    return servers, skipped


def to_yaml(servers: list[dict[str, Any]], skipped: list[str], source: str) -> str:
    lines = [
        f"# Discovered from {source} by `bigbang vcenter discover`.",
        "# Every server is marked existing: true (bigbang snapshots it before changing it).",
        "# 'template' is a template of the same guest OS in the VM's datacenter, or 'unknown': check it before "
        "creating new servers.",
        "# A VM name found in several datacenters is one server per datacenter, NAME-DATACENTER with vm_name: NAME.",
    ]
    if skipped:
        lines.append("# Left out:")
        lines += [f"#   {reason}" for reason in skipped]
    body = yaml.safe_dump({"servers": servers}, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "\n".join(lines) + "\n" + body
