"""The plan: exactly what a run will do, as a pure function of the inventory.

Phases:
  1. prechecks  - every server's placement is checked; existing VMs are snapshotted
  2. servers    - provisioned and verified in dependency waves (a wave needs only earlier waves)
  3. locations  - per location: precheck, then every device's work steps
  4. verify     - every device's verification step, then the location's verdict

A location starts when the server waves holding its `requires` are done and the
location before it in its team's chain is done (a team works `parallel_locations`
locations at once). Devices of a location run `parallel_devices` at a time, each
device's steps in order. Steps are ids `target:kind`, stable across runs: the
ledger records outcomes by these ids, which is what makes resume exact.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from bigbang.connectors.simulated import simulates, substitute
from bigbang.inventory.model import Inventory, Location, Server, ThinClient, Workstation


@dataclass(frozen=True)
class StepKind:
    kind: str
    phase: str
    title: str
    target: str  # server | workstation | thin_client | location


STEP_KINDS: dict[str, StepKind] = {
    k.kind: k
    for k in (
        StepKind("srv.precheck", "prechecks", "check template, cluster, datastore and network", "server"),
        StepKind("srv.snapshot", "prechecks", "snapshot the existing VM", "server"),
        StepKind("srv.provision", "servers", "clone, configure, customise and power on", "server"),
        StepKind("srv.verify", "servers", "guest tools running with the planned IP", "server"),
        StepKind("loc.precheck", "locations", "required servers ready", "location"),
        StepKind("ws.prestage", "locations", "pre-stage MAC, serial and image on the deployment server", "workstation"),
        StepKind("ws.image", "locations", "wake and re-image to the target image", "workstation"),
        StepKind("tc.reassign", "locations", "write the location profile, apply and reboot", "thin_client"),
        StepKind("ws.verify", "verify", "target image, hostname, domain and software baseline", "workstation"),
        StepKind("tc.verify", "verify", "reports the new profile and hostname", "thin_client"),
        StepKind("loc.signoff", "verify", "the location's technician signs it off", "location"),
        StepKind("loc.verify", "verify", "location verdict against its failure threshold", "location"),
    )
}
PHASES = ("prechecks", "servers", "locations", "verify")
INTERNAL_CONNECTOR = "bigbang"  # steps the orchestrator decides itself, without touching a device


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    target: str
    connector: str
    params: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()

    @property
    def phase(self) -> str:
        return STEP_KINDS[self.kind].phase

    @property
    def internal(self) -> bool:
        return self.connector == INTERNAL_CONNECTOR

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "connector": self.connector,
                "params": self.params, "after": list(self.after)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(data["id"], data["kind"], data["target"], data["connector"], dict(data["params"]),
                   tuple(data["after"]))


@dataclass(frozen=True)
class Policy:
    """The rules the run follows, frozen with its plan."""

    retries: int
    retry_delay: float
    max_fail_percent: float
    halt_on_server_failure: bool
    halt_failed_locations_percent: float | None
    signoff_timeout: float
    start_rule: str  # slot | checkin | slot_or_checkin (see bigbang.schedule.start)
    window_end_utc: float  # a location waiting for a check-in starts anyway when the window closes

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class DevicePlan:
    hostname: str
    kind: str  # workstation | thin_client
    steps: tuple[Step, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "kind": self.kind, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DevicePlan:
        return cls(data["hostname"], data["kind"], tuple(Step.from_dict(s) for s in data["steps"]))


@dataclass(frozen=True)
class ServerPlan:
    name: str
    wave: int
    depends_on: tuple[str, ...]
    prechecks: tuple[Step, ...]
    steps: tuple[Step, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wave": self.wave, "depends_on": list(self.depends_on),
                "prechecks": [s.to_dict() for s in self.prechecks], "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerPlan:
        return cls(data["name"], data["wave"], tuple(data["depends_on"]),
                   tuple(Step.from_dict(s) for s in data["prechecks"]), tuple(Step.from_dict(s) for s in data["steps"]))


@dataclass(frozen=True)
class LocationPlan:
    id: str
    name: str
    team: str
    criticality: str
    requires: tuple[str, ...]
    waits_for_waves: tuple[int, ...]
    after_location: str | None  # the previous location in this team's chain
    chain: int  # which of the team's parallel chains
    parallel_devices: int
    max_fail_percent: float
    precheck: Step
    devices: tuple[DevicePlan, ...]
    signoff: Step
    verify: Step
    start_offset: float | None = None  # seconds after the window opens; None: as soon as it may

    def steps(self) -> Iterator[Step]:
        yield self.precheck
        for device in self.devices:
            yield from device.steps
        yield self.signoff
        yield self.verify

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(requires=list(self.requires), waits_for_waves=list(self.waits_for_waves),
                   precheck=self.precheck.to_dict(), signoff=self.signoff.to_dict(), verify=self.verify.to_dict(),
                   devices=[d.to_dict() for d in self.devices])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocationPlan:
        values = dict(data)
        values.update(requires=tuple(data["requires"]), waits_for_waves=tuple(data["waits_for_waves"]),
                      precheck=Step.from_dict(data["precheck"]), signoff=Step.from_dict(data["signoff"]),
                      verify=Step.from_dict(data["verify"]),
                      devices=tuple(DevicePlan.from_dict(d) for d in data["devices"]))
        return cls(**values)


@dataclass(frozen=True)
class Plan:
    rollout: str
    mode: str
    inventory_digest: str
    servers: tuple[ServerPlan, ...]
    waves: tuple[tuple[str, ...], ...]
    locations: tuple[LocationPlan, ...]
    policy: Policy

    @property
    def retries(self) -> int:
        return self.policy.retries

    @property
    def retry_delay(self) -> float:
        return self.policy.retry_delay

    def steps(self) -> Iterator[Step]:
        for server in self.servers:
            yield from server.prechecks
        for server in self.servers:
            yield from server.steps
        for loc in self.locations:
            yield from loc.steps()

    @property
    def step_count(self) -> int:
        return sum(1 for _ in self.steps())

    def location(self, location_id: str) -> LocationPlan:
        return self._locations_by_id[location_id]

    @cached_property
    def _locations_by_id(self) -> dict[str, LocationPlan]:
        return {loc.id: loc for loc in self.locations}

    @cached_property
    def precheck_step_ids(self) -> tuple[str, ...]:
        """The prechecks' step ids (every location's start waits for their end)."""
        return tuple(s.id for srv in self.servers for s in srv.prechecks)

    def wave_step_ids(self, index: int) -> tuple[str, ...]:
        """The step ids of server wave `index`."""
        return self._wave_step_ids[index] if 0 <= index < len(self._wave_step_ids) else ()

    @cached_property
    def _wave_step_ids(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(s.id for srv in self.servers if srv.wave == index for s in srv.steps)
                     for index in range(len(self.waves)))

    def server(self, name: str) -> ServerPlan:
        for srv in self.servers:
            if srv.name == name:
                return srv
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout,
            "mode": self.mode,
            "inventory_digest": self.inventory_digest,
            "policy": self.policy.to_dict(),
            "phases": [
                {"name": phase, "steps": sum(1 for s in self.steps() if s.phase == phase)} for phase in PHASES
            ],
            "waves": [list(w) for w in self.waves],
            "servers": [s.to_dict() for s in self.servers],
            "locations": [loc.to_dict() for loc in self.locations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            rollout=data["rollout"], mode=data["mode"], inventory_digest=data["inventory_digest"],
            servers=tuple(ServerPlan.from_dict(s) for s in data["servers"]),
            waves=tuple(tuple(w) for w in data["waves"]),
            locations=tuple(LocationPlan.from_dict(loc) for loc in data["locations"]),
            policy=Policy(**data["policy"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @cached_property
    def digest(self) -> str:
        """Identifies what the plan does; editing comments or formatting of the inventory keeps it. Computed
        once per plan (a frozen value)."""
        return digest_of(self.to_dict())


def digest_of(plan_dict: dict[str, Any]) -> str:
    return frozen_json(plan_dict)[1]


def frozen_json(plan_dict: dict[str, Any]) -> tuple[str, str]:
    """The plan's JSON as the ledger freezes it, and its digest: one serialization for both (Höglandet's is
    18 MB). It leaves out `inventory_digest`, which the ledger keeps beside it (see Ledger.frozen_plan)."""
    content = {k: v for k, v in plan_dict.items() if k != "inventory_digest"}
    text = json.dumps(content, sort_keys=True, default=str)
    return text, hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- building

def build_plan(inventory: Inventory, mode: str = "rehearsal", *, order: list[str] | None = None,
               slots: dict[str, tuple[str, float, int]] | None = None) -> Plan:
    """The plan for `inventory`.

    `order` (location ids) overrides the inventory's order. `slots` (from a schedule) maps a
    location id to (team id, start offset in seconds after the window opens): the location is
    dispatched to that team, in start order, and does not start before its offset. An optional
    third item picks which of the team's parallel chains (crews) works it.
    """
    if slots:
        order = sorted(slots, key=lambda lid: (slots[lid][1], lid))
    waves = _waves(inventory.servers)
    wave_of = {name: i for i, wave in enumerate(waves) for name in wave}

    def conn(name: str) -> str:
        return substitute(mode, name)

    servers = []
    for srv in sorted(inventory.servers, key=lambda s: (wave_of[s.name], s.name)):
        spec = {**srv.model_dump(exclude={"kind", "connector"}, mode="json"), "live_connector": srv.connector}
        pre = [Step(f"{srv.name}:srv.precheck", "srv.precheck", srv.name, conn(srv.connector), spec)]
        if srv.existing:
            pre.append(Step(f"{srv.name}:srv.snapshot", "srv.snapshot", srv.name, conn(srv.connector),
                            {"snapshot": _snapshot_name(inventory.rollout.name)}, (pre[0].id,)))
        deps = tuple(f"{d.lower()}:srv.verify" for d in srv.depends_on)
        provision = Step(f"{srv.name}:srv.provision", "srv.provision", srv.name, conn(srv.connector), spec,
                         (pre[-1].id, *deps))
        verify = Step(f"{srv.name}:srv.verify", "srv.verify", srv.name, conn(srv.connector),
                      {"ip": (srv.customization.ip if srv.customization else "dhcp")}, (provision.id,))
        servers.append(ServerPlan(srv.name, wave_of[srv.name], tuple(d.lower() for d in srv.depends_on),
                                  tuple(pre), (provision, verify)))

    by_id = inventory.location_by_id
    location_order = [by_id[i] for i in order] if order else list(inventory.locations)
    teams = inventory.team_by_id
    chain_tail: dict[tuple[str, int], str] = {}
    team_counter: dict[str, int] = {}
    policy = inventory.rollout.failure_policy
    locations = []
    for loc in location_order:
        team_id = slots[loc.id][0] if slots and loc.id in slots else loc.team
        team = teams[team_id]
        n = team_counter.get(team_id, 0)
        team_counter[team_id] = n + 1
        slot = slots.get(loc.id) if slots else None
        chain = slot[2] if slot and len(slot) > 2 else n % team.capacity.parallel_locations  # (team, offset, crew)
        after = chain_tail.get((team_id, chain))
        chain_tail[(team_id, chain)] = loc.id
        requires = tuple(sorted(r.lower() for r in loc.requires))
        precheck = Step(f"{loc.id}:loc.precheck", "loc.precheck", loc.id, INTERNAL_CONNECTOR,
                        {"requires": list(requires)}, tuple(f"{r}:srv.verify" for r in requires))
        devices = [_workstation_plan(inventory, loc, ws, conn, precheck.id) for ws in loc.workstations]
        devices += [_thin_client_plan(inventory, loc, tc, i, conn, precheck.id)
                    for i, tc in enumerate(loc.thin_clients, start=1)]
        signoff = Step(f"{loc.id}:loc.signoff", "loc.signoff", loc.id,
                       conn(INTERNAL_CONNECTOR) if inventory.rehearsal.simulate_signoff else INTERNAL_CONNECTOR,
                       {"team": team_id}, tuple(d.steps[-1].id for d in devices))
        verify = Step(f"{loc.id}:loc.verify", "loc.verify", loc.id, INTERNAL_CONNECTOR,
                      {"max_fail_percent": policy.max_fail_percent, "devices": len(devices)}, (signoff.id,))
        locations.append(LocationPlan(
            id=loc.id, name=loc.name, team=team_id, criticality=loc.criticality, requires=requires,
            waits_for_waves=tuple(sorted({wave_of[r] for r in requires})), after_location=after, chain=chain,
            parallel_devices=team.capacity.parallel_devices, max_fail_percent=policy.max_fail_percent,
            precheck=precheck, devices=tuple(devices), signoff=signoff, verify=verify,
            start_offset=slots[loc.id][1] if slots and loc.id in slots else None,
        ))
    return Plan(
        rollout=inventory.rollout.name, mode=mode, inventory_digest=inventory.digest,
        servers=tuple(servers), waves=tuple(tuple(w) for w in waves), locations=tuple(locations),
        policy=Policy(
            retries=policy.retries, retry_delay=policy.retry_delay, max_fail_percent=policy.max_fail_percent,
            halt_on_server_failure=policy.halt_rollout.on_server_failure,
            halt_failed_locations_percent=policy.halt_rollout.failed_locations_percent,
            signoff_timeout=float(inventory.rollout.signoff_timeout),
            start_rule="slot" if simulates(mode) else inventory.schedule.start,  # a simulated crew is on time
            window_end_utc=inventory.rollout.window.end_utc.timestamp(),
        ),
    )


def _workstation_plan(inv: Inventory, loc: Location, ws: Workstation, conn: Callable[[str], str],
                      precheck_id: str) -> DevicePlan:
    image = inv.rollout.images[ws.target_image]
    baseline = inv.rollout.baselines.get(ws.baseline) if ws.baseline else None
    params = {
        "location": loc.id, "mac": ws.mac, "serial": ws.serial, "model": ws.model,
        "address": ws.address or ws.hostname, "current_image": ws.current_image,
        "target_image": ws.target_image, "image_version": image.version,
        "hostname": ws.new_hostname or ws.hostname, "domain": ws.domain,
        "baseline": ws.baseline, "packages": list(baseline.packages) if baseline else [],
        "broadcast": loc.network.broadcast if loc.network else None, "vars": dict(ws.vars),
        "live_connector": ws.connector,
    }
    h = ws.hostname
    prestage = Step(f"{h}:ws.prestage", "ws.prestage", h, conn(ws.connector), params, (precheck_id,))
    image_step = Step(f"{h}:ws.image", "ws.image", h, conn(ws.connector), params, (prestage.id,))
    verify = Step(f"{h}:ws.verify", "ws.verify", h, conn(ws.connector), params, (image_step.id,))
    return DevicePlan(h, "workstation", (prestage, image_step, verify))


def _thin_client_plan(inv: Inventory, loc: Location, tc: ThinClient, index: int, conn: Callable[[str], str],
                      precheck_id: str) -> DevicePlan:
    profile = inv.rollout.thin_client_profiles[tc.target_profile]
    slug = re.sub(r"[^a-z0-9-]+", "-", loc.id.lower()).strip("-")
    new_hostname = tc.new_hostname or profile.hostname_pattern.format(location=slug, index=index)
    params = {
        "location": loc.id, "location_name": loc.name, "mac": tc.mac, "address": tc.address or tc.hostname,
        "current_profile": tc.current_profile, "target_profile": tc.target_profile,
        "firmware": profile.firmware, "storefront_url": profile.storefront_url,
        "settings": dict(profile.settings), "hostname": new_hostname, "vars": dict(tc.vars),
        "live_connector": tc.connector,
    }
    h = tc.hostname
    reassign = Step(f"{h}:tc.reassign", "tc.reassign", h, conn(tc.connector), params, (precheck_id,))
    verify = Step(f"{h}:tc.verify", "tc.verify", h, conn(tc.connector), params, (reassign.id,))
    return DevicePlan(h, "thin_client", (reassign, verify))


def _waves(servers: list[Server]) -> list[list[str]]:
    """Servers grouped by dependency depth; the loader has already refused cycles."""
    deps = {s.name: [d.lower() for d in s.depends_on] for s in servers}
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 0  # guards against a cycle slipping through
            depth[name] = 1 + max((level(d) for d in deps.get(name, []) if d in deps), default=-1)
        return depth[name]

    for name in deps:
        level(name)
    waves: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in sorted(deps):
        waves[depth[name]].append(name)
    return waves


def _snapshot_name(rollout: str) -> str:
    return "bigbang-before-" + re.sub(r"[^A-Za-z0-9]+", "-", rollout).strip("-").lower()
