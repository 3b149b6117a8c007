"""Two datacenters in one vCenter, a VM name that repeats in both: discover, validate, diff, plan, run.

The simulator (tests/peers/vcsim) runs with datacenters DC-Nord and DC-Syd, each with the same cluster,
datastore and network names; tpl-rhel9 and tpl-win2022 exist only in DC-Nord, tpl-rhel9-syd only in
DC-Syd. What vCenter holds is checked through a second, independent pyvmomi session.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pyVmomi import vim

from bigbang.connectors.base import ConnectorContext
from bigbang.connectors.vsphere import VsphereSettings, create
from bigbang.secrets import resolve
from tests.peers.vcsim import Vcsim
from tests.test_vsphere import ROLLOUT, server, step

DCS = "DC-Nord,DC-Syd"
TEMPLATES = "tpl-win2022:windows2019srv_64Guest,tpl-rhel9:rhel8_64Guest,DC-Syd/tpl-rhel9-syd:rhel8_64Guest"
WINDOW = {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00"}
PASSWORD_ENV = "BIGBANG_TEST_VCENTER2_PASSWORD"  # not the shared simulator's


def settings(sim: Vcsim, **over: Any) -> dict[str, Any]:
    return sim.settings(datacenter=None, password={"env": PASSWORD_ENV}, **over)


def connector(sim: Vcsim, **over: Any):
    conf = VsphereSettings.model_validate(settings(sim, **over))
    inventory = SimpleNamespace(rollout=SimpleNamespace(name=ROLLOUT))
    return create(conf, ConnectorContext(run_id="test", inventory=inventory, resolve_secret=resolve))


@pytest.fixture(scope="module")
def two_dc():
    sim = Vcsim("-datacenter", DCS, "-templates", TEMPLATES)
    os.environ[PASSWORD_ENV] = sim.password
    yield sim
    sim.stop()


@pytest.fixture
def env(bb_env, two_dc):
    return {**bb_env, PASSWORD_ENV: two_dc.password}


def vms_named(si, name: str) -> dict[str, Any]:
    """{datacenter name: VM} for every VM called `name`."""
    out = {}
    for dc in si.content.rootFolder.childEntity:
        view = si.content.viewManager.CreateContainerView(dc.vmFolder, [vim.VirtualMachine], True)
        try:
            for vm in view.view:
                if vm.name == name:
                    out[dc.name] = vm
        finally:
            view.Destroy()
    return out


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_discover_validate_diff_round_trip_with_a_name_in_both_datacenters(bigbang, env, two_dc, tmp_path):
    conn = connector(two_dc)
    nord = server("app01", datacenter="DC-Nord", cpu=2, memory_gb=4)
    syd = server("app01-syd", vm_name="app01", datacenter="DC-Syd", template="tpl-rhel9-syd", cpu=4,
                 memory_mb=1536, disks_gb=[40.5], cluster="cl-prod-02", datastore="ds-nl-01")
    only_syd = server("db01", datacenter="DC-Syd", template="tpl-rhel9-syd", memory_gb=8)
    for spec in (nord, syd, only_syd):
        started = time.monotonic()
        out = step(conn, "srv.provision", spec)
        assert out.ok, out.message
        print(f"provisioned {spec['name']} in {time.monotonic() - started:.2f} s")
    again = step(conn, "srv.provision", syd, 2)  # found in its own datacenter: nothing to do
    assert again.ok and not again.changed, again.message
    conn.close()

    si = two_dc.connect()
    both = vms_named(si, "app01")
    assert set(both) == {"DC-Nord", "DC-Syd"}
    assert both["DC-Syd"].config.hardware.memoryMB == 1536 and both["DC-Syd"].config.hardware.numCPU == 4
    disk = next(d for d in both["DC-Syd"].config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    assert disk.capacityInKB == int(40.5 * 1024 * 1024)
    assert both["DC-Nord"].config.hardware.memoryMB == 4096

    inv = tmp_path / "inv"
    write(inv / "rollout.yaml", {"rollout": {"name": ROLLOUT, "window": WINDOW},
                                 "connectors": {"vsphere": settings(two_dc)}})
    out = inv / "servers.yaml"
    started = time.monotonic()
    bigbang("vcenter", "discover", "--inventory", inv / "rollout.yaml", "--out", out, env=env, check=True)
    print(f"discover: {time.monotonic() - started:.2f} s")
    servers = {s["name"]: s for s in yaml.safe_load(out.read_text())["servers"]}
    assert set(servers) == {"app01-dc-nord", "app01-dc-syd", "db01"}, sorted(servers)
    assert servers["app01-dc-nord"]["vm_name"] == "app01" and servers["app01-dc-nord"]["datacenter"] == "DC-Nord"
    assert servers["app01-dc-nord"]["template"] == "tpl-rhel9"
    assert servers["app01-dc-nord"]["memory_gb"] == 4 and "memory_mb" not in servers["app01-dc-nord"]
    s = servers["app01-dc-syd"]
    assert (s["vm_name"], s["datacenter"], s["template"]) == ("app01", "DC-Syd", "tpl-rhel9-syd")
    assert s["memory_mb"] == 1536 and "memory_gb" not in s and s["disks_gb"] == [40.5] and s["cpu"] == 4
    assert servers["db01"]["template"] == "tpl-rhel9-syd", "a template from the VM's own datacenter"

    proc = bigbang("validate", inv, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = bigbang("vcenter", "diff", inv, "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["server"]: r for r in json.loads(proc.stdout)}
    assert {name: r["action"] for name, r in rows.items()} == dict.fromkeys(servers, "fine"), rows
    plan = bigbang("plan", inv, "--vcenter", env=env)
    assert plan.returncode == 0 and "3 already fine, 0 drifted, 0 errors" in plan.stdout, plan.stdout

    # drift on one side only: diff and plan --vcenter agree (exit 1), and it is the DC-Syd VM that drifted
    task = both["DC-Syd"].ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=6))
    assert task.info.state == "success", task.info.error
    proc = bigbang("vcenter", "diff", inv, "--json", env=env)
    rows = {r["server"]: r for r in json.loads(proc.stdout)}
    assert proc.returncode == 1
    assert rows["app01-dc-syd"]["action"] == "drift" and rows["app01-dc-syd"]["changes"] == ["cpu 6 → 4"]
    assert rows["app01-dc-nord"]["action"] == "fine"
    plan = bigbang("plan", inv, "--vcenter", env=env)
    assert plan.returncode == proc.returncode == 1
    both["DC-Syd"].ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=4))


def test_discover_refuses_an_unknown_datacenter(bigbang, env, two_dc, tmp_path):
    inv = write(tmp_path / "rollout.yaml", {"rollout": {"name": ROLLOUT, "window": WINDOW},
                                            "connectors": {"vsphere": settings(two_dc)}})
    out = tmp_path / "servers.yaml"
    proc = bigbang("vcenter", "discover", "--inventory", inv, "--datacenter", "DC-Nowhere", "--out", out, env=env)
    assert proc.returncode == 1 and not out.exists()
    assert "datacenter 'DC-Nowhere' not found in vCenter; datacenters there: DC-Nord, DC-Syd" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lookups_are_scoped_to_the_datacenter_and_a_name_in_two_needs_one(two_dc):
    conn = connector(two_dc)
    unscoped = server("app01", datacenter=None)
    out = step(conn, "srv.precheck", unscoped)
    assert not out.ok and "2 VMs are named app01 in vCenter (datacenters: DC-Nord, DC-Syd)" in out.message
    assert "name the server's datacenter" in out.message
    scoped = step(conn, "srv.precheck", server("app01", datacenter="DC-Syd", template="tpl-rhel9-syd", cpu=4,
                                                memory_mb=1536, disks_gb=[40.5], cluster="cl-prod-02",
                                                datastore="ds-nl-01"))
    assert scoped.ok and scoped.facts["plan"] == "fine", scoped.message
    wrong_dc_template = step(conn, "srv.precheck", server("new-syd01", datacenter="DC-Syd", template="tpl-rhel9"))
    assert not wrong_dc_template.ok
    assert "template 'tpl-rhel9' not found in datacenter DC-Syd; templates there: tpl-rhel9-syd" in \
        wrong_dc_template.message
    conn.close()


def test_live_run_whose_servers_fail_exits_1_and_names_them(bigbang, env, two_dc, tmp_path):
    two_dc.fail_next("CloneVM_Task", "tpl-win2022", "insufficient disk space on ds-ssd-02")
    doc = {
        "rollout": {"name": ROLLOUT, "window": WINDOW, "failure_policy": {"retries": 0, "retry_delay": 0}},
        "teams": [{"id": "team-a", "name": "Team A"}],
        "servers": [
            {"name": "bad-tpl01", "template": "tpl-nope", "datacenter": "DC-Nord", "cluster": "cl-prod-01",
             "datastore": "ds-ssd-01", "network": "vlan110-servers", "customization": {"os": "linux"}},
            {"name": "clonefail01", "template": "tpl-win2022", "datacenter": "DC-Nord", "cluster": "cl-prod-01",
             "datastore": "ds-ssd-02", "network": "vlan110-servers", "customization": {"os": "linux"}},
            {"name": "good01", "template": "tpl-rhel9-syd", "datacenter": "DC-Syd", "cluster": "cl-prod-01",
             "datastore": "ds-ssd-01", "network": "vlan110-servers", "customization": {"os": "linux"}},
        ],
        "connectors": {"vsphere": settings(two_dc)},
    }
    path = write(tmp_path / "inventory.yaml", doc)
    started = time.monotonic()
    proc = bigbang("run", path, "--mode", "live", "--quiet", "--run-id", "run-srv-fail",
                   "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}", env=env)
    print(f"live run with failing servers: {time.monotonic() - started:.1f} s, exit {proc.returncode}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    failed = next(line for line in lines if line.startswith("Servers not done (2): "))
    assert "bad-tpl01 (failed: " in failed and "template 'tpl-nope' not found" in failed
    assert "clonefail01 (failed: " in failed and "insufficient disk space" in failed
    assert "good01" not in failed
    assert "1 of 3 servers done, 2 failed" in proc.stdout
    assert lines[-1] == "To retry what failed: bigbang run --resume run-srv-fail --retry-failed"
    assert "Traceback" not in proc.stderr


def test_a_standalone_esxi_host_is_discovered_diffed_and_says_it_is_one(bigbang, bb_env, tmp_path):
    esx = Vcsim("-esx")
    try:
        env = {**bb_env, "BIGBANG_TEST_ESX_PASSWORD": esx.password}
        si = esx.connect()
        assert si.content.about.apiType == "HostAgent"
        dc = si.content.rootFolder.childEntity[0]
        host = dc.hostFolder.childEntity[0]
        tpl = next(vm for vm in dc.vmFolder.childEntity if vm.name == "tpl-rhel9")
        task = tpl.CloneVM_Task(folder=dc.vmFolder, name="esx-app01", spec=vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(pool=host.resourcePool), powerOn=False))
        assert task.info.state == "success", task.info.error
        conf = esx.settings(datacenter=None, password={"env": "BIGBANG_TEST_ESX_PASSWORD"})
        inv = tmp_path / "inv"
        write(inv / "rollout.yaml", {"rollout": {"name": ROLLOUT, "window": WINDOW}, "connectors": {"vsphere": conf}})
        out = inv / "servers.yaml"
        bigbang("vcenter", "discover", "--inventory", inv / "rollout.yaml", "--out", out, env=env, check=True)
        text = out.read_text()
        assert f"# Discovered from standalone ESXi host {esx.host}:{esx.port} (VMware ESXi" in text
        entry = yaml.safe_load(text)["servers"][0]
        assert (entry["name"], entry["datacenter"], entry["cluster"]) == ("esx-app01", "ha-datacenter", host.name)
        proc = bigbang("vcenter", "diff", inv, "--json", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [r["action"] for r in json.loads(proc.stdout)] == ["fine"]
        assert "a standalone host, not vCenter" in proc.stderr

        servers = yaml.safe_load(text)["servers"] + [{
            "name": "esx-new01", "template": "tpl-rhel9", "cluster": host.name, "datastore": entry["datastore"],
            "network": entry["network"], "customization": {"os": "linux"}}]
        write(out, {"servers": servers})
        proc = bigbang("vcenter", "diff", inv, "--json", env=env)
        rows = {r["server"]: r for r in json.loads(proc.stdout)}
        assert proc.returncode == 1 and rows["esx-app01"]["action"] == "fine"
        assert rows["esx-new01"]["action"] == "error"
        assert "is a standalone ESXi host, not vCenter, and cannot clone template tpl-rhel9" in \
            rows["esx-new01"]["message"]
    finally:
        esx.stop()
