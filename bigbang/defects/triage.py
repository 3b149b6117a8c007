"""Pure triage: observations -> defect keys, problem groups and priorities.

An observation is one sighting of something wrong (or, for a probe, right) with
one target. Defects are keyed by target + check signature, so the same failure
seen again is counted, never filed again. A signature that recurs on several
devices of the same model is one problem. Nothing here touches a database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bigbang.inventory.model import Inventory, PriorityRule

SOURCES = ("rollout", "field", "probe", "user")
TECHNICAL_SOURCES = ("rollout", "probe")  # defects a passing probe may resolve
PRIORITY_NAMES = {1: "P1 critical", 2: "P2 high", 3: "P3 normal", 4: "P4 low"}

_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Observation:
    """One sighting. `obs_id` is stable: the same sighting collected twice counts once."""

    obs_id: str
    source: str  # rollout | field | probe | user
    target: str  # hostname, server name or location id
    check: str  # ws.image, ws.verify, field.network, user.printer ...
    message: str
    observed_at: float
    failing: bool = True  # False: a probe that passed
    location_id: str | None = None
    category: str | None = None
    reporter: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """What the inventory knows of an observation's target."""

    name: str
    kind: str  # workstation | thin_client | server | location | unknown
    location_id: str | None
    model: str
    criticality: str
    users: int  # people working on it (a device with a user, or the devices a server serves)


def normalise(message: str) -> str:
    """The failure without its variable parts (numbers, spacing, case)."""
    text = _SPACE.sub(" ", _DIGITS.sub("#", message.strip().lower()))
    return text[:200]


def signature(obs: Observation) -> str:
    """What makes two failures the same failure."""
    if obs.source in ("user", "field"):
        return obs.check  # people describe one fault in many words: the category is the signature
    return f"{obs.check}:{normalise(obs.message)}"


def _digest(*parts: str, size: int = 5) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).hexdigest()


def defect_key(target: str, sig: str, scope: str = "") -> str:
    """Stable per run (`scope`), so a rehearsal's defects never merge with the live weekend's."""
    return "D-" + _digest(scope, target.lower(), sig)


def problem_key(model: str, sig: str, scope: str = "") -> str:
    return "P-" + _digest(scope, model.lower(), sig)


def category_of(obs: Observation) -> str:
    if obs.category:
        return obs.category
    prefix = obs.check.split(".", 1)[0]
    return {"ws": "workstation", "tc": "thin-client", "srv": "server", "loc": "location"}.get(prefix, prefix)


class TargetIndex:
    """Inventory look-ups for targets, built once per inventory."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._targets: dict[str, Target] = {}
        served: dict[str, list[Any]] = {}
        for loc in inventory.locations:
            for req in loc.requires:
                served.setdefault(req.lower(), []).append(loc)
            for ws in loc.workstations:
                self._targets[ws.hostname] = Target(ws.hostname, "workstation", loc.id, ws.model, loc.criticality, 1)
            for tc in loc.thin_clients:
                self._targets[tc.hostname] = Target(tc.hostname, "thin_client", loc.id, tc.model or "thin client",
                                                    loc.criticality, 1)
            self._targets[loc.id] = Target(loc.id, "location", loc.id, "location", loc.criticality,
                                           max(1, len(loc.devices)))
        order = ("normal", "high", "critical")
        for srv in inventory.servers:
            locs = served.get(srv.name, [])
            crit = max((loc.criticality for loc in locs), key=order.index, default="high")
            users = sum(len(loc.devices) for loc in locs) or 1
            self._targets[srv.name] = Target(srv.name, "server", None, srv.role or "server", crit, users)

    def get(self, name: str) -> Target | None:
        return self._targets.get(name) or self._targets.get(name.lower())

    def resolve(self, name: str, location_id: str | None = None) -> Target:
        found = self.get(name)
        if found is not None:
            return found
        crit = "normal"
        if location_id and location_id in self.inventory.location_by_id:
            crit = self.inventory.location_by_id[location_id].criticality
        return Target(name, "unknown", location_id, "unknown", crit, 1)


def age_factor(rule: PriorityRule, age_seconds: float) -> float:
    return min(1.0 + max(0.0, age_seconds) / rule.age_step, rule.max_age_factor) if rule.age_step else 1.0


def score(rule: PriorityRule, *, criticality: str, affected: int, age_seconds: float, category: str) -> float:
    """Criticality x affected x age (x an optional category weight)."""
    return (rule.criticality.get(criticality, 1.0) * max(1, affected) * age_factor(rule, age_seconds)
            * rule.categories.get(category, 1.0))


def priority(rule: PriorityRule, value: float) -> int:
    for level, threshold in enumerate(rule.levels, start=1):
        if value >= threshold:
            return level
    return 4


def group_problems(defects: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Problem key -> its open defects, for signatures that recur on two or more targets."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in defects:
        if d["state"] in ("resolved", "closed"):
            continue
        groups.setdefault(problem_key(d["model"], d["signature"], d["run_id"] or ""), []).append(d)
    return {k: v for k, v in groups.items() if len({d["target"] for d in v}) >= 2}


def unit_sample(target: str, round_no: int) -> float:
    """A deterministic number in [0, 1) per target and probe round (which healthy devices to probe)."""
    digest = hashlib.blake2b(f"{target}\x1f{round_no}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
