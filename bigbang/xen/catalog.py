"""Names to pool objects: the pool, its hosts, SRs, networks, templates and VMs.

Read in a few bulk `get_all_records` calls and kept; read again when a name is missing (it may
have been created since) or the copy is older than its time to live. A missing name is a
`PlacementError` naming the inventory entry and listing the names that do exist in the pool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from bigbang.xen.client import NULL_REF, XenClient


class PlacementError(Exception):
    """The inventory names something the pool does not have."""


@dataclass(frozen=True)
class Placement:
    pool_name: str
    template: str | None  # ref; None for an existing VM whose template is gone
    template_srs: frozenset[str]  # SRs the template's disks are on (clone there, copy elsewhere)
    sr: str
    sr_name: str
    network: str
    network_name: str


def names(items: Any, limit: int = 20) -> str:
    listed = sorted(items)
    if not listed:
        return "none"
    more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


def _is_vm(record: dict[str, Any]) -> bool:
    return not (record.get("is_a_template") or record.get("is_a_snapshot") or record.get("is_control_domain"))


class Catalog:
    def __init__(self, client: XenClient, ttl: float = 300.0):
        self.client = client
        self.ttl = ttl
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._data: dict[str, Any] | None = None
        self._template_srs: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------ loading
    def _load(self) -> dict[str, Any]:
        c = self.client
        pools = c.check("pool.get_all_records", what="read the pool")
        hosts = c.check("host.get_all_records", what="read the pool's hosts")
        srs = c.check("SR.get_all_records", what="read the storage repositories")
        networks = c.check("network.get_all_records", what="read the networks")
        vms = c.check("VM.get_all_records", what="read the VMs")
        pool: dict[str, Any] = next(iter(pools.values()), {})
        templates: dict[str, str] = {}
        vm_index: dict[str, list[str]] = {}
        for ref, rec in vms.items():
            if rec.get("is_a_template") and not rec.get("is_a_snapshot"):
                templates.setdefault(rec["name_label"], ref)
            elif _is_vm(rec):
                vm_index.setdefault(rec["name_label"].lower(), []).append(ref)
        return {
            "pool_name": pool.get("name_label", ""), "master": pool.get("master", NULL_REF), "hosts": hosts,
            "srs": {rec["name_label"]: ref for ref, rec in srs.items() if rec.get("content_type") != "iso"},
            "sr_records": srs,
            "networks": {rec["name_label"]: ref for ref, rec in networks.items()},
            "network_names": {ref: rec["name_label"] for ref, rec in networks.items()},
            "templates": templates, "vm_index": vm_index, "vms": vms,
        }

    def data(self, refresh: bool = False) -> dict[str, Any]:
        with self._lock:
            stale = time.monotonic() - self._loaded_at > self.ttl
            if self._data is None or refresh or stale:
                self._data = self._load()
                self._loaded_at = time.monotonic()
            return self._data

    @property
    def pool_name(self) -> str:
        return str(self.data()["pool_name"])

    # ------------------------------------------------------------ virtual machines
    def find_vm(self, name: str, refresh: bool = False) -> str | None:
        refs = self.data(refresh)["vm_index"].get(name.lower(), [])
        if len(refs) > 1:
            raise PlacementError(f"{len(refs)} VMs are named {name} in pool {self.pool_name}; rename or remove "
                                 "the extra ones")
        return refs[0] if refs else None

    def remember_vm(self, name: str, ref: str) -> None:
        with self._lock:
            if self._data is not None:
                self._data["vm_index"][name.lower()] = [ref]

    def forget_vm(self, name: str) -> None:
        with self._lock:
            if self._data is not None:
                self._data["vm_index"].pop(name.lower(), None)

    def network_name(self, ref: str) -> str | None:
        return self.data()["network_names"].get(ref)

    def sr_name(self, ref: str) -> str | None:
        rec = self.data()["sr_records"].get(ref)
        return rec["name_label"] if rec else None

    def free_bytes(self, sr: str) -> int:
        """Space left on an SR, read fresh (other clones use it too)."""
        rec = self.client.check("SR.get_record", sr, what="read the SR")
        return int(rec.get("physical_size") or 0) - int(rec.get("physical_utilisation") or 0)

    def template_srs(self, template: str) -> frozenset[str]:
        with self._lock:
            if template in self._template_srs:
                return self._template_srs[template]
        found = set()
        for vbd in self.client.check("VM.get_VBDs", template, what="read the template's disks"):
            rec = self.client.check("VBD.get_record", vbd, what="read the template's disks")
            if rec.get("type") == "Disk" and rec.get("VDI") not in (None, NULL_REF):
                found.add(self.client.check("VDI.get_SR", rec["VDI"], what="read the template's disks"))
        with self._lock:
            self._template_srs[template] = frozenset(found)
        return frozenset(found)

    # ------------------------------------------------------------ placement
    def place(self, spec: dict[str, Any], *, need_template: bool = True) -> Placement:
        """Every object a server needs, or a PlacementError listing each missing one."""
        try:
            return self._place(self.data(), spec, need_template)
        except PlacementError:
            return self._place(self.data(refresh=True), spec, need_template)  # it may be new

    def _place(self, data: dict[str, Any], spec: dict[str, Any], need_template: bool) -> Placement:
        name = spec["name"]
        where = f"servers[{name}]"
        pool = data["pool_name"]
        problems = []
        if spec.get("cluster") != pool:
            problems.append(f"{where}.cluster: pool '{spec.get('cluster')}' is not the pool at "
                            f"{self.client.endpoint.where} (that is '{pool}'); map it to one of its hosts under "
                            "connectors.xen.pools")

        def pick(field: str, table: str, label: str) -> Any:
            value = spec.get(field)
            found = data[table].get(value)
            if found is None:
                problems.append(f"{where}.{field}: {label} '{value}' not found in pool {pool}; "
                                f"{label}s there: {names(data[table])}")
            return found

        template = pick("template", "templates", "template") if need_template else \
            data["templates"].get(spec.get("template"))
        sr = pick("datastore", "srs", "SR")
        network = pick("network", "networks", "network")
        if problems:
            raise PlacementError("; ".join(problems))
        srs = self.template_srs(template) if template else frozenset()
        return Placement(pool, template, srs, sr, spec["datastore"], network, spec["network"])
