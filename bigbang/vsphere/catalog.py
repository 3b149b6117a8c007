"""Names to vCenter objects: datacenters, clusters, pools, datastores, networks, folders, templates, VMs.

Read in a few bulk property-collector round trips and kept; read again when a name is missing
(it may have been created since) or the copy is older than its time to live. A missing name is
a `PlacementError` that names the inventory entry and lists the names that do exist there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from bigbang.vsphere.client import VcenterClient


class PlacementError(Exception):
    """The inventory names something vCenter does not have."""


@dataclass(frozen=True)
class Placement:
    datacenter: Any
    datacenter_name: str
    template: Any
    cluster: Any
    cluster_name: str
    pool: Any
    datastore: Any
    datastore_name: str
    network: Any
    network_name: str
    folder: Any
    folder_path: str


def _names(items: dict, limit: int = 20) -> str:
    names = sorted(items)
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def vm_name_of(spec: dict[str, Any]) -> str:
    """The VM's name in vCenter for an inventory server."""
    return spec.get("vm_name") or spec["name"]


def _folder_path(folders: dict[Any, dict], roots: set[Any], folder: Any) -> str:
    parts = []
    while folder is not None and folder not in roots and folder in folders:
        parts.append(folders[folder]["name"])
        folder = folders[folder].get("parent")
    return "/".join(reversed(parts))


class Catalog:
    def __init__(self, client: VcenterClient, ttl: float = 300.0):
        self.client = client
        self.ttl = ttl
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._data: dict[str, Any] | None = None

    # ------------------------------------------------------------ loading
    def _load(self) -> dict[str, Any]:
        c = self.client
        folders = c.list_objects(vim.Folder, ["name", "parent"])
        dcs = c.list_objects(vim.Datacenter, ["name", "vmFolder", "parent"])
        clusters = c.list_objects(vim.ComputeResource, ["name", "parent", "resourcePool", "datastore", "network"])
        pools = c.list_objects(vim.ResourcePool, ["name", "owner", "parent"])
        datastores = c.list_objects(vim.Datastore, ["name", "parent"])
        networks = c.list_objects(vim.Network, ["name", "parent"])
        switches = c.list_objects(vim.DistributedVirtualSwitch, ["uuid"])
        portgroups = c.list_objects(vim.dvs.DistributedVirtualPortgroup, ["key", "config.distributedVirtualSwitch",
                                                                          "config.uplink"])
        vms = c.list_objects(vim.VirtualMachine, ["name", "parent", "config.template", "config.guestId"])
        about = c.call(lambda content: content.about)

        parent = {obj: props.get("parent") for table in (folders, dcs, clusters, datastores, networks, vms)
                  for obj, props in table.items()}
        dc_of_cache: dict[Any, Any] = {}

        def dc_of(obj: Any) -> Any:
            seen = []
            while obj is not None and obj not in dcs and obj not in dc_of_cache:
                seen.append(obj)
                obj = parent.get(obj)
            dc = obj if obj in dcs or obj is None else dc_of_cache[obj]
            for o in seen:
                dc_of_cache[o] = dc
            return dc

        per_dc: dict[Any, dict[str, dict]] = {dc: {k: {} for k in ("clusters", "datastores", "networks", "templates")}
                                              for dc in dcs}
        for obj, props in clusters.items():
            if dc_of(obj) in per_dc:
                per_dc[dc_of(obj)]["clusters"][props["name"]] = obj
        for obj, props in datastores.items():
            if dc_of(obj) in per_dc:
                per_dc[dc_of(obj)]["datastores"][props["name"]] = obj
        for obj, props in networks.items():
            pg = portgroups.get(obj, {})
            if pg.get("config.uplink"):
                continue  # uplink port groups carry no VMs
            if dc_of(obj) in per_dc:
                per_dc[dc_of(obj)]["networks"][props["name"]] = obj
        vm_index: dict[str, list[tuple[Any, Any, str]]] = {}  # lower name -> [(vm, datacenter, folder path)]
        roots = {p["vmFolder"] for p in dcs.values()}
        for obj, props in vms.items():
            if props.get("config.template"):
                if dc_of(obj) in per_dc:
                    per_dc[dc_of(obj)]["templates"][props["name"]] = obj
            else:
                path = _folder_path(folders, roots, props.get("parent"))
                vm_index.setdefault(props["name"].lower(), []).append((obj, dc_of(obj), path))
        return {
            "folders": folders, "dcs": dcs, "clusters": clusters, "pools": pools, "per_dc": per_dc,
            "dc_by_name": {p["name"]: dc for dc, p in dcs.items()}, "vm_index": vm_index, "vms": vms,
            "switch_uuid": {s: p.get("uuid") for s, p in switches.items()},
            "portgroups": portgroups, "dc_of": dc_of,
            "standalone": getattr(about, "apiType", "") == "HostAgent", "product": getattr(about, "fullName", ""),
        }

    def data(self, refresh: bool = False) -> dict[str, Any]:
        with self._lock:
            stale = time.monotonic() - self._loaded_at > self.ttl
            if self._data is None or refresh or stale:
                self._data = self._load()
                self._loaded_at = time.monotonic()
            return self._data

    def endpoint_kind(self) -> str:
        """`vCenter (VMware vCenter Server ...)` or `standalone ESXi host (VMware ESXi ...)`."""
        data = self.data()
        kind = "standalone ESXi host" if data["standalone"] else "vCenter"
        return f"{kind} {self.client.endpoint.where}" + (f" ({data['product']})" if data["product"] else "")

    # ------------------------------------------------------------ virtual machines
    def find_vm(self, name: str, refresh: bool = False, *, datacenter: str | None = None,
                folder: str | None = None) -> Any:
        """The VM named `name` (any case) in `datacenter` (all of them when None) and, when given, `folder`;
        None when there is none; a PlacementError when the name is ambiguous there."""
        data = self.data(refresh)
        found = data.get("vm_index", {}).get(name.lower(), [])
        where = ""
        if datacenter is not None:
            dc = data["dc_by_name"].get(datacenter)
            if dc is None:
                raise PlacementError(f"datacenter '{datacenter}' not found in vCenter; datacenters there: "
                                     f"{_names(data['dc_by_name'])}")
            found = [f for f in found if f[1] == dc]
            where = f" in datacenter {datacenter}"
        if folder:
            path = folder.strip("/")
            found = [f for f in found if f[2] == path]
            where += f" in folder {path}"
        if len(found) > 1:
            dcs = sorted({data["dcs"].get(f[1], {}).get("name", "?") for f in found})
            hint = ("; name the server's datacenter (servers[].datacenter or connectors.vsphere.datacenter)"
                    if datacenter is None and len(dcs) > 1 else "; rename or remove the extra ones")
            raise PlacementError(f"{len(found)} VMs are named {name}{where or ' in vCenter'} "
                                 f"(datacenters: {', '.join(dcs)}){hint}")
        return found[0][0] if found else None

    def lookup(self, spec: dict[str, Any], default_datacenter: str | None, refresh: bool = False) -> Any:
        """The VM of an inventory server: its vm_name (or name), in its datacenter and folder."""
        return self.find_vm(vm_name_of(spec), refresh, datacenter=spec.get("datacenter") or default_datacenter,
                            folder=spec.get("folder"))

    def remember_vm(self, name: str, ref: Any, placement: Placement) -> None:
        with self._lock:
            if self._data is not None:
                entries = [e for e in self._data["vm_index"].get(name.lower(), [])
                           if not (e[1] == placement.datacenter and e[2] == placement.folder_path)]
                entries.append((ref, placement.datacenter, placement.folder_path))
                self._data["vm_index"][name.lower()] = entries

    def forget_vm(self, name: str, ref: Any) -> None:
        with self._lock:
            if self._data is not None:
                entries = [e for e in self._data["vm_index"].get(name.lower(), []) if e[0] != ref]
                self._data["vm_index"][name.lower()] = entries

    def templates(self, datacenter: str | None = None) -> dict[str, Any]:
        data = self.data()
        return {name: ref for dc, inside in data["per_dc"].items()
                if datacenter is None or data["dcs"][dc]["name"] == datacenter
                for name, ref in inside["templates"].items()}

    def dvs_port(self, network: Any) -> tuple[str, str] | None:
        """(switch uuid, port group key) when `network` is a distributed port group."""
        data = self.data()
        pg = data["portgroups"].get(network)
        if pg is None:
            return None
        return data["switch_uuid"].get(pg.get("config.distributedVirtualSwitch")), pg.get("key")

    def network_name(self, network: Any) -> str | None:
        for dc in self.data()["per_dc"].values():
            for name, ref in dc["networks"].items():
                if ref == network:
                    return name
        return None

    def object_name(self, obj: Any) -> str | None:
        data = self.data()
        for table in ("clusters", "dcs", "folders", "pools"):
            props = data[table].get(obj)
            if props:
                return props.get("name")
        for dc in data["per_dc"].values():
            for kind in ("datastores", "networks"):
                for name, ref in dc[kind].items():
                    if ref == obj:
                        return name
        return None

    def folder_path(self, folder: Any) -> str:
        """`a/b` of a VM folder below its datacenter's vm folder ('' for the root)."""
        data = self.data()
        return _folder_path(data["folders"], {p["vmFolder"] for p in data["dcs"].values()}, folder)

    # ------------------------------------------------------------ placement
    def place(self, spec: dict[str, Any], default_datacenter: str | None, *, need_template: bool = True
              ) -> Placement:
        """Every object a server needs, or a PlacementError listing each missing one.

        An existing VM needs no template (discovered servers often name none that exists).
        """
        try:
            return self._place(self.data(), spec, default_datacenter, need_template)
        except PlacementError:
            return self._place(self.data(refresh=True), spec, default_datacenter, need_template)  # it may be new

    def _place(self, data: dict[str, Any], spec: dict[str, Any], default_datacenter: str | None,
               need_template: bool) -> Placement:
        name = spec["name"]
        where = f"servers[{name}]"
        dc_name = spec.get("datacenter") or default_datacenter
        if dc_name is None:
            if len(data["dc_by_name"]) != 1:
                raise PlacementError(f"{where}: no datacenter given and vCenter has {len(data['dc_by_name'])} "
                                     f"({_names(data['dc_by_name'])}); set datacenter on the server or "
                                     "connectors.vsphere.datacenter")
            dc_name = next(iter(data["dc_by_name"]))
        dc = data["dc_by_name"].get(dc_name)
        if dc is None:
            raise PlacementError(f"{where}.datacenter: '{dc_name}' not found in vCenter; datacenters there: "
                                 f"{_names(data['dc_by_name'])}")
        inside = data["per_dc"][dc]
        problems = []

        def pick(field: str, kind: str, label: str) -> Any:
            value = spec.get(field)
            found = inside[kind].get(value)
            if found is None:
                problems.append(f"{where}.{field}: {label} '{value}' not found in datacenter {dc_name}; "
                                f"{label}s there: {_names(inside[kind])}")
            return found

        template = pick("template", "templates", "template") if need_template else \
            inside["templates"].get(spec.get("template"))
        cluster = pick("cluster", "clusters", "cluster")
        datastore = pick("datastore", "datastores", "datastore")
        network = pick("network", "networks", "network")
        pool = None
        if cluster is not None:
            cprops = data["clusters"][cluster]
            pool = cprops.get("resourcePool")
            if spec.get("resource_pool"):
                pools = {p["name"]: ref for ref, p in data["pools"].items()
                         if p.get("owner") == cluster and ref != cprops.get("resourcePool")}
                pool = pools.get(spec["resource_pool"])
                if pool is None:
                    problems.append(f"{where}.resource_pool: '{spec['resource_pool']}' not found in cluster "
                                    f"{spec['cluster']}; pools there: {_names(pools)}")
            if datastore is not None and datastore not in (cprops.get("datastore") or []):
                names = {self.object_name(d) or "?": d for d in cprops.get("datastore") or []}
                problems.append(f"{where}.datastore: '{spec['datastore']}' is not mounted on the hosts of cluster "
                                f"{spec['cluster']}; datastores there: {_names(names)}")
            if network is not None and network not in (cprops.get("network") or []):
                names = {self.network_name(n) or "?": n for n in cprops.get("network") or []}
                problems.append(f"{where}.network: '{spec['network']}' is not available on the hosts of cluster "
                                f"{spec['cluster']}; networks there: {_names(names)}")
        folder_path = (spec.get("folder") or "").strip("/")
        folder = data["dcs"][dc]["vmFolder"]
        if folder_path:
            for part in folder_path.split("/"):
                children = {p["name"]: ref for ref, p in data["folders"].items() if p.get("parent") == folder}
                if part not in children:
                    problems.append(f"{where}.folder: folder '{folder_path}' not found in datacenter {dc_name} "
                                    f"('{part}' missing; folders there: {_names(children)})")
                    break
                folder = children[part]
        if problems:
            raise PlacementError("; ".join(problems))
        return Placement(dc, dc_name, template, cluster, spec["cluster"], pool, datastore, spec["datastore"],
                         network, spec["network"], folder, folder_path)
