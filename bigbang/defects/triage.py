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
# Named by how fast support acts, so they never read like a site's criticality (normal/high/critical).
PRIORITY_NAMES = {1: "P1 immediate", 2: "P2 urgent", 3: "P3 soon", 4: "P4 planned"}
KIND_WORDS = {"unusable": "device unusable", "degraded": "works partly", "report": "reported by people"}
_CHANGE_CHECKS = ("ws.prestage", "ws.image", "tc.reassign", "srv.precheck", "srv.snapshot", "srv.provision")

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
    serial: str = ""
    mac: str = ""
    user_id: str = ""  # the device's user (inventory `user`), with the name and phone from support.users
    user_name: str = ""
    user_phone: str = ""
    location_name: str = ""


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
        people = {u.id.lower(): u for u in inventory.support.users}
        served: dict[str, list[Any]] = {}
        for loc in inventory.locations:
            for req in loc.requires:
                served.setdefault(req.lower(), []).append(loc)
            for dev in loc.devices:
                uid = getattr(dev, "user", None) or ""
                person = people.get(uid.lower()) if uid else None
                model = getattr(dev, "model", None) or ("thin client" if dev.kind == "thin_client" else "")
                self._targets[dev.hostname] = Target(
                    dev.hostname, dev.kind, loc.id, model, loc.criticality, 1,
                    serial=getattr(dev, "serial", None) or "", mac=getattr(dev, "mac", "") or "", user_id=uid,
                    user_name=person.name if person else "", user_phone=(person.phone or "") if person else "",
                    location_name=loc.name)
            self._targets[loc.id] = Target(loc.id, "location", loc.id, "location", loc.criticality,
                                           max(1, len(loc.devices)), location_name=loc.name)
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


def failure_kind(source: str, check: str, message: str) -> str:
    """unusable (the change never happened), degraded (a check failed), report (people's words)."""
    if source in ("user", "field"):
        return "report"
    if check in _CHANGE_CHECKS or message.startswith(("not done", "not in its target state")) or "never finished" in message:
        return "unusable"
    return "degraded"


def score(rule: PriorityRule, *, criticality: str, affected: int, age_seconds: float, category: str,
          kind: str = "degraded") -> float:
    """Criticality x people affected x kind of failure x age (x an optional category weight)."""
    return (rule.criticality.get(criticality, 1.0) * max(1, affected) * age_factor(rule, age_seconds)
            * rule.categories.get(category, 1.0) * rule.kinds.get(kind, 1.0))


def priority(rule: PriorityRule, value: float) -> int:
    for level, threshold in enumerate(rule.levels, start=1):
        if value >= threshold:
            return level
    return 4


def explain(rule: PriorityRule, *, criticality: str, affected: int, age_seconds: float, category: str,
            kind: str) -> str:
    """The score in words, e.g. 'critical site x10 · 1 person x1 · device unusable x2 · open 3 h x1.1 = 22 -> P1'."""
    value = score(rule, criticality=criticality, affected=affected, age_seconds=age_seconds, category=category,
                  kind=kind)
    parts = [f"{criticality} site x{rule.criticality.get(criticality, 1.0):g}",
             f"{max(1, affected)} {'person' if max(1, affected) == 1 else 'people'} affected x{max(1, affected)}",
             f"{KIND_WORDS.get(kind, kind)} x{rule.kinds.get(kind, 1.0):g}",
             f"open {max(0.0, age_seconds) / 3600:.0f} h x{age_factor(rule, age_seconds):.2f}"]
    if category in rule.categories:
        parts.append(f"category {category} x{rule.categories[category]:g}")
    level = priority(rule, value)
    return f"{' * '.join(parts)} = {value:.3g} -> {PRIORITY_NAMES[level]}"


def group_problems(defects: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Problem key -> its open defects, for signatures that recur on two or more targets."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in defects:
        if d["state"] in ("resolved", "closed"):
            continue
        if d.get("duplicate_of"):
            continue
        groups.setdefault(problem_key(d["model"], d["signature"], d["run_id"] or ""), []).append(d)
    return {k: v for k, v in groups.items() if len({d["target"] for d in v}) >= 2}


def unit_sample(target: str, round_no: int) -> float:
    """A deterministic number in [0, 1) per target and probe round (which healthy devices to probe)."""
    digest = hashlib.blake2b(f"{target}\x1f{round_no}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def support_accounts(inventory: Inventory) -> set[str]:
    """Who may be assigned defects: the rollout's support staff and ops leads (ids and sign-in names)."""
    out: set[str] = set()
    for member in inventory.rollout.staff:
        out.add(member.id)
        if member.username:
            out.add(member.username)
    return out
