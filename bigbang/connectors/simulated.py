"""The simulated connector: what rehearsals run against.

A first-class connector, not a test double: it models each step's duration
(mean +- jitter, compressed into real time), its failures (a rate per step kind,
or injected for one target) and the devices' state. Every random choice is a
hash of (seed, step, attempt), so a rehearsal with the same seed fails the same
devices no matter how threads interleave.

Time is the run's clock (`bigbang.clock`): a step "takes" its simulated duration
by waiting on it, so a rehearsal's timeline is a function of the inventory, the
seed and the options, never of how busy the machine is.

Device state changes are recorded in the ledger's `sim_effects` table, committed
in the same transaction as the outcome of the step that made them (one batched
write, see bigbang.store.ledger): a change applied before a crash is seen on
resume and not applied again, which is how a real, idempotent step behaves (read
the fact, then change only what differs).

This module, the clock and the CLI's option parsing are the only places that
know a rehearsal from a live run: `substitute` sends every step of a rehearsal's
plan here, and the rest of bigbang cannot tell.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, ClassVar

from bigbang.clock import current_clock
from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.inventory.model import Rehearsal

REHEARSAL = "rehearsal"
SIMULATED_TECHNICIAN = "simulated technician"


def simulates(mode: str) -> bool:
    """True when a run in `mode` plays against simulated devices, people and time."""
    return mode == REHEARSAL


def substitute(mode: str, connector: str) -> str:
    """The connector a step of a run in `mode` uses instead of `connector`."""
    return SimulatedConnector.name if simulates(mode) else connector

# Realistic reasons, so rehearsal reports read like the weekend's.
FAILURES: dict[str, tuple[str, ...]] = {
    "srv.precheck": ("template not found on the cluster", "datastore below the free-space threshold"),
    "srv.snapshot": ("snapshot task timed out", "VM has a disk in independent mode"),
    "srv.provision": ("clone task failed: insufficient disk space", "guest customisation timed out",
                      "vCenter task error: host in maintenance mode"),
    "srv.verify": ("guest tools not running after 900 s", "no IP address reported by guest tools"),
    "ws.prestage": ("deployment server rejected the MAC: already staged for another device",
                    "WinRM to the deployment server timed out"),
    "ws.image": ("PXE boot did not start within 10 min", "image download checksum mismatch",
                 "device did not come back after Wake-on-LAN"),
    "ws.verify": ("device not joined to the domain", "software baseline incomplete: Citrix Workspace missing"),
    "tc.reassign": ("SSH connection refused", "firmware update failed: not enough flash space",
                    "device did not come back after reboot"),
    "tc.verify": ("profile shows the old StoreFront URL", "hostname not changed after reboot"),
}
# How the connectors a live run would use fail differently, and take a different time (the step's
# `live_connector` param says which one a simulated step stands for; `rehearsal.steps` can set both).
FAILURES_BY_CONNECTOR: dict[tuple[str, str], tuple[str, ...]] = {
    ("srv.provision", "xen"): ("XenAPI SR_BACKEND_FAILURE_44: insufficient space on the SR",
                               "Async.VM.clone task timed out", "HOST_IS_SLAVE: the pool master moved"),
    ("srv.verify", "xen"): ("no IP in VM_guest_metrics after 900 s (guest agent not running)",),
    ("tc.reassign", "ums"): ("device offline in UMS: the reboot command was not delivered",
                             "UMS answered 401: the session expired during the batch"),
    ("tc.verify", "ums"): ("UMS reports the old profile still assigned", "no contact since the reboot"),
}
DURATIONS_BY_CONNECTOR = {  # a UMS push reboots without an SSH round trip per device; XenAPI clones thin
    ("tc.reassign", "ums"): 240, ("tc.verify", "ums"): 30, ("srv.provision", "xen"): 900,
}
DEFAULT_DURATIONS = {  # simulated seconds per attempt, when the inventory gives none
    "srv.precheck": 20, "srv.snapshot": 60, "srv.provision": 1200, "srv.verify": 120,
    "ws.prestage": 30, "ws.image": 2700, "ws.verify": 120, "tc.reassign": 420, "tc.verify": 60,
}


# What a verification reads back depends on the changes that really happened: the steps whose
# simulated effect must be applied before a device (or server) shows its target state.
VERIFIED_CHANGES: dict[str, tuple[str, ...]] = {
    "ws.verify": ("ws.prestage", "ws.image"), "tc.verify": ("tc.reassign",), "srv.verify": ("srv.provision",),
}


def unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from its parts."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SimulatedConnector:
    name: ClassVar[str] = "simulated"

    def __init__(self, settings: Rehearsal, context: ConnectorContext):
        self.settings = settings
        self.run_id = context.run_id
        self.ledger = context.state
        options = context.options
        self.seed = options.get("seed", settings.seed)
        self.zero_duration = bool(options.get("zero_duration"))
        self.default_failure_rate = options.get("failure_rate")
        if self.default_failure_rate is None:
            self.default_failure_rate = settings.failure_rate
        self._device_lock = threading.Lock()

    # -- model
    def _simulation(self, action: Action) -> Any:
        live = action.params.get("live_connector")
        return self.settings.steps.get(f"{action.kind}@{live}") or self.settings.steps.get(action.kind)

    def duration(self, action: Action) -> float:
        if self.zero_duration:
            return 0.0
        sim = self._simulation(action)
        live = str(action.params.get("live_connector"))
        default = DURATIONS_BY_CONNECTOR.get((action.kind, live), DEFAULT_DURATIONS.get(action.kind, 0.0))
        mean = sim.duration if sim and sim.duration else default
        jitter = sim.jitter if sim else 0.2
        return max(0.0, mean * (1 + jitter * (2 * unit(self.seed, "d", action.step_id, action.attempt) - 1)))

    def failure(self, action: Action) -> str | None:
        for inj in self.settings.inject:
            location = action.params.get("location")
            if inj.target.lower() in (action.target.lower(), str(location).lower()) and (
                inj.step is None or inj.step == action.kind
            ):
                if inj.attempts == "all" or action.attempt <= inj.attempts:
                    return inj.message
        sim = self._simulation(action)
        rate = sim.failure_rate if sim and sim.failure_rate is not None else self.default_failure_rate
        if rate and unit(self.seed, "f", action.step_id, action.attempt) < rate:
            live = str(action.params.get("live_connector"))
            reasons = FAILURES_BY_CONNECTOR.get((action.kind, live)) or FAILURES.get(action.kind, ("simulated failure",))
            return reasons[int(unit(self.seed, "r", action.step_id, action.attempt) * len(reasons))]
        return None

    # -- protocol
    def run(self, action: Action) -> Outcome:
        if action.kind == "loc.signoff":
            return self._sign_off(action)
        current_clock().sleep(self.duration(action))
        reason = self.failure(action)
        if reason is not None:
            return Outcome(ok=False, message=reason, transient=True)
        missing = self._missing_changes(action)
        if missing:  # the device is still in its old state: what verification reads says so
            return Outcome(ok=False, message=f"not in its target state: {', '.join(missing)} never succeeded",
                           facts=self._old_facts(action), transient=False)
        changed = self._apply(action)
        return Outcome(ok=True, changed=changed, facts=self._facts(action),
                       message="changed" if changed else "already as planned")

    def applied(self, action: Action) -> Outcome | None:
        """Ask the simulated device whether this step's change is in place (a resume does before redoing
        a step its crashed predecessor had started); None when it is not."""
        if self.ledger is None or action.kind.endswith((".verify", ".precheck")):
            return None
        if action.kind == "loc.signoff":
            signed = self.ledger.signoff(self.run_id, action.target)
            if signed is None:
                return None
            return Outcome(ok=True, changed=False, message=f"signed off by {signed['signed_by']}",
                           facts={"signed_by": signed["signed_by"], "note": signed["note"]})
        if not self.ledger.sim_effect_applied(self.run_id, action.step_id):
            return None
        return Outcome(ok=True, changed=False, facts=self._facts(action), message="already as planned")

    def _sign_off(self, action: Action) -> Outcome:
        """A simulated technician signs the location off as soon as its work is done."""
        if self.ledger is not None:
            self.ledger.sign_off(self.run_id, action.target, SIMULATED_TECHNICIAN, REHEARSAL)
        return Outcome(ok=True, changed=True, message=f"signed off by {SIMULATED_TECHNICIAN}",
                       facts={"signed_by": SIMULATED_TECHNICIAN, "note": REHEARSAL})

    def close(self) -> None:
        pass

    def _apply(self, action: Action) -> bool:
        if action.kind.endswith((".verify", ".precheck")):
            return False  # reading facts changes nothing
        if self.ledger is None:
            return True
        return self.ledger.stage_sim_effect(self.run_id, action.step_id)  # committed with the outcome

    def _missing_changes(self, action: Action) -> list[str]:
        """The changes a verification needs that were never applied in this run's simulated state."""
        if self.ledger is None:
            return []
        return [kind for kind in VERIFIED_CHANGES.get(action.kind, ())
                if not self.ledger.sim_effect_applied(self.run_id, f"{action.target}:{kind}")]

    def _old_facts(self, action: Action) -> dict[str, Any]:
        p = action.params
        if action.kind == "ws.verify":
            return {"image_version": p.get("current_image"), "hostname": action.target}
        if action.kind == "tc.verify":
            return {"profile": p.get("current_profile"), "hostname": action.target}
        return {"guest_tools": "not running"}

    def _facts(self, action: Action) -> dict[str, Any]:
        p = action.params
        if action.kind == "ws.verify":
            return {"image_version": p.get("image_version"), "hostname": p.get("hostname"),
                    "domain": p.get("domain"), "baseline_missing": []}
        if action.kind == "tc.verify":
            return {"profile": p.get("target_profile"), "firmware": p.get("firmware"), "hostname": p.get("hostname")}
        if action.kind == "srv.verify":
            ip = p.get("ip")
            n = int(unit(self.seed, "ip", action.target) * 200) + 20
            return {"ip": ip if ip and ip != "dhcp" else f"10.20.0.{n}", "guest_tools": "running"}
        return {}


def create(settings: Rehearsal, context: ConnectorContext) -> SimulatedConnector:
    return SimulatedConnector(settings, context)
