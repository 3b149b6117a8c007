"""Read the VMs a vCenter has and write them as inventory `servers:` entries."""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from pyVmomi import vim

from bigbang.vsphere.catalog import Catalog
from bigbang.vsphere.client import VcenterClient
from bigbang.vsphere.machine import VM_PROPS, nic_network, vm_state

_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.IGNORECASE)
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _os(guest_id: str | None) -> str:
    return "windows" if (guest_id or "").lower().startswith("win") else "linux"


def discover(client: VcenterClient, catalog: Catalog, datacenter: str | None = None
             ) -> tuple[list[dict[str, Any]], list[str]]:
    """(server entries, VMs left out with the reason), sorted by name."""
    data = catalog.data(refresh=True)
    props = client.list_objects(vim.VirtualMachine, VM_PROPS + ["config.guestId"])
    templates_by_guest: dict[str, str] = {}
    for _ref, p in sorted(props.items(), key=lambda kv: kv[1].get("name", "")):
        if p.get("config.template"):
            templates_by_guest.setdefault(p.get("config.guestId") or "", p["name"])
    dc_names = {dc: p["name"] for dc, p in data["dcs"].items()}
    pools = data["pools"]
    servers, skipped = [], []
    for ref, p in sorted(props.items(), key=lambda kv: kv[1].get("name", "")):
        if p.get("config.template"):
            continue
        name = p.get("name", "")
        dc_name = dc_names.get(data["dc_of"](ref))
        if datacenter and dc_name != datacenter:
            continue
        if not _NAME.match(name):
            skipped.append(f"{name!r}: not a valid server name (letters, digits and dashes, at most 63)")
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
            "name": name.lower(),
            "template": templates_by_guest.get(p.get("config.guestId") or "", "unknown"),
            "datacenter": dc_name,
            "cluster": cluster,
            "datastore": catalog.object_name(datastores[0]) if datastores else "unknown",
            "network": (nic_network(state.nics[0], catalog) if state.nics else None) or "unknown",
            "cpu": state.cpu,
            "memory_gb": max(1, math.ceil(state.memory_mb / 1024)),
            "disks_gb": [max(1, math.ceil(d.capacity_kb / (1024 * 1024))) for d in state.disks],
            "existing": True,
        }
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
        f"# Discovered from vCenter {source} by `bigbang vcenter discover`.",
        "# Every server is marked existing: true (bigbang snapshots it before changing it).",
        "# 'template' is a template with the same guest OS, or 'unknown': check it before creating new servers.",
    ]
    if skipped:
        lines.append("# Left out:")
        lines += [f"#   {reason}" for reason in skipped]
    body = yaml.safe_dump({"servers": servers}, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "\n".join(lines) + "\n" + body
