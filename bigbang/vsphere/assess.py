"""How one inventory server compares with vCenter: create, reconfigure, drift, already fine, or an error.

Shared by the connector's precheck, `bigbang vcenter diff` and `bigbang plan --vcenter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigbang.vsphere.catalog import Catalog, Placement, PlacementError, vm_name_of
from bigbang.vsphere.client import VcenterClient
from bigbang.vsphere.machine import VM_PROPS, Change, VmState, differences, vm_state

ACTIONS = ("create", "reconfigure", "drift", "fine", "error")


@dataclass(frozen=True)
class Assessment:
    name: str
    action: str  # one of ACTIONS
    message: str
    changes: tuple[Change, ...] = ()
    placement: Placement | None = None
    state: VmState | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.name, "action": self.action, "message": self.message,
                "changes": [str(c) for c in self.changes]}


def read_vm(client: VcenterClient, ref: Any) -> VmState:
    props = client.retrieve([ref], VM_PROPS).get(ref)
    if props is None:
        raise PlacementError(f"the VM {ref} disappeared from vCenter while bigbang was reading it")
    return vm_state(ref, props)


def where_text(spec: dict[str, Any], default_datacenter: str | None) -> str:
    """` in datacenter D, folder F` for messages about a server's VM."""
    dc = spec.get("datacenter") or default_datacenter
    folder = (spec.get("folder") or "").strip("/")
    return (f" in datacenter {dc}" if dc else "") + (f", folder {folder}" if folder else "")


def assess(client: VcenterClient, catalog: Catalog, spec: dict[str, Any], *, default_datacenter: str | None,
           drift_policy: str) -> Assessment:
    name = spec["name"]
    try:
        ref = catalog.lookup(spec, default_datacenter)
        if ref is None and spec.get("existing"):
            return Assessment(name, "error", f"servers[{name}] is marked existing: true, but vCenter has no VM "
                                             f"named {vm_name_of(spec)}{where_text(spec, default_datacenter)}")
        placement = catalog.place(spec, default_datacenter, need_template=ref is None)
    except PlacementError as exc:
        return Assessment(name, "error", str(exc))
    if ref is None and catalog.data()["standalone"]:
        return Assessment(name, "error", f"servers[{name}]: {catalog.endpoint_kind()} is a standalone ESXi host, "
                                         f"not vCenter, and cannot clone template {spec['template']}; create "
                                         f"{vm_name_of(spec)} through a vCenter, or make it by hand and mark it "
                                         "existing: true", placement=placement)
    if ref is None:
        where = f"{placement.cluster_name}/{placement.datastore_name}"
        return Assessment(name, "create", f"clone {spec['template']} to {where} on {placement.network_name}",
                          placement=placement)
    state = read_vm(client, ref)
    if state.template:
        return Assessment(name, "error", f"servers[{name}]: '{vm_name_of(spec)}' is a template in vCenter, not a VM",
                          placement=placement, state=state)
    changes = tuple(differences(state, spec, catalog))
    if not changes:
        return Assessment(name, "fine", "exists and matches the inventory", placement=placement, state=state)
    listed = ", ".join(map(str, changes))
    if any(not c.fixable for c in changes):
        return Assessment(name, "drift", f"differs in a way bigbang cannot fix: {listed}", changes,
                          placement, state)
    if state.first_boot_pending or drift_policy == "reconfigure":
        return Assessment(name, "reconfigure", f"reconfigure: {listed}", changes, placement, state)
    return Assessment(name, "drift", f"differs from the inventory: {listed}; left unchanged because "
                                     "connectors.vsphere.drift is 'report' (set it to 'reconfigure' to apply)",
                      changes, placement, state)
