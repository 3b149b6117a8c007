"""vSphere connector: servers on VMware vCenter through pyvmomi.

Steps: srv.precheck (every name resolves, drift policy), srv.snapshot (existing VMs, named for
the rollout), srv.provision (clone, reconfigure, customise, power on; idempotent) and
srv.verify (guest tools running with the planned IP). A failure after this run cloned or
changed a VM is compensated: the half-made clone is destroyed, or the VM reverted to its
snapshot. Clones are limited per cluster and per datastore. Every fault becomes an Outcome.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.errors import BigBangError
from bigbang.inventory.model import SecretRef

log = logging.getLogger("bigbang.vsphere")


class VsphereSettings(BaseModel):
    """How to reach vCenter. Certificates are verified unless `insecure: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="vCenter host name or address")
    port: int = Field(443, ge=1, le=65535)
    username: SecretRef | str = Field(description="user name (text or a reference)")
    password: SecretRef = Field(description="reference to the password: {env: VAR} or {prefect_secret: NAME}")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system store")
    thumbprint: str | None = Field(None, description="pinned SHA-256 certificate fingerprint (hex, colons allowed)")
    insecure: bool = Field(False, description="skip certificate verification (only for labs)")
    datacenter: str | None = Field(None, description="default datacenter for servers that name none")
    max_parallel_clones: int = Field(4, ge=1, le=64, description="concurrent clones per cluster")
    max_parallel_per_datastore: int = Field(2, ge=1, le=64, description="concurrent clones per datastore")
    task_timeout: float = Field(1800, gt=0, description="seconds to wait for one vCenter task")
    ip_timeout: float = Field(900, gt=0, description="seconds to wait for guest tools to report an IP")
    drift: str = Field("report", pattern="^(report|reconfigure)$", description="what to do with a VM that differs")
    connect_timeout: float = Field(30, gt=0, description="seconds to wait for vCenter to answer a connection")
    rollback: bool = Field(True, description="destroy a half-made clone or revert to the snapshot when a server fails")
    inventory_ttl: float = Field(300, ge=0, description="seconds bigbang trusts its copy of vCenter's names")
    windows_admin_password: SecretRef | None = Field(None, description="local Administrator password set by sysprep")
    domain_join_user: SecretRef | str | None = Field(None, description="account that joins Windows servers to the domain")
    domain_join_password: SecretRef | None = Field(None, description="reference to that account's password")
    windows_timezone: int = Field(105, ge=0, description="Windows time zone index for sysprep (105: Romance Standard Time)")

    @field_validator("thumbprint")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").replace(" ", "").lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError("not a SHA-256 thumbprint: give 64 hex digits (colons allowed), e.g. from "
                             "`openssl x509 -noout -fingerprint -sha256`")
        return value


class _Limit:
    """A counting semaphore that also remembers how many held it at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0

    @contextlib.contextmanager
    def hold(self, timeout: float, what: str) -> Iterator[None]:
        from bigbang.vsphere.client import VcenterError

        if not self._sem.acquire(timeout=timeout):
            raise VcenterError(f"waited {timeout:g} s for a free clone slot on {what}", transient=True)
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        try:
            yield
        finally:
            with self._lock:
                self.current -= 1
            self._sem.release()


class VsphereConnector:
    name: ClassVar[str] = "vsphere"

    def __init__(self, settings: VsphereSettings, context: ConnectorContext):
        from bigbang.plan import _snapshot_name
        from bigbang.vsphere.catalog import Catalog
        from bigbang.vsphere.client import Endpoint, VcenterClient

        self.settings = settings
        self.context = context
        inventory = context.inventory
        self.rollout = inventory.rollout.name if inventory is not None else "rollout"
        self.snapshot_name = _snapshot_name(self.rollout)
        endpoint = Endpoint(settings.host, settings.port, settings.ca_bundle, settings.thumbprint, settings.insecure,
                            settings.connect_timeout)
        parallel = int(context.options.get("parallel_servers") or 8)
        self.client = VcenterClient(endpoint, self._credentials, pool_size=max(8, parallel * 2))
        self.catalog = Catalog(self.client, settings.inventory_ttl)
        self._limits_lock = threading.Lock()
        self.cluster_limits: dict[str, _Limit] = {}
        self.datastore_limits: dict[str, _Limit] = {}
        self._made: dict[str, Any] = {}  # server -> VM this run cloned (destroyed on rollback)
        self._snapshots: dict[str, tuple[Any, bool]] = {}  # server -> (snapshot, was powered on)
        self._changed: set[str] = set()  # existing VMs this run reconfigured

    # ------------------------------------------------------------ plumbing
    def _credentials(self) -> tuple[str, str]:
        resolve = self.context.resolve_secret
        return (resolve(self.settings.username, where="connectors.vsphere.username"),
                resolve(self.settings.password, where="connectors.vsphere.password"))

    def _limit(self, table: dict[str, _Limit], key: str, limit: int) -> _Limit:
        with self._limits_lock:
            if key not in table:
                table[key] = _Limit(limit)
            return table[key]

    def run(self, action: Action) -> Outcome:
        from pyVmomi import vmodl

        from bigbang.vsphere.catalog import PlacementError
        from bigbang.vsphere.client import VcenterError, fault_text

        handler = {"srv.precheck": self._precheck, "srv.snapshot": self._snapshot,
                   "srv.provision": self._provision, "srv.verify": self._verify}.get(action.kind)
        if handler is None:
            return Outcome.failed(f"the vsphere connector does not run {action.kind} steps", transient=False)
        try:
            return handler(action)
        except PlacementError as exc:
            return Outcome.failed(str(exc), transient=False)
        except VcenterError as exc:
            return Outcome.failed(exc.message, transient=exc.transient)
        except BigBangError as exc:
            return Outcome.failed(str(exc), transient=False)
        except vmodl.MethodFault as fault:
            return Outcome.failed(f"{action.target}: vCenter: {fault_text(fault)}", transient=False)

    def close(self) -> None:
        self.client.close()

    def stats(self) -> dict[str, Any]:
        return {"calls": self.client.calls, "logins": self.client.logins,
                "cluster_peaks": {k: v.peak for k, v in self.cluster_limits.items()},
                "datastore_peaks": {k: v.peak for k, v in self.datastore_limits.items()}}

    # ------------------------------------------------------------ finding a server's VM
    def _server_spec(self, name: str) -> dict[str, Any]:
        server = getattr(self.context.inventory, "server_by_name", {}).get(name)
        if server is None:
            return {"name": name}
        return server.model_dump(exclude={"kind", "connector"}, mode="json")

    def _vm_name(self, name: str) -> str:
        from bigbang.vsphere.catalog import vm_name_of

        return vm_name_of(self._server_spec(name))

    def _find(self, name: str) -> Any:
        """The server's VM, looked up in its datacenter (and folder) only."""
        return self.catalog.lookup(self._server_spec(name), self.settings.datacenter)

    def _where(self, name: str) -> str:
        from bigbang.vsphere.assess import where_text

        spec = self._server_spec(name)
        return self._vm_name(name) + where_text(spec, self.settings.datacenter)

    # ------------------------------------------------------------ srv.precheck
    def _precheck(self, action: Action) -> Outcome:
        from bigbang.vsphere.assess import assess

        spec = dict(action.params)
        found = assess(self.client, self.catalog, spec, default_datacenter=self.settings.datacenter,
                       drift_policy=self.settings.drift)
        facts = {"plan": found.action, "changes": [str(c) for c in found.changes]}
        try:
            facts["endpoint"] = self.catalog.endpoint_kind()
        except Exception:  # noqa: BLE001 - only a fact; the assessment above has the real outcome
            pass
        if found.placement is not None:
            facts.update(cluster=found.placement.cluster_name, datastore=found.placement.datastore_name,
                         network=found.placement.network_name, datacenter=found.placement.datacenter_name)
        custom = spec.get("customization") or {}
        if (found.action == "create" and custom.get("os", "windows") == "windows" and custom.get("domain")
                and not (self.settings.domain_join_user and self.settings.domain_join_password)):
            return Outcome(ok=False, transient=False, facts=facts,
                           message=f"servers[{action.target}].customization.domain: joining {custom['domain']} "
                                   "needs connectors.vsphere.domain_join_user and domain_join_password")
        if found.action in ("error", "drift"):
            return Outcome(ok=False, transient=False, message=found.message, facts=facts)
        return Outcome(ok=True, changed=False, message=found.message, facts=facts)

    # ------------------------------------------------------------ srv.snapshot
    def _snapshot(self, action: Action) -> Outcome:
        from bigbang.vsphere.assess import read_vm

        name = action.target
        label = action.params.get("snapshot") or self.snapshot_name
        ref = self._find(name)
        if ref is None:
            return Outcome.failed(f"servers[{name}] is marked existing: true, but vCenter has no VM named "
                                  f"{self._where(name)}", transient=False)
        state = read_vm(self.client, ref)
        _snap, made = self._ensure_snapshot(name, state, label)
        return Outcome(ok=True, changed=made, facts={"snapshot": label, "vm": ref._moId},
                       message=f"snapshot '{label}' taken" if made else f"snapshot '{label}' exists already")

    def _ensure_snapshot(self, name: str, state: Any, label: str | None = None) -> tuple[Any, bool]:
        label = label or self.snapshot_name
        on = state.power == "poweredOn"
        if label in state.snapshots:
            self._snapshots.setdefault(name, (state.snapshots[label], on))
            return state.snapshots[label], False
        snap = self.client.run_task(
            lambda _c: state.ref.CreateSnapshot_Task(name=label, description=f"before {self.rollout} (bigbang)",
                                                     memory=False, quiesce=False),
            self.settings.task_timeout, f"snapshot {name}")
        self._snapshots[name] = (snap, on)
        return snap, True

    # ------------------------------------------------------------ srv.provision
    def _provision(self, action: Action) -> Outcome:
        from pyVmomi import vmodl

        from bigbang.vsphere.client import VcenterError, fault_text

        name = action.target
        spec = dict(action.params)
        ref = self.catalog.lookup(spec, self.settings.datacenter)
        placement = self.catalog.place(spec, self.settings.datacenter, need_template=ref is None)
        created = False
        if ref is None:
            if spec.get("existing"):
                return Outcome.failed(f"servers[{name}] is marked existing: true, but vCenter has no VM named "
                                      f"{self._where(name)}", transient=False)
            ref = self._clone(name, spec, placement)
            created = True
        try:
            return self._converge(name, ref, spec, placement, created)
        except (VcenterError, vmodl.MethodFault, ValueError) as exc:
            if isinstance(exc, VcenterError):
                message, transient = exc.message, exc.transient
            else:
                message, transient = f"{name}: {fault_text(exc) if isinstance(exc, vmodl.MethodFault) else exc}", False
            note = self._rollback(name)
            raise VcenterError(f"{message}{'; ' + note if note else ''}", transient=transient) from None

    def _clone(self, name: str, spec: dict[str, Any], placement: Any) -> Any:
        from pyVmomi import vim

        from bigbang.vsphere.catalog import vm_name_of
        from bigbang.vsphere.client import VcenterError

        vm_name = vm_name_of(spec)
        s = self.settings
        cluster = self._limit(self.cluster_limits, placement.cluster_name, s.max_parallel_clones)
        datastore = self._limit(self.datastore_limits, placement.datastore_name, s.max_parallel_per_datastore)
        clone_spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=placement.pool, datastore=placement.datastore),
                                      powerOn=False, template=False)
        with cluster.hold(s.task_timeout, f"cluster {placement.cluster_name}"), \
                datastore.hold(s.task_timeout, f"datastore {placement.datastore_name}"):
            try:
                ref = self.client.run_task(
                    lambda _c: placement.template.CloneVM_Task(folder=placement.folder, name=vm_name, spec=clone_spec),
                    s.task_timeout, f"clone {vm_name} from {spec['template']} in datacenter "
                                    f"{placement.datacenter_name}")
            except VcenterError as exc:
                if "DuplicateName" in exc.message:
                    self.catalog.data(refresh=True)
                raise
        self._made[name] = ref
        self.catalog.remember_vm(vm_name, ref, placement)
        return ref

    def _converge(self, name: str, ref: Any, spec: dict[str, Any], placement: Any, created: bool) -> Outcome:
        from pyVmomi import vim

        from bigbang.vsphere.assess import read_vm
        from bigbang.vsphere.machine import (
            FIRST_BOOT,
            MARK,
            GuestSecrets,
            config_spec,
            customization_spec,
            differences,
        )

        s = self.settings
        state = read_vm(self.client, ref)
        if state.template:
            return Outcome.failed(f"servers[{name}]: '{name}' is a template in vCenter, not a VM", transient=False)
        changes = differences(state, spec, self.catalog)
        fresh = created or state.first_boot_pending
        done: list[str] = []
        facts: dict[str, Any] = {"vm": ref._moId, "cluster": placement.cluster_name,
                                 "datastore": placement.datastore_name, "network": placement.network_name}
        unfixable = [c for c in changes if not c.fixable]
        if unfixable:
            return Outcome(ok=False, transient=False, facts=facts,
                           message=f"{name} differs in a way bigbang cannot fix: {', '.join(map(str, unfixable))}")
        if changes and not fresh and s.drift == "report":
            return Outcome(ok=False, transient=False, facts={**facts, "drift": [str(c) for c in changes]},
                           message=f"{name} differs from the inventory: {', '.join(map(str, changes))}; left "
                                   "unchanged because connectors.vsphere.drift is 'report'")
        annotation = f"{MARK} cloned for {self.rollout}, {FIRST_BOOT}" if created else None
        if changes or annotation:
            if not fresh:
                self._ensure_snapshot(name, state)
                self._changed.add(name)
            self.client.run_task(
                lambda _c: ref.ReconfigVM_Task(spec=config_spec(state, spec, placement, self.catalog, changes,
                                                                annotation)),
                s.task_timeout, f"reconfigure {name}")
            done += [str(c) for c in changes]
        if fresh and spec.get("customization") and not state.pending_customization:
            secrets = GuestSecrets(
                admin_password=self._secret(s.windows_admin_password, "windows_admin_password"),
                join_user=self._secret(s.domain_join_user, "domain_join_user"),
                join_password=self._secret(s.domain_join_password, "domain_join_password"),
                windows_timezone=s.windows_timezone, organisation=self.rollout)
            custom = customization_spec(spec, secrets)
            self.client.run_task(lambda _c: ref.CustomizeVM_Task(spec=custom), s.task_timeout, f"customise {name}")
            done.append("guest customisation")
        if state.power != "poweredOn":
            self.client.run_task(lambda _c: ref.PowerOnVM_Task(), s.task_timeout, f"power on {name}")
            done.append("powered on")
        if created or (state.made_by_bigbang and FIRST_BOOT in state.annotation):
            # First boot has started: never customise this VM again, even if it is powered off later.
            provisioned = vim.vm.ConfigSpec(annotation=f"{MARK} provisioned for {self.rollout}")
            self.client.run_task(lambda _c: ref.ReconfigVM_Task(spec=provisioned), s.task_timeout,
                                 f"mark {name} as provisioned")
        facts["changes"] = done
        if created:
            facts["action"] = "created"
            message = f"cloned from {spec['template']} to {placement.cluster_name}/{placement.datastore_name}"
        elif done:
            facts["action"] = "reconfigured" if changes else "powered on"
            message = ", ".join(done)
        else:
            facts["action"] = "unchanged"
            message = "already as planned"
        return Outcome(ok=True, changed=bool(created or done), message=message, facts=facts)

    def _secret(self, ref: Any, field: str) -> str | None:
        if ref is None:
            return None
        return self.context.resolve_secret(ref, where=f"connectors.vsphere.{field}")

    # ------------------------------------------------------------ rollback
    def _rollback(self, name: str) -> str:
        """Undo what this run did to one server; returns what was done, for the step's message."""
        from bigbang.vsphere.client import VcenterError

        if not self.settings.rollback:
            return "left as is (connectors.vsphere.rollback is off)"
        timeout = self.settings.task_timeout
        ref = self._made.pop(name, None)
        if ref is not None:
            try:
                power = self.client.retrieve([ref], ["runtime.powerState"]).get(ref, {}).get("runtime.powerState")
                if power == "poweredOn":
                    self.client.run_task(lambda _c: ref.PowerOffVM_Task(), timeout, f"power off {name}")
                self.client.run_task(lambda _c: ref.Destroy_Task(), timeout, f"destroy {name}")
            except VcenterError as exc:
                return f"rollback failed, the half-made clone is still there: {exc.message}"
            self.catalog.forget_vm(self._vm_name(name), ref)
            return "rolled back: destroyed the half-made clone"
        if name in self._changed and name in self._snapshots:
            snap, was_on = self._snapshots[name]
            try:
                self.client.run_task(lambda _c: snap.RevertToSnapshot_Task(), timeout, f"revert {name}")
                vm = self._find(name)
                power = self.client.retrieve([vm], ["runtime.powerState"]).get(vm, {}).get("runtime.powerState")
                if was_on and power != "poweredOn":
                    self.client.run_task(lambda _c: vm.PowerOnVM_Task(), timeout, f"power on {name}")
            except VcenterError as exc:
                return f"rollback failed, revert to snapshot '{self.snapshot_name}' by hand: {exc.message}"
            self._changed.discard(name)
            return f"rolled back: reverted to snapshot '{self.snapshot_name}'"
        return ""

    # ------------------------------------------------------------ srv.verify
    def _verify(self, action: Action) -> Outcome:
        from bigbang.vsphere.client import WaitTimeout

        name = action.target
        planned = action.params.get("ip") or "dhcp"
        ref = self._find(name)
        if ref is None:
            return Outcome.failed(f"vCenter has no VM named {self._where(name)} (its provisioning did not finish)",
                                  transient=False)
        props = ["runtime.powerState", "guest.toolsRunningStatus", "guest.ipAddress", "guest.net", "guest.hostName"]

        def addresses(v: dict) -> list[str]:
            ips = [v.get("guest.ipAddress")] + [ip for nic in v.get("guest.net") or [] for ip in nic.ipAddress or []]
            return [ip for ip in ips if ip]

        def ready(v: dict) -> bool:
            if v.get("runtime.powerState") != "poweredOn":
                return True  # nothing to wait for
            ips = addresses(v)
            return v.get("guest.toolsRunningStatus") == "guestToolsRunning" and bool(ips) and (
                planned == "dhcp" or planned in ips)

        failure = None
        try:
            values = self.client.wait_for(ref, props, ready, self.settings.ip_timeout)
        except WaitTimeout as exc:
            values = exc.values
            failure = verify_failure(name, planned, values.get("guest.toolsRunningStatus"), addresses(values),
                                     self.settings.ip_timeout)
        else:
            if values.get("runtime.powerState") != "poweredOn":
                failure = f"{name} is {values.get('runtime.powerState')}, not powered on"
        if failure is None:
            ip = planned if planned != "dhcp" else addresses(values)[0]
            return Outcome(ok=True, message=f"guest tools running, IP {ip}",
                           facts={"ip": ip, "guest_tools": "running", "hostname": values.get("guest.hostName")})
        # Not transient (waiting again rarely helps a guest that did not come up), so this is the last attempt.
        if name in self._made or name in self._changed:
            note = self._rollback(name)
            failure = f"{failure}; {note}" if note else failure
        return Outcome.failed(failure, transient=False)


def verify_failure(name: str, planned: str, tools: str | None, ips: list[str], timeout: float) -> str:
    """Why srv.verify failed, as expected versus seen. The guest's address counts only while its tools run:
    an address vCenter still shows from before is not an answer from the guest."""
    expected = "an IP address (DHCP)" if planned == "dhcp" else f"address {planned}"
    seen_ips = ", ".join(ips) or "no address"
    running = tools == "guestToolsRunning"
    if not running:
        why = f"guest tools are {tools or 'not reported'}, not running"
        seen = f"vCenter shows {seen_ips} (from before; not confirmed by the guest)" if ips else "no address"
    elif planned != "dhcp":
        why, seen = "the guest reports another address", f"the guest reports {seen_ips}"
    else:
        why, seen = "the guest reports no address", "no address"
    return f"{name}: expected {expected} from running guest tools within {timeout:g} s; {why}: {seen}"


def create(settings: VsphereSettings, context: ConnectorContext) -> VsphereConnector:
    return VsphereConnector(settings, context)
