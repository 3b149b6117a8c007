"""Xen connector: servers on Citrix Hypervisor (XenServer) and XCP-ng pools through XenAPI.

Steps: srv.precheck (pool, template, SR, network, room on the SR and a host; drift policy),
srv.snapshot (existing VMs, named for the rollout), srv.provision (clone or copy from the
template, vCPUs, memory, disks, network card, customisation through xenstore_data, start;
idempotent) and srv.verify (the guest agent reports the planned IP). A failure after this run
made or changed a VM is compensated: the half-made clone and its disks are destroyed, or the
VM reverted to its snapshot. Clones are limited per SR. Every fault becomes an Outcome.

The transport (sessions, redirects, task polling) is bigbang.xen.client; what a VM is and how
it is changed is bigbang.xen.machine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.errors import BigBangError
from bigbang.inventory.model import SecretRef


class XenSettings(BaseModel):
    """How to reach the pools. Certificates are verified unless `insecure: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="a host of the pool (the master, or a member: bigbang follows it to the master)")
    port: int = Field(443, ge=1, le=65535, description="XenAPI HTTPS port")
    username: SecretRef | str = Field(description="user name (text or a reference), e.g. root or an AD account")
    password: SecretRef = Field(description="reference to the password: {env: VAR} or {prefect_secret: NAME}")
    ca_file: str | None = Field(None, description="PEM file of CAs (or the pool's own certificates) to trust "
                                                  "instead of the system store")
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    pools: dict[str, str] = Field(default_factory=dict, description="pool name (a server's `cluster`) -> a host of "
                                                                    "that pool, for servers not in the pool at `host`")
    max_parallel_clones: int = Field(4, ge=1, le=64, description="concurrent clones or copies per SR")
    task_timeout: float = Field(1800, gt=0, description="seconds to wait for one XenAPI task (clone, copy, start)")
    ip_timeout: float = Field(900, gt=0, description="seconds to wait for the guest agent to report the IP")
    connect_timeout: float = Field(30, gt=0, description="seconds to wait for XenAPI to answer a request")
    poll_interval: float = Field(2.0, gt=0, le=60, description="longest pause between polls of a task or a guest")
    drift: str = Field("report", pattern="^(report|reconfigure)$", description="what to do with a VM that differs")
    rollback: bool = Field(True, description="destroy a half-made clone or revert to the snapshot when a server fails")
    inventory_ttl: float = Field(300, ge=0, description="seconds bigbang trusts its copy of the pool's names")


class _Limit:
    """A counting semaphore that also remembers how many held it at once."""

    def __init__(self, limit: int):
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0

    @contextlib.contextmanager
    def hold(self, timeout: float, what: str) -> Iterator[None]:
        from bigbang.xen.client import XenError

        if not self._sem.acquire(timeout=timeout):
            raise XenError(f"waited {timeout:g} s for a free clone slot on {what}", transient=True)
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        try:
            yield
        finally:
            with self._lock:
                self.current -= 1
            self._sem.release()


class XenConnector:
    name: ClassVar[str] = "xen"

    def __init__(self, settings: XenSettings, context: ConnectorContext):
        from bigbang.plan import _snapshot_name

        self.settings = settings
        self.context = context
        inventory = context.inventory
        self.rollout = inventory.rollout.name if inventory is not None else "rollout"
        self.snapshot_name = _snapshot_name(self.rollout)
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[Any, Any]] = {}  # host address -> (XenClient, Catalog)
        self._server_pool: dict[str, str] = {}  # server -> host address of its pool
        self.sr_limits: dict[str, _Limit] = {}
        self._made: dict[str, str] = {}  # server -> VM this run cloned (destroyed on rollback)
        self._snapshots: dict[str, tuple[str, bool]] = {}  # server -> (snapshot, was running)
        self._changed: set[str] = set()  # existing VMs this run reconfigured

    # ------------------------------------------------------------ plumbing
    def _credentials(self) -> tuple[str, str]:
        resolve: Any = self.context.resolve_secret  # bigbang.secrets.resolve, which takes where=
        return (resolve(self.settings.username, where="connectors.xen.username"),
                resolve(self.settings.password, where="connectors.xen.password"))

    def _address(self, name: str, spec: dict[str, Any] | None = None) -> str:
        cluster = (spec or {}).get("cluster")
        if cluster is None:
            if name in self._server_pool:
                return self._server_pool[name]
            inventory = self.context.inventory
            server = getattr(inventory, "server_by_name", {}).get(name) if inventory is not None else None
            cluster = server.cluster if server is not None else None
        address = self.settings.pools.get(cluster or "", self.settings.host)
        self._server_pool[name] = address
        return address

    def pool(self, name: str, spec: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """(client, catalog) of the pool that holds server `name`."""
        from bigbang.xen.catalog import Catalog
        from bigbang.xen.client import Endpoint, XenClient

        address = self._address(name, spec)
        with self._lock:
            if address not in self._pools:
                s = self.settings
                client = XenClient(Endpoint(address, s.port, s.ca_file, s.insecure, s.connect_timeout),
                                   self._credentials, poll_interval=s.poll_interval)
                self._pools[address] = (client, Catalog(client, s.inventory_ttl))
            return self._pools[address]

    def _limit(self, key: str) -> _Limit:
        with self._lock:
            if key not in self.sr_limits:
                self.sr_limits[key] = _Limit(self.settings.max_parallel_clones)
            return self.sr_limits[key]

    def run(self, action: Action) -> Outcome:
        import XenAPI

        from bigbang.xen.catalog import PlacementError
        from bigbang.xen.client import XenError, failure_text

        handler = {"srv.precheck": self._precheck, "srv.snapshot": self._snapshot,
                   "srv.provision": self._provision, "srv.verify": self._verify}.get(action.kind)
        if handler is None:
            return Outcome.failed(f"the xen connector does not run {action.kind} steps", transient=False)
        try:
            return handler(action)
        except PlacementError as exc:
            return Outcome.failed(str(exc), transient=False)
        except XenError as exc:
            return Outcome.failed(exc.message, transient=exc.transient)
        except BigBangError as exc:
            return Outcome.failed(str(exc), transient=False)
        except XenAPI.Failure as exc:
            return Outcome.failed(f"{action.target}: XenAPI: {failure_text(exc.details)}", transient=False)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for client, _catalog in pools:
            client.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            clients = [c for c, _ in self._pools.values()]
        return {"calls": sum(c.calls for c in clients), "logins": sum(c.logins for c in clients),
                "redirects": sum(c.redirects for c in clients),
                "sr_peaks": {k: v.peak for k, v in self.sr_limits.items()}}

    # ------------------------------------------------------------ srv.precheck
    def _precheck(self, action: Action) -> Outcome:
        from bigbang.xen.assess import assess

        spec = dict(action.params)
        client, catalog = self.pool(action.target, spec)
        found = assess(client, catalog, spec, drift_policy=self.settings.drift)
        facts: dict[str, Any] = {"plan": found.action, "changes": [str(c) for c in found.changes],
                                 "pool": catalog.pool_name if found.placement else None}
        if found.placement is not None:
            facts.update(sr=found.placement.sr_name, network=found.placement.network_name)
        if found.action in ("error", "drift"):
            return Outcome(ok=False, transient=False, message=found.message, facts=facts)
        return Outcome(ok=True, changed=False, message=found.message, facts=facts)

    # ------------------------------------------------------------ srv.snapshot
    def _snapshot(self, action: Action) -> Outcome:
        from bigbang.xen.machine import read_vm

        name = action.target
        label = action.params.get("snapshot") or self.snapshot_name
        client, catalog = self.pool(name)
        ref = catalog.find_vm(name)
        if ref is None:
            return Outcome.failed(f"servers[{name}] is marked existing: true, but pool {catalog.pool_name} has no "
                                  f"VM named {name}", transient=False)
        state = read_vm(client, ref, snapshots=True)
        snap, made = self._ensure_snapshot(client, name, state, label)
        return Outcome(ok=True, changed=made, facts={"snapshot": label, "vm": ref, "snapshot_ref": snap},
                       message=f"snapshot '{label}' taken" if made else f"snapshot '{label}' exists already")

    def _ensure_snapshot(self, client: Any, name: str, state: Any, label: str | None = None) -> tuple[str, bool]:
        label = label or self.snapshot_name
        running = state.power == "Running"
        if label in state.snapshots:
            self._snapshots.setdefault(name, (state.snapshots[label], running))
            return state.snapshots[label], False
        snap = client.run_task("VM.snapshot", state.ref, label, timeout=self.settings.task_timeout,
                               what=f"snapshot {name}")
        self._snapshots[name] = (snap, running)
        return snap, True

    # ------------------------------------------------------------ srv.provision
    def _provision(self, action: Action) -> Outcome:
        import XenAPI

        from bigbang.xen.client import XenError, failure_text

        name = action.target
        spec = dict(action.params)
        client, catalog = self.pool(name, spec)
        ref = catalog.find_vm(name)
        placement = catalog.place(spec, need_template=ref is None)
        created = False
        if ref is None:
            if spec.get("existing"):
                return Outcome.failed(f"servers[{name}] is marked existing: true, but pool {catalog.pool_name} "
                                      f"has no VM named {name}", transient=False)
            ref = self._clone(client, name, spec, placement)
            created = True
        try:
            if created:
                self._finish_clone(client, name, ref)
                catalog.remember_vm(name, ref)
            return self._converge(client, catalog, name, ref, spec, placement, created)
        except (XenError, XenAPI.Failure) as exc:
            if isinstance(exc, XenError):
                message, transient = exc.message, exc.transient
            else:
                message, transient = f"{name}: XenAPI: {failure_text(exc.details)}", False
            note = self._rollback(name)
            raise XenError(f"{message}{'; ' + note if note else ''}", transient=transient) from None

    def _clone(self, client: Any, name: str, spec: dict[str, Any], placement: Any) -> str:
        s = self.settings
        # Clone (copy-on-write, fast) when the template's disks are on the target SR; else a full copy there.
        fast = not placement.template_srs or placement.sr in placement.template_srs
        with self._limit(placement.sr).hold(s.task_timeout, f"SR {placement.sr_name}"):
            if fast:
                ref = client.run_task("VM.clone", placement.template, name, timeout=s.task_timeout,
                                      what=f"clone {name} from {spec['template']}")
            else:
                ref = client.run_task("VM.copy", placement.template, name, placement.sr, timeout=s.task_timeout,
                                      what=f"copy {spec['template']} to {placement.sr_name} as {name}")
        self._made[name] = ref
        return ref

    def _finish_clone(self, client: Any, name: str, ref: str) -> None:
        """A clone of a template is a template: mark it as ours, provision its disks, make it a VM."""
        from bigbang.xen.machine import FIRST_BOOT, MARK_KEY

        other = dict(client.check("VM.get_other_config", ref, what=f"read {name}"))
        provision = "disks" in other  # installer templates describe their disks here; VM.provision makes them
        other[MARK_KEY] = f"cloned for {self.rollout}, {FIRST_BOOT}"
        client.check("VM.set_other_config", ref, other, what=f"mark {name} as made by bigbang")
        if provision:
            client.run_task("VM.provision", ref, timeout=self.settings.task_timeout, what=f"provision {name}'s disks")
        client.check("VM.set_is_a_template", ref, False, what=f"make {name} a VM")

    def _converge(self, client: Any, catalog: Any, name: str, ref: str, spec: dict[str, Any], placement: Any,
                  created: bool) -> Outcome:
        from bigbang.xen.machine import FIRST_BOOT, MARK_KEY, apply_changes, customisation, differences, read_vm

        s = self.settings
        state = read_vm(client, ref)
        changes = differences(state, spec, catalog)
        fresh = created or state.first_boot_pending
        done: list[str] = []
        facts: dict[str, Any] = {"vm": ref, "pool": placement.pool_name, "sr": placement.sr_name,
                                 "network": placement.network_name}
        unfixable = [c for c in changes if not c.fixable]
        if unfixable:
            return Outcome(ok=False, transient=False, facts=facts,
                           message=f"{name} differs in a way bigbang cannot fix: {', '.join(map(str, unfixable))}")
        if changes and not fresh and s.drift == "report":
            return Outcome(ok=False, transient=False, facts={**facts, "drift": [str(c) for c in changes]},
                           message=f"{name} differs from the inventory: {', '.join(map(str, changes))}; left "
                                   "unchanged because connectors.xen.drift is 'report'")
        power = state.power
        if changes:
            if not fresh:
                self._ensure_snapshot(client, name, read_vm(client, ref, snapshots=True))
                self._changed.add(name)
            if power == "Running":
                client.run_task("VM.clean_shutdown", ref, timeout=s.task_timeout, what=f"shut {name} down")
                power = "Halted"
            apply_changes(client, state, spec, placement, changes, s.task_timeout)
            done += [str(c) for c in changes]
        if fresh and spec.get("customization"):
            wanted = customisation(spec)
            if any(state.xenstore_data.get(k) != v for k, v in wanted.items()):
                client.check("VM.set_xenstore_data", ref, {**state.xenstore_data, **wanted},
                             what=f"write {name}'s guest customisation")
                done.append("guest customisation")
        if power == "Suspended":
            client.run_task("VM.resume", ref, False, False, timeout=s.task_timeout, what=f"resume {name}")
            done.append("resumed")
        elif power == "Paused":
            client.check("VM.unpause", ref, what=f"unpause {name}")
            done.append("unpaused")
        elif power != "Running":
            client.run_task("VM.start", ref, False, False, timeout=s.task_timeout, what=f"start {name}")
            done.append("started")
        if created or FIRST_BOOT in state.mark:
            # First boot has started: never customise this VM again, even if it is halted later.
            other = {**state.other_config, MARK_KEY: f"provisioned for {self.rollout}"}
            client.check("VM.set_other_config", ref, other, what=f"mark {name} as provisioned")
        facts["changes"] = done
        if created:
            facts["action"] = "created"
            how = "cloned" if not placement.template_srs or placement.sr in placement.template_srs else "copied"
            message = f"{how} from {spec['template']} to {placement.pool_name}/{placement.sr_name}, " + \
                ", ".join(done)
        elif done:
            facts["action"] = "reconfigured" if changes else "started"
            message = ", ".join(done)
        else:
            facts["action"] = "unchanged"
            message = "already as planned"
        return Outcome(ok=True, changed=bool(created or done), message=message, facts=facts)

    # ------------------------------------------------------------ rollback
    def _rollback(self, name: str) -> str:
        """Undo what this run did to one server; returns what was done, for the step's message."""
        from bigbang.xen.client import NULL_REF, XenError

        if not self.settings.rollback:
            return "left as is (connectors.xen.rollback is off)"
        client, catalog = self.pool(name)
        timeout = self.settings.task_timeout
        ref = self._made.pop(name, None)
        if ref is not None:
            try:
                vdis = []
                for vbd in client.check("VM.get_VBDs", ref, what=f"read {name}'s disks"):
                    rec = client.check("VBD.get_record", vbd, what=f"read {name}'s disks")
                    if rec.get("type") == "Disk" and rec.get("VDI") not in (None, NULL_REF):
                        vdis.append(rec["VDI"])
                if client.check("VM.get_power_state", ref, what=f"read {name}") != "Halted":
                    client.run_task("VM.hard_shutdown", ref, timeout=timeout, what=f"stop {name}")
                client.run_task("VM.destroy", ref, timeout=timeout, what=f"destroy {name}")
                for vdi in vdis:  # VM.destroy leaves the disks behind
                    client.check("VDI.destroy", vdi, what=f"destroy {name}'s disk")
            except XenError as exc:
                return f"rollback failed, the half-made clone is still there: {exc.message}"
            catalog.forget_vm(name)
            return "rolled back: destroyed the half-made clone and its disks"
        if name in self._changed and name in self._snapshots:
            snap, was_running = self._snapshots[name]
            try:
                client.run_task("VM.revert", snap, timeout=timeout, what=f"revert {name}")
                vm = catalog.find_vm(name)
                if was_running and vm and client.check("VM.get_power_state", vm, what=f"read {name}") != "Running":
                    client.run_task("VM.start", vm, False, False, timeout=timeout, what=f"start {name}")
            except XenError as exc:
                return f"rollback failed, revert to snapshot '{self.snapshot_name}' by hand: {exc.message}"
            self._changed.discard(name)
            return f"rolled back: reverted to snapshot '{self.snapshot_name}'"
        return ""

    # ------------------------------------------------------------ srv.verify
    def _verify(self, action: Action) -> Outcome:
        import XenAPI

        from bigbang.xen.client import NULL_REF, failure_code
        from bigbang.xen.machine import guest_addresses

        name = action.target
        planned = action.params.get("ip") or "dhcp"
        client, catalog = self.pool(name)
        ref = catalog.find_vm(name)
        if ref is None:
            return Outcome.failed(f"pool {catalog.pool_name} has no VM named {name} (its provisioning did not "
                                  "finish)", transient=False)
        deadline = time.monotonic() + self.settings.ip_timeout
        delay = min(0.05, self.settings.poll_interval)
        ips: list[str] = []
        agent = False
        failure = None
        while True:
            power = client.check("VM.get_power_state", ref, what=f"read {name}")
            if power != "Running":
                failure = f"{name} is {power.lower()}, not running"
                break
            metrics = client.check("VM.get_guest_metrics", ref, what=f"read {name}")
            if metrics != NULL_REF:
                try:
                    ips = guest_addresses(client.call("VM_guest_metrics.get_networks", metrics))
                    agent = True
                except XenAPI.Failure as exc:
                    if failure_code(exc) != "HANDLE_INVALID":  # the metrics were replaced meanwhile: read again
                        raise
                if ips and (planned == "dhcp" or planned in ips):
                    ip = planned if planned != "dhcp" else ips[0]
                    return Outcome(ok=True, message=f"guest agent running, IP {ip}",
                                   facts={"ip": ip, "guest_agent": "running", "addresses": ips})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = (f"{name}: no {'IP address' if planned == 'dhcp' else 'address ' + planned} from the guest "
                           f"within {self.settings.ip_timeout:g} s (guest agent: "
                           f"{'running' if agent else 'not reporting'}, reported: {', '.join(ips) or 'none'})")
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.settings.poll_interval)
        # Not transient (waiting again rarely helps a guest that did not come up), so this is the last attempt.
        if name in self._made or name in self._changed:
            note = self._rollback(name)
            failure = f"{failure}; {note}" if note else failure
        return Outcome.failed(failure, transient=False)


def create(settings: XenSettings, context: ConnectorContext) -> XenConnector:
    return XenConnector(settings, context)
