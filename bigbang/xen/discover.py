"""Read the VMs a pool has and write them as inventory `servers:` entries."""

from __future__ import annotations

import re
from typing import Any

import yaml

from bigbang.sizes import MiB, gb_exact, memory_entry
from bigbang.xen.catalog import Catalog
from bigbang.xen.client import NULL_REF, XenClient
from bigbang.xen.machine import guest_addresses, read_vm

_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.IGNORECASE)
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _guest(client: XenClient, metrics: str) -> tuple[str | None, list[str]]:
    """(os, addresses) the guest agent reports; (None, []) without an agent."""
    if metrics == NULL_REF:
        return None, []
    try:
        rec = client.call("VM_guest_metrics.get_record", metrics)
    except Exception:  # noqa: BLE001 - the metrics may have gone meanwhile; the VM is still worth listing
        return None, []
    os_version = rec.get("os_version") or {}
    text = " ".join(str(v) for v in os_version.values()).lower()
    return ("windows" if "windows" in text or "win" in str(os_version.get("name", "")).lower() else
            "linux" if text else None), guest_addresses(rec.get("networks") or {})


def discover(client: XenClient, catalog: Catalog) -> tuple[list[dict[str, Any]], list[str]]:
    """(server entries, VMs left out with the reason), sorted by name."""
    data = catalog.data(refresh=True)
    servers, skipped = [], []
    for _key, refs in sorted(data["vm_index"].items()):
        for ref in refs:
            record = data["vms"][ref]
            name = record.get("name_label", "")
            if not _NAME.match(name):
                skipped.append(f"{name!r}: not a valid server name (letters, digits and dashes, at most 63)")
                continue
            if len(refs) > 1:
                skipped.append(f"{name}: {len(refs)} VMs have this name")
                break
            state = read_vm(client, ref)
            base = (record.get("other_config") or {}).get("base_template_name")
            os_name, ips = _guest(client, state.guest_metrics)
            entry: dict[str, Any] = {
                "name": name.lower(),
                "template": base if base in data["templates"] else "unknown",
                "cluster": data["pool_name"],
                "datastore": (catalog.sr_name(state.disks[0].sr) if state.disks else None) or "unknown",
                "network": (catalog.network_name(state.vifs[0][2]) if state.vifs else None) or "unknown",
                "cpu": state.cpu,
                **memory_entry(max(4, state.memory["static_max"] // MiB)),
                "disks_gb": [gb_exact(d.size) for d in state.disks if d.size > 0],
                "platform": "citrix",
                "existing": True,
            }
            custom: dict[str, Any] = {"os": os_name or state.xenstore_data.get("vm-data/os") or "windows"}
            ip = next((a for a in ips if _IPV4.match(a)), None)
            if ip:
                custom["ip"] = ip
            entry["customization"] = custom
            servers.append(entry)
    return servers, skipped


def to_yaml(servers: list[dict[str, Any]], skipped: list[str], source: str) -> str:
    lines = [
        f"# Discovered from XenAPI {source} by `bigbang xen discover`.",
        "# Every server is marked existing: true (bigbang snapshots it before changing it).",
        "# 'template' is the VM's base template when the pool still has it, or 'unknown': check it before "
        "creating new servers.",
    ]
    if skipped:
        lines.append("# Left out:")
        lines += [f"#   {reason}" for reason in skipped]
    body = yaml.safe_dump({"servers": servers}, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "\n".join(lines) + "\n" + body
