"""How one inventory server compares with its pool: create, reconfigure, drift, already fine, or an error.

Shared by the connector's precheck and `bigbang xen diff`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigbang.sizes import MiB, memory_label, memory_mb_of
from bigbang.xen.catalog import Catalog, Placement, PlacementError
from bigbang.xen.client import XenClient
from bigbang.xen.machine import Change, GiB, VmState, differences, read_vm

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


def capacity_problem(client: XenClient, catalog: Catalog, spec: dict[str, Any], placement: Placement) -> str | None:
    """Room for a new server: its disks on the SR, its memory on one host."""
    name = spec["name"]
    need = sum(spec.get("disks_gb") or []) * GiB
    free = catalog.free_bytes(placement.sr)
    if need > free:
        return (f"servers[{name}].datastore: SR {placement.sr_name} has {free / GiB:,.0f} GB free, the disks need "
                f"{need / GiB:,.0f} GB")
    memory = memory_mb_of(spec) * MiB
    best = 0
    for host in catalog.data()["hosts"]:
        best = max(best, int(client.check("host.compute_free_memory", host, what="read the hosts' free memory")))
        if best >= memory:
            return None
    field = "memory_mb" if spec.get("memory_mb") is not None else "memory_gb"
    return (f"servers[{name}].{field}: no host of pool {placement.pool_name} has {memory_label(spec)} free "
            f"(most on one host: {best / GiB:,.1f} GB)")


def assess(client: XenClient, catalog: Catalog, spec: dict[str, Any], *, drift_policy: str,
           check_capacity: bool = True) -> Assessment:
    name = spec["name"]
    try:
        ref = catalog.find_vm(name)
        if ref is None and spec.get("existing"):
            return Assessment(name, "error", f"servers[{name}] is marked existing: true, but pool "
                                             f"{catalog.pool_name} has no VM named {name}")
        placement = catalog.place(spec, need_template=ref is None)
    except PlacementError as exc:
        return Assessment(name, "error", str(exc))
    if ref is None:
        how = "clone" if placement.sr in placement.template_srs else "copy"
        problem = capacity_problem(client, catalog, spec, placement) if check_capacity else None
        if problem:
            return Assessment(name, "error", problem, placement=placement)
        return Assessment(name, "create", f"{how} {spec['template']} to {placement.pool_name}/{placement.sr_name} "
                                          f"on {placement.network_name}", placement=placement)
    state = read_vm(client, ref)
    changes = tuple(differences(state, spec, catalog))
    if not changes:
        return Assessment(name, "fine", "exists and matches the inventory", placement=placement, state=state)
    listed = ", ".join(map(str, changes))
    if any(not c.fixable for c in changes):
        return Assessment(name, "drift", f"differs in a way bigbang cannot fix: {listed}", changes, placement, state)
    if state.first_boot_pending or drift_policy == "reconfigure":
        return Assessment(name, "reconfigure", f"reconfigure: {listed}", changes, placement, state)
    return Assessment(name, "drift", f"differs from the inventory: {listed}; left unchanged because "
                                     "connectors.xen.drift is 'report' (set it to 'reconfigure' to apply)",
                      changes, placement, state)
