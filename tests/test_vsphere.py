"""The vsphere connector against VMware's vCenter simulator (govmomi vcsim), over verified HTTPS.

Each test uses its own server names, so tests share one simulator. What vCenter ends up with is
checked through a second, independent pyvmomi session, and what bigbang sent through the
simulator's own call log.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pyVmomi import vim

from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.vsphere import VsphereSettings, create
from bigbang.secrets import resolve
from bigbang.session import RunOptions, RunSession
from tests.peers.vcsim import PASSWORD_ENV, vcsim  # noqa: F401
from tests.helpers import servers_ready

ROLLOUT = "Test Kommune Big Bang"
SNAPSHOT = "bigbang-before-test-kommune-big-bang"


# ---------------------------------------------------------------- helpers

def server(name: str, **over: Any) -> dict[str, Any]:
    spec = {"name": name, "template": "tpl-rhel9", "cluster": "cl-prod-01", "datastore": "ds-ssd-01",
            "network": "vlan110-servers", "cpu": 2, "memory_gb": 4, "disks_gb": [], "existing": False,
            "datacenter": None, "resource_pool": None, "folder": None, "depends_on": [],
            "customization": {"os": "linux", "ip": "dhcp", "dns": [], "domain": None}}
    spec.update(over)
    return spec


def connector(sim, **settings: Any):
    conf = VsphereSettings.model_validate(sim.settings(**settings))
    inventory = SimpleNamespace(rollout=SimpleNamespace(name=ROLLOUT))  # all the connector reads of it
    return create(conf, ConnectorContext(run_id="test", inventory=inventory, resolve_secret=resolve))


def step(conn, kind: str, spec: dict[str, Any], attempt: int = 1):
    params = {"ip": (spec.get("customization") or {}).get("ip", "dhcp")} if kind == "srv.verify" else spec
    if kind == "srv.snapshot":
        params = {"snapshot": SNAPSHOT}
    return conn.run(Action(f"{spec['name']}:{kind}", kind, spec["name"], attempt, params))


def find_vm(si, name: str):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next((vm for vm in view.view if vm.name == name), None)
    finally:
        view.Destroy()


def clone_by_hand(si, name: str, template: str = "tpl-rhel9", power_on: bool = True):
    """An existing VM, made with plain pyvmomi (not bigbang)."""
    tpl = find_vm(si, template)
    dc = si.content.rootFolder.childEntity[0]
    cluster = next(c for c in dc.hostFolder.childEntity if c.name == "cl-prod-02")
    ds = next(d for d in dc.datastore if d.name == "ds-nl-01")
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=cluster.resourcePool, datastore=ds), powerOn=False)
    task = tpl.CloneVM_Task(folder=dc.vmFolder, name=name, spec=spec)
    assert task.info.state == "success", task.info.error
    vm = task.info.result
    if power_on:
        vm.PowerOnVM_Task()
    return vm


def write_inventory(tmp_path: Path, sim, servers: list[dict[str, Any]], *, locations: list | None = None,
                    **settings: Any) -> Path:
    doc = {
        "rollout": {"name": ROLLOUT, "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00"},
                    "failure_policy": {"retries": 0, "retry_delay": 0}},
        "teams": [{"id": "team-a", "name": "Team A"}],
        "servers": servers,
        "locations": locations or [],
        "connectors": {"vsphere": sim.settings(**settings)},
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def inv_server(name: str, **over: Any) -> dict[str, Any]:
    entry = {"name": name, "template": "tpl-rhel9", "cluster": "cl-prod-01", "datastore": "ds-ssd-01",
             "network": "vlan110-servers", "cpu": 2, "memory_gb": 4, "customization": {"os": "linux"}}
    entry.update(over)
    return entry


def run_live(path: Path, tmp_path: Path, run_id: str) -> RunSession:
    session = RunSession.start(path, RunOptions(mode="live"), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                               run_id=run_id)
    runner = servers_ready(session)
    for loc in session.plan.locations:
        session.ledger.sign_off(run_id, loc.id, "test technician", "no devices here")  # the live gate waits for it
        runner.run_location(loc.id)
    session.ledger.flush()
    return session


def peak_overlap(calls: list[dict[str, Any]], method: str) -> int:
    events = []
    for c in calls:
        if c["method"] == method:
            events += [(c["start"], 1), (c["end"], -1)]
    peak = current = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        peak = max(peak, current)
    return peak


@pytest.fixture
def sim(vcsim):  # noqa: F811
    vcsim.reset()
    yield vcsim
    vcsim.reset()


# ---------------------------------------------------------------- live runs through Runner and the ledger

def test_live_run_provisions_a_dependency_chain_and_a_rerun_changes_nothing(sim, tmp_path):
    servers = [
        inv_server("chain-dc01", customization={"os": "linux", "ip": "10.20.0.10", "netmask": "255.255.255.0",
                                                "gateway": "10.20.0.1", "domain": "ad.test"}),
        inv_server("chain-sql01", depends_on=["chain-dc01"], cpu=4, memory_gb=16, disks_gb=[50, 200],
                   cluster="cl-prod-02", datastore="ds-nl-01", network="vlan120-citrix"),
        inv_server("chain-app01", depends_on=["chain-sql01"], template="tpl-win2022",
                   customization={"os": "windows", "ip": "10.20.0.30", "gateway": "10.20.0.1"}),
    ]
    path = write_inventory(tmp_path, sim, servers, locations=[
        {"id": "loc-1", "name": "Rådhus", "address": "Torvet 1", "team": "team-a", "requires": ["chain-app01"]}])
    first = run_live(path, tmp_path, "run-first")
    results = first.ledger.step_results("run-first")
    for name in ("chain-dc01", "chain-sql01", "chain-app01"):
        for kind in ("srv.precheck", "srv.provision", "srv.verify"):
            rec = results[f"{name}:{kind}"]
            assert rec.status == "succeeded", (rec.step_id, rec.message)
        assert results[f"{name}:srv.provision"].changed is True
    assert results["chain-dc01:srv.verify"].facts["ip"] == "10.20.0.10"
    assert results["chain-app01:srv.verify"].facts["ip"] == "10.20.0.30"
    assert results["loc-1:loc.precheck"].status == "succeeded"
    # Waves follow depends_on: each clone started after the server it depends on was verified.
    calls = sim.calls()
    clones = [c for c in calls if c["method"] == "CloneVM_Task"]  # a clone is a call on its template
    assert [c["name"] for c in clones] == ["tpl-rhel9", "tpl-rhel9", "tpl-win2022"]
    powered = {c["name"]: c for c in calls if c["method"] == "PowerOnVM_Task"}
    assert clones[1]["start"] >= powered["chain-dc01"]["end"] and clones[2]["start"] >= powered["chain-sql01"]["end"]
    first.close()

    si = sim.connect()
    sql = find_vm(si, "chain-sql01")
    assert (sql.config.hardware.numCPU, sql.config.hardware.memoryMB) == (4, 16 * 1024)
    disks = [d.capacityInKB // (1024 * 1024) for d in sql.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    assert disks == [50, 200]
    assert sql.runtime.powerState == "poweredOn" and sql.resourcePool.owner.name == "cl-prod-02"
    assert find_vm(si, "chain-dc01").guest.ipAddress == "10.20.0.10"

    sim.reset()
    second = run_live(path, tmp_path, "run-second")
    again = second.ledger.step_results("run-second")
    for name in ("chain-dc01", "chain-sql01", "chain-app01"):
        assert again[f"{name}:srv.provision"].status == "succeeded"
        assert again[f"{name}:srv.provision"].changed is False, again[f"{name}:srv.provision"].message
        assert again[f"{name}:srv.provision"].message == "already as planned"
    changing = {c["method"] for c in sim.calls()} & {"CloneVM_Task", "ReconfigVM_Task", "PowerOnVM_Task",
                                                      "CustomizeVM_Task", "Destroy_Task"}
    assert changing == set()
    second.close()


def test_live_run_failure_mid_chain_rolls_back_blocks_dependants_and_a_rerun_finishes(sim, tmp_path):
    servers = [inv_server("mid-a"), inv_server("mid-b", depends_on=["mid-a"]),
               inv_server("mid-c", depends_on=["mid-b"])]
    path = write_inventory(tmp_path, sim, servers, locations=[
        {"id": "loc-mid", "name": "Skole", "address": "Skolevej 2", "team": "team-a", "requires": ["mid-c"]}])
    sim.fail_next("PowerOnVM_Task", "mid-b", "host esx-07 is in maintenance mode")
    first = run_live(path, tmp_path, "run-mid-1")
    results = first.ledger.step_results("run-mid-1")
    assert results["mid-a:srv.verify"].status == "succeeded"
    failed = results["mid-b:srv.provision"]
    assert failed.status == "failed"
    assert "host esx-07 is in maintenance mode" in failed.message
    assert "destroyed the half-made clone" in failed.message
    assert results["mid-b:srv.verify"].status == "skipped"
    assert results["mid-c:srv.provision"].status == "skipped" and "mid-b not ready" in results["mid-c:srv.provision"].message
    assert results["loc-mid:loc.precheck"].status == "failed"
    assert "mid-c" in results["loc-mid:loc.precheck"].message
    loc = first.ledger.location_results("run-mid-1")["loc-mid"]
    assert loc["status"] == "blocked"
    first.close()
    si = sim.connect()
    assert find_vm(si, "mid-a") is not None
    assert find_vm(si, "mid-b") is None, "the half-made clone must be destroyed"
    destroyed = [c for c in sim.calls() if c["method"] == "Destroy_Task"]
    assert [c["name"] for c in destroyed] == ["mid-b"]

    sim.reset()
    second = run_live(path, tmp_path, "run-mid-2")
    again = second.ledger.step_results("run-mid-2")
    assert again["mid-a:srv.provision"].changed is False
    assert again["mid-b:srv.provision"].changed is True and again["mid-c:srv.provision"].changed is True
    assert all(again[f"{n}:srv.verify"].status == "succeeded" for n in ("mid-a", "mid-b", "mid-c"))
    assert again["loc-mid:loc.precheck"].status == "succeeded"
    touched = {c["name"] for c in sim.calls() if c["method"] in ("ReconfigVM_Task", "PowerOnVM_Task")}
    assert touched == {"mid-b", "mid-c"}, "a re-run touches nothing that was already done"
    second.close()


def test_live_run_with_wrong_password_records_explained_failures(sim, tmp_path, monkeypatch):
    monkeypatch.setenv("WRONG_VCENTER_PASSWORD", "not-the-password")
    path = write_inventory(tmp_path, sim, [inv_server("cred-a"), inv_server("cred-b", depends_on=["cred-a"])],
                           password={"env": "WRONG_VCENTER_PASSWORD"})
    session = run_live(path, tmp_path, "run-cred")
    results = session.ledger.step_results("run-cred")
    assert results["cred-a:srv.precheck"].status == "failed"
    assert "rejected the login of user 'bigbang-ops'" in results["cred-a:srv.precheck"].message
    assert results["cred-b:srv.provision"].status == "skipped"
    session.close()
    logins = [c for c in sim.calls() if c["method"] == "Login"]
    assert len(logins) == 1, "a rejected login is not retried (that would lock the account)"


# ---------------------------------------------------------------- idempotence, drift, snapshots

def test_drift_is_reported_by_default_and_left_alone(sim):
    si = sim.connect()
    clone_by_hand(si, "drift-report")
    conn = connector(sim)
    spec = server("drift-report", cluster="cl-prod-02", datastore="ds-nl-01", cpu=4, memory_gb=8)
    out = step(conn, "srv.precheck", spec)
    assert not out.ok and not out.transient
    assert "cpu 2 → 4" in out.message and "memory_gb 4 → 8" in out.message and "'report'" in out.message
    out = step(conn, "srv.provision", spec)
    assert not out.ok and "left unchanged" in out.message
    vm = find_vm(si, "drift-report")
    assert vm.config.hardware.numCPU == 2
    changing = {c["method"] for c in sim.calls() if c["name"] == "drift-report"} - {"RetrievePropertiesEx"}
    assert "ReconfigVM_Task" not in changing and "CreateSnapshot_Task" not in changing
    conn.close()


def test_drift_reconfigure_snapshots_first_then_changes(sim):
    si = sim.connect()
    clone_by_hand(si, "drift-fix")
    conn = connector(sim, drift="reconfigure")
    spec = server("drift-fix", cluster="cl-prod-02", datastore="ds-nl-01", cpu=4, disks_gb=[60])
    pre = step(conn, "srv.precheck", spec)
    assert pre.ok and pre.facts["plan"] == "reconfigure"
    out = step(conn, "srv.provision", spec)
    assert out.ok and out.changed and out.facts["action"] == "reconfigured", out.message
    vm = find_vm(si, "drift-fix")
    assert vm.config.hardware.numCPU == 4
    assert [s.name for s in vm.snapshot.rootSnapshotList] == [SNAPSHOT]
    methods = [c["method"] for c in sim.calls() if c["name"] == "drift-fix"]
    assert methods.index("CreateSnapshot_Task") < methods.index("ReconfigVM_Task")
    again = step(conn, "srv.provision", spec)
    assert again.ok and not again.changed
    conn.close()


def test_existing_vm_snapshot_is_idempotent_and_a_failed_change_reverts_to_it(sim):
    si = sim.connect()
    clone_by_hand(si, "exist-01", power_on=False)
    conn = connector(sim, drift="reconfigure")
    spec = server("exist-01", cluster="cl-prod-02", datastore="ds-nl-01", cpu=4, existing=True)
    assert step(conn, "srv.snapshot", spec).changed is True
    second = step(conn, "srv.snapshot", spec)
    assert second.ok and second.changed is False
    sim.fail_next("PowerOnVM_Task", "exist-01", "not enough CPU in the cluster")
    out = step(conn, "srv.provision", spec)
    assert not out.ok
    assert "not enough CPU in the cluster" in out.message and f"reverted to snapshot '{SNAPSHOT}'" in out.message
    reverts = [c for c in sim.calls() if c["method"] == "RevertToSnapshot_Task"]
    assert [c["name"] for c in reverts] == ["exist-01"]
    assert find_vm(si, "exist-01") is not None, "an existing VM is never destroyed"
    missing = step(conn, "srv.snapshot", server("exist-missing", existing=True))
    assert not missing.ok and "no VM named exist-missing" in missing.message
    conn.close()


# ---------------------------------------------------------------- names that do not exist

def test_missing_template_and_network_name_the_entry_and_list_what_exists(sim):
    conn = connector(sim)
    out = step(conn, "srv.precheck", server("bad-names", template="tpl-win2019", network="vlan404"))
    assert not out.ok and not out.transient
    assert "servers[bad-names].template: template 'tpl-win2019' not found in datacenter DC-Holstebro" in out.message
    assert "templates there: tpl-rhel9, tpl-win2022" in out.message
    assert "servers[bad-names].network: network 'vlan404'" in out.message
    assert "vlan110-servers, vlan120-citrix, vlan999-isolated" in out.message
    out = step(conn, "srv.provision", server("bad-dc", datacenter="DC-Aarhus"))
    assert not out.ok and "datacenters there: DC-Holstebro" in out.message
    out = step(conn, "srv.precheck", server("bad-folder", folder="servers/citrix"))
    assert not out.ok and "folder 'servers/citrix' not found" in out.message
    assert find_vm(sim.connect(), "bad-dc") is None
    conn.close()


# ---------------------------------------------------------------- sessions, TLS, faults

def test_expired_session_logs_in_again(sim):
    conn = connector(sim)
    assert step(conn, "srv.precheck", server("sess-a")).ok
    key = conn.client.session_key
    admin = sim.connect()
    admin.content.sessionManager.TerminateSession([key])
    out = step(conn, "srv.provision", server("sess-a"))
    assert out.ok, out.message
    assert conn.client.logins == 2
    assert conn.client.session_key != key
    assert step(conn, "srv.verify", server("sess-a")).ok
    conn.close()


def test_certificate_is_verified_and_can_be_pinned(sim):
    untrusted = connector(sim, ca_bundle=None)
    out = step(untrusted, "srv.precheck", server("tls-a"))
    assert not out.ok and not out.transient and "certificate not trusted" in out.message
    pinned = connector(sim, ca_bundle=None, thumbprint=":".join(
        sim.thumbprint[i:i + 2] for i in range(0, 64, 2)).upper())
    assert step(pinned, "srv.precheck", server("tls-a")).ok
    pinned.close()
    sim.reset()
    wrong = connector(sim, ca_bundle=None, thumbprint="ab" * 32)
    out = step(wrong, "srv.precheck", server("tls-a"))
    assert not out.ok and not out.transient and "another certificate than the pinned one" in out.message
    assert not [c for c in sim.calls() if c["method"] == "Login"], "no password is sent to an unpinned server"
    lab = connector(sim, ca_bundle=None, insecure=True)
    assert step(lab, "srv.precheck", server("tls-a")).ok
    lab.close()


def test_unreachable_vcenter_and_missing_secret_fail_fast_with_a_reason(sim, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    conn = connector(sim, port=port)
    started = time.monotonic()
    out = step(conn, "srv.precheck", server("gone-a"))
    assert time.monotonic() - started < 5
    assert not out.ok and out.transient and f"cannot reach vCenter 127.0.0.1:{port}" in out.message
    monkeypatch.delenv("NO_SUCH_VCENTER_PASSWORD", raising=False)
    conn = connector(sim, password={"env": "NO_SUCH_VCENTER_PASSWORD"})
    out = step(conn, "srv.precheck", server("gone-a"))
    assert not out.ok and "environment variable NO_SUCH_VCENTER_PASSWORD is not set" in out.message


def test_vcenter_that_never_answers_times_out(sim):
    with socket.socket() as silent:  # accepts connections (backlog) but never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        conn = connector(sim, port=silent.getsockname()[1], connect_timeout=1)
        started = time.monotonic()
        out = step(conn, "srv.precheck", server("silent-a"))
        assert time.monotonic() - started < 4
    assert not out.ok and out.transient and "did not answer within 1 s" in out.message


def test_a_provisioned_vm_powered_off_later_is_powered_on_but_never_customised_again(sim):
    conn = connector(sim)
    spec = server("once-01", customization={"os": "linux", "ip": "10.20.0.90"})
    assert step(conn, "srv.provision", spec).changed
    si = sim.connect()
    vm = find_vm(si, "once-01")
    assert vm.config.annotation == f"bigbang: provisioned for {ROLLOUT}"
    vm.PowerOffVM_Task()
    sim.reset()
    again = connector(sim)  # a later run
    out = step(again, "srv.provision", spec)
    assert out.ok and out.changed and out.message == "powered on"
    assert [c["method"] for c in sim.calls() if c["name"] == "once-01" and c["method"].endswith("_Task")] == \
        ["PowerOnVM_Task"]
    conn.close()
    again.close()


def test_guest_without_ip_fails_within_the_timeout_without_polling_and_is_rolled_back(sim):
    conn = connector(sim, ip_timeout=2)
    spec = server("noip-01", network="vlan999-isolated")  # no DHCP on that port group
    assert step(conn, "srv.provision", spec).ok
    sim.reset()
    started = time.monotonic()
    out = step(conn, "srv.verify", spec)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 6
    assert not out.ok and not out.transient
    assert "noip-01: expected an IP address (DHCP) from running guest tools within 2 s" in out.message
    assert "the guest reports no address: no address" in out.message
    assert "destroyed the half-made clone" in out.message
    waits = [c for c in sim.calls() if c["method"] == "WaitForUpdatesEx"]
    assert 1 <= len(waits) <= 4, f"{len(waits)} waits in 2 s: the wait must block, not poll"
    assert find_vm(sim.connect(), "noip-01") is None
    conn.close()


def test_a_failing_clone_task_is_an_explained_failure(sim):
    conn = connector(sim)
    sim.fail_next("CloneVM_Task", "tpl-win2022", "insufficient disk space on ds-ssd-02")
    out = step(conn, "srv.provision", server("task-err", template="tpl-win2022", datastore="ds-ssd-02"))
    assert not out.ok and out.transient
    assert "clone task-err from tpl-win2022 in datacenter DC-Holstebro: vCenter task failed" in out.message
    assert "insufficient disk space on ds-ssd-02" in out.message
    assert find_vm(sim.connect(), "task-err") is None
    retry = step(conn, "srv.provision", server("task-err", template="tpl-win2022", datastore="ds-ssd-02"), 2)
    assert retry.ok and retry.changed
    conn.close()


# ---------------------------------------------------------------- concurrency limits

def _provision_many(sim, names: list[str], settings: dict, placement) -> list:
    conn = connector(sim, **settings)
    assert step(conn, "srv.precheck", server(names[0], **placement(0))).ok  # log in and read names once
    sim.reset()
    sim.delay("CloneVM_Task", 300)
    try:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            outs = list(pool.map(lambda i: step(conn, "srv.provision", server(names[i], **placement(i))),
                                 range(len(names))))
    finally:
        sim.delay("CloneVM_Task", 0)
    assert all(o.ok for o in outs), [o.message for o in outs if not o.ok]
    return [conn, sim.calls()]


def test_clone_concurrency_is_limited_per_cluster(sim):
    names = [f"lim-cl-{i}" for i in range(6)]
    stores = ["ds-ssd-01", "ds-nl-01", "ds-ssd-02"]
    conn, calls = _provision_many(sim, names, {"max_parallel_clones": 2, "max_parallel_per_datastore": 8},
                                  lambda i: {"cluster": "cl-lab-01", "datastore": stores[i % 3]})
    assert peak_overlap(calls, "CloneVM_Task") == 2
    assert conn.stats()["cluster_peaks"]["cl-lab-01"] == 2


def test_clone_concurrency_is_limited_per_datastore_and_unlimited_clones_overlap(sim):
    names = [f"lim-ds-{i}" for i in range(3)]
    clusters = ["cl-prod-01", "cl-prod-02", "cl-lab-01"]
    conn, calls = _provision_many(sim, names, {"max_parallel_clones": 8, "max_parallel_per_datastore": 1},
                                  lambda i: {"cluster": clusters[i], "datastore": "ds-ssd-02"})
    assert peak_overlap(calls, "CloneVM_Task") == 1
    assert conn.stats()["datastore_peaks"]["ds-ssd-02"] == 1
    # The same three clones without a binding limit do overlap: the measurement can see concurrency.
    names = [f"lim-free-{i}" for i in range(3)]
    _conn, calls = _provision_many(sim, names, {"max_parallel_clones": 8, "max_parallel_per_datastore": 8},
                                  lambda i: {"cluster": clusters[i], "datastore": "ds-ssd-02"})
    assert peak_overlap(calls, "CloneVM_Task") >= 2
