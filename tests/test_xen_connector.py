"""The xen connector against the XenAPI test pool (tests/peers/xenapi_server.py), over verified HTTPS.

Each test uses its own server names, so the tests of this module share one pool. What the pool
ends up with is read back from the pool's own database, and what bigbang sent from its call log.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.xen import XenSettings, create
from bigbang.secrets import resolve
from tests.peers.xenapi_server import PASSWORD, PASSWORD_ENV, GiB, xapi  # noqa: F401

ROLLOUT = "Test Kommune Big Bang"
SNAPSHOT = "bigbang-before-test-kommune-big-bang"
ROOT = Path(__file__).resolve().parent.parent
CHANGING = ("Async.", "VM.set_", "VDI.create", "VBD.create", "VIF.create", "VIF.destroy", "VDI.destroy",
            "VM.add_to", "VM.remove_from")


# ---------------------------------------------------------------- helpers

def server(name: str, **over: Any) -> dict[str, Any]:
    spec = {"name": name, "template": "tpl-rhel9", "cluster": "cl-prod-02", "datastore": "ds-ssd-01",
            "network": "vlan120-citrix", "cpu": 4, "memory_gb": 8, "disks_gb": [40, 100], "existing": False,
            "datacenter": None, "resource_pool": None, "folder": None, "platform": "citrix", "depends_on": [],
            "customization": {"os": "linux", "ip": "10.20.0.40", "dns": ["10.20.0.10"], "domain": "ad.test",
                              "netmask": "255.255.255.0", "gateway": "10.20.0.1"}}
    spec.update(over)
    return spec


def connector(pool, **settings: Any):
    conf = XenSettings.model_validate(pool.settings(**settings))
    inventory = SimpleNamespace(rollout=SimpleNamespace(name=ROLLOUT), server_by_name={})
    return create(conf, ConnectorContext(run_id="test", inventory=inventory, resolve_secret=resolve))


def step(conn, kind: str, spec: dict[str, Any], attempt: int = 1):
    params: dict[str, Any] = spec
    if kind == "srv.verify":
        params = {"ip": (spec.get("customization") or {}).get("ip", "dhcp")}
    elif kind == "srv.snapshot":
        params = {"snapshot": SNAPSHOT}
    return conn.run(Action(f"{spec['name']}:{kind}", kind, spec["name"], attempt, params))


def changing_calls(pool, since: int) -> list[str]:
    return [m for _h, m in pool.calls[since:] if m.startswith(CHANGING)]


def vm_on(pool, name: str):
    """A `when` for pool.fail(): the call's first argument is the named VM."""
    return lambda args: bool(args) and pool.db["VM"].get(args[0], {}).get("name_label") == name


# ---------------------------------------------------------------- precheck

def test_precheck_lists_what_exists_when_names_are_wrong(xapi):
    conn = connector(xapi)
    try:
        out = step(conn, "srv.precheck", server("ctx-pre01", template="tpl-win2019", datastore="ds-gone",
                                                  network="vlan999"))
        assert not out.ok and not out.transient
        assert "servers[ctx-pre01].template: template 'tpl-win2019' not found in pool cl-prod-02" in out.message
        assert "templates there: tpl-rhel9, tpl-win2022, tpl-win2022-vda" in out.message
        assert "SR 'ds-gone' not found" in out.message and "ds-nl-01, ds-ssd-01" in out.message
        assert "network 'vlan999' not found" in out.message
        wrong_pool = step(conn, "srv.precheck", server("ctx-pre02", cluster="cl-ctx-09"))
        assert not wrong_pool.ok and "pool 'cl-ctx-09' is not the pool at" in wrong_pool.message
        ok = step(conn, "srv.precheck", server("ctx-pre03"))
        assert ok.ok and not ok.changed and ok.facts["plan"] == "create"
        assert ok.message == "clone tpl-rhel9 to cl-prod-02/ds-ssd-01 on vlan120-citrix"
    finally:
        conn.close()


def test_precheck_checks_room_on_the_sr_and_a_host(xapi):
    conn = connector(xapi)
    try:
        disk = step(conn, "srv.precheck", server("ctx-cap01", disks_gb=[40, 30_000]))
        assert not disk.ok and "SR ds-ssd-01 has" in disk.message and "the disks need 30,040 GB" in disk.message
        memory = step(conn, "srv.precheck", server("ctx-cap02", memory_gb=4096))
        assert not memory.ok and "no host of pool cl-prod-02 has 4096 GB free" in memory.message
    finally:
        conn.close()


# ---------------------------------------------------------------- provision, verify, re-run

def test_provision_clones_configures_starts_and_reports_the_ip(xapi):
    spec = server("ctx-new01")
    conn = connector(xapi)
    try:
        out = step(conn, "srv.provision", spec)
        assert out.ok and out.changed, out.message
        assert out.facts["action"] == "created" and out.message.startswith("cloned from tpl-rhel9 to cl-prod-02/ds-ssd-01")
        vm = xapi.vm("ctx-new01")
        assert vm is not None and not vm["is_a_template"] and vm["power_state"] == "Running"
        assert (vm["VCPUs_max"], vm["VCPUs_at_startup"]) == ("4", "4")
        assert {vm[f"memory_{k}"] for k in ("static_max", "dynamic_max", "dynamic_min")} == {str(8 * GiB)}
        assert int(vm["memory_static_min"]) <= 8 * GiB
        assert xapi.disks("ctx-new01") == [("0", 40, "ds-ssd-01"), ("1", 100, "ds-ssd-01")]
        assert xapi.vif_networks("ctx-new01") == ["vlan120-citrix"]
        assert vm["xenstore_data"]["vm-data/ip"] == "10.20.0.40"
        assert vm["xenstore_data"]["vm-data/hostname"] == "ctx-new01"
        assert vm["xenstore_data"]["vm-data/dns"] == "10.20.0.10"
        assert vm["other_config"]["bigbang"] == f"provisioned for {ROLLOUT}"
        verify = step(conn, "srv.verify", spec)
        assert verify.ok and verify.facts["ip"] == "10.20.0.40", verify.message
    finally:
        conn.close()
    assert xapi.method_count("Async.VM.clone") >= 1


def test_a_template_on_another_sr_is_copied_there(xapi):
    spec = server("ctx-copy01", datastore="ds-nl-01", disks_gb=[20], customization={"os": "linux", "ip": "dhcp"})
    conn = connector(xapi)
    try:
        before = xapi.method_count("Async.VM.copy")
        out = step(conn, "srv.provision", spec)
        assert out.ok and out.message.startswith("copied from tpl-rhel9 to cl-prod-02/ds-nl-01"), out.message
        assert xapi.method_count("Async.VM.copy") == before + 1
        assert xapi.disks("ctx-copy01") == [("0", 20, "ds-nl-01")]
        verify = step(conn, "srv.verify", spec)
        assert verify.ok and verify.facts["ip"].startswith("10.99."), verify.message
    finally:
        conn.close()


def test_a_rerun_finds_everything_as_planned_and_changes_nothing(xapi):
    spec = server("ctx-idem01", customization={"os": "windows", "ip": "10.20.0.41"})
    first = connector(xapi)
    try:
        assert step(first, "srv.provision", spec).ok
        assert step(first, "srv.verify", spec).ok
    finally:
        first.close()
    record = xapi.vm("ctx-idem01")
    again = connector(xapi)  # a new run: a new connector, nothing remembered
    try:
        since = len(xapi.calls)
        pre = step(again, "srv.precheck", spec)
        assert pre.ok and pre.facts["plan"] == "fine" and pre.message == "exists and matches the inventory"
        out = step(again, "srv.provision", spec)
        assert out.ok and not out.changed and out.message == "already as planned"
        verify = step(again, "srv.verify", spec)
        assert verify.ok and not verify.changed
        assert changing_calls(xapi, since) == []
    finally:
        again.close()
    after = xapi.vm("ctx-idem01")
    assert after is not None and record is not None
    assert {k: after[k] for k in ("VCPUs_at_startup", "memory_static_max", "VBDs", "VIFs", "other_config")} == \
        {k: record[k] for k in ("VCPUs_at_startup", "memory_static_max", "VBDs", "VIFs", "other_config")}


# ---------------------------------------------------------------- drift

def test_drift_is_reported_and_left_alone(xapi):
    xapi.add_vm("ctx-drift01", cpu=2, memory_gb=8, disks_gb=(40,), network="vlan120-citrix", ip="10.20.0.50")
    spec = server("ctx-drift01", existing=True, cpu=4, disks_gb=[40],
                  customization={"os": "windows", "ip": "10.20.0.50"})
    conn = connector(xapi)
    try:
        since = len(xapi.calls)
        pre = step(conn, "srv.precheck", spec)
        assert not pre.ok and pre.facts["plan"] == "drift" and "cpu 2 → 4" in pre.message
        out = step(conn, "srv.provision", spec)
        assert not out.ok and not out.transient and "connectors.xen.drift is 'report'" in out.message
        assert out.facts["drift"] == ["cpu 2 → 4"]
        assert changing_calls(xapi, since) == []
        assert xapi.vm("ctx-drift01")["VCPUs_at_startup"] == "2"
        shrink = step(conn, "srv.precheck", server("ctx-drift01", existing=True, cpu=2, disks_gb=[20],
                                                   customization={"os": "windows", "ip": "10.20.0.50"}))
        assert not shrink.ok and "XenAPI cannot shrink a disk" in shrink.message
    finally:
        conn.close()


def test_drift_reconfigure_snapshots_then_changes_the_vm(xapi):
    xapi.add_vm("ctx-drift02", cpu=2, memory_gb=4, disks_gb=(40,), network="vlan110-servers", ip="10.20.0.51")
    spec = server("ctx-drift02", existing=True, cpu=4, memory_gb=8, disks_gb=[60, 10],
                  customization={"os": "windows", "ip": "10.20.0.51"})
    conn = connector(xapi, drift="reconfigure")
    try:
        snap = step(conn, "srv.snapshot", spec)
        assert snap.ok and snap.changed and snap.message == f"snapshot '{SNAPSHOT}' taken"
        assert not step(conn, "srv.snapshot", spec).changed  # once
        out = step(conn, "srv.provision", spec)
        assert out.ok and out.changed and out.facts["action"] == "reconfigured", out.message
        vm = xapi.vm("ctx-drift02")
        assert vm["VCPUs_at_startup"] == "4" and vm["memory_static_max"] == str(8 * GiB)
        assert xapi.disks("ctx-drift02") == [("0", 60, "ds-ssd-01"), ("1", 10, "ds-ssd-01")]
        assert xapi.vif_networks("ctx-drift02") == ["vlan120-citrix"]
        assert vm["power_state"] == "Running"  # shut down for the change, started again
        assert xapi.snapshot_names("ctx-drift02") == [SNAPSHOT]
        assert "vm-data/hostname" not in vm["xenstore_data"]  # a booted VM is never customised again
        assert step(conn, "srv.verify", spec).ok
    finally:
        conn.close()


# ---------------------------------------------------------------- rollback

def test_a_failed_start_destroys_the_half_made_clone_and_its_disks(xapi):
    spec = server("ctx-fail01")
    xapi.fail("VM.start", "HOST_NOT_ENOUGH_FREE_MEMORY", str(8 * GiB), "1024", when=vm_on(xapi, "ctx-fail01"))
    vdis_before = len(xapi.records("VDI"))
    conn = connector(xapi)
    try:
        out = step(conn, "srv.provision", spec)
        assert not out.ok, out.message
        assert "start ctx-fail01: XenAPI task failed: HOST_NOT_ENOUGH_FREE_MEMORY" in out.message
        assert "rolled back: destroyed the half-made clone and its disks" in out.message
        assert xapi.vm("ctx-fail01") is None
        assert not [r for r in xapi.records("VM").values() if r["name_label"] == "ctx-fail01"]
        assert len(xapi.records("VDI")) == vdis_before
        # the next attempt starts from scratch and succeeds
        retry = step(conn, "srv.provision", spec, attempt=2)
        assert retry.ok and retry.facts["action"] == "created", retry.message
    finally:
        conn.close()


def test_a_failed_change_reverts_the_existing_vm_to_its_snapshot(xapi):
    xapi.add_vm("ctx-fail02", cpu=2, memory_gb=4, disks_gb=(40,), network="vlan120-citrix", ip="10.20.0.52")
    spec = server("ctx-fail02", existing=True, cpu=4, memory_gb=4, disks_gb=[80],
                  customization={"os": "windows", "ip": "10.20.0.52"})
    xapi.fail("VDI.resize", "SR_BACKEND_FAILURE_44", "", "There is insufficient space")
    conn = connector(xapi, drift="reconfigure")
    try:
        assert step(conn, "srv.snapshot", spec).changed
        out = step(conn, "srv.provision", spec)
        assert not out.ok and "SR_BACKEND_FAILURE_44" in out.message, out.message
        assert f"rolled back: reverted to snapshot '{SNAPSHOT}'" in out.message
        vm = xapi.vm("ctx-fail02")
        assert vm["VCPUs_at_startup"] == "2" and vm["power_state"] == "Running"
        assert xapi.disks("ctx-fail02") == [("0", 40, "ds-ssd-01")]
    finally:
        conn.close()


def test_no_ip_in_time_fails_verify_and_rolls_the_clone_back(xapi):
    spec = server("ctx-noip01", customization={"os": "linux", "ip": "10.20.0.60"})
    xapi.no_ip("ctx-noip01")
    conn = connector(xapi, ip_timeout=0.6)
    try:
        assert step(conn, "srv.provision", spec).ok
        out = step(conn, "srv.verify", spec)
        assert not out.ok and not out.transient
        assert "no address 10.20.0.60 from the guest within 0.6 s (guest agent: not reporting" in out.message
        assert "rolled back: destroyed the half-made clone" in out.message
        assert xapi.vm("ctx-noip01") is None
    finally:
        conn.close()


def test_a_task_that_outlasts_task_timeout_is_cancelled(xapi):
    conn = connector(xapi, task_timeout=0.3)
    delay, xapi.task_delay = xapi.task_delay, 1.5
    try:
        out = step(conn, "srv.provision", server("ctx-slow01"))
        assert not out.ok and out.transient
        assert "clone ctx-slow01 from tpl-rhel9: XenAPI task did not finish within 0.3 s" in out.message
        assert xapi.method_count("task.cancel") >= 1
    finally:
        xapi.task_delay = delay
        conn.close()
    assert xapi.vm("ctx-slow01") is None


# ---------------------------------------------------------------- transport

def test_logging_in_to_a_member_follows_host_is_slave_to_the_master(xapi):
    conn = connector(xapi, member=True)
    try:
        since = len(xapi.calls)
        out = step(conn, "srv.precheck", server("ctx-member01"))
        assert out.ok, out.message
        calls = xapi.calls[since:]
        member, master = (xapi.db["host"][h]["name_label"] for h in (xapi.member_ref, xapi.master_ref))
        assert calls[0] == (member, "session.login_with_password")
        assert calls[1] == (master, "session.login_with_password")
        assert all(host == master for host, _m in calls[1:])
        client, _catalog = conn.pool("ctx-member01")
        assert client.redirects == 1 and client.master.host == xapi.master_address
    finally:
        conn.close()


def test_every_session_is_logged_out(xapi):
    before = set(xapi.records("session"))
    conn = connector(xapi)
    assert step(conn, "srv.precheck", server("ctx-logout01")).ok
    assert len(set(xapi.records("session")) - before) == 1
    conn.close()
    assert set(xapi.records("session")) - before == set()
    assert xapi.calls[-1][1] == "session.logout"


def test_an_expired_session_is_renewed_once(xapi):
    conn = connector(xapi)
    try:
        assert step(conn, "srv.precheck", server("ctx-expire01")).ok
        with xapi.lock:
            xapi.db["session"].clear()  # the pool restarted its toolstack
        out = step(conn, "srv.provision", server("ctx-expire01", disks_gb=[20]))
        assert out.ok, out.message
        assert conn.stats()["logins"] == 2
    finally:
        conn.close()


def test_an_untrusted_certificate_is_a_clear_failure(xapi):
    conn = connector(xapi, ca_file=None)  # the system store does not know the test CA
    try:
        since = len(xapi.calls)
        out = step(conn, "srv.precheck", server("ctx-tls01"))
        assert not out.ok and not out.transient
        assert f"XenAPI {xapi.master_address}:{xapi.port}: certificate not trusted" in out.message
        assert "set connectors.xen.ca_file" in out.message
        assert xapi.calls[since:] == []  # the password never left
    finally:
        conn.close()


def test_a_wrong_password_is_not_retried(xapi, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    conn = connector(xapi)
    try:
        since = len(xapi.calls)
        out = step(conn, "srv.precheck", server("ctx-pw01"))
        assert not out.ok and not out.transient
        assert "rejected the login of user 'root' (wrong user name or password)" in out.message
        again = step(conn, "srv.precheck", server("ctx-pw01"), attempt=2)
        assert not again.ok and again.message == out.message
        assert [m for _h, m in xapi.calls[since:]] == ["session.login_with_password"]  # no lock-out
    finally:
        conn.close()


# ---------------------------------------------------------------- CLI

def _inventory(tmp: Path, pool, servers: list[dict[str, Any]] | None = None) -> Path:
    inv = tmp / "inventory"
    inv.mkdir(exist_ok=True)
    (inv / "rollout.yaml").write_text(yaml.safe_dump({
        "rollout": {"name": ROLLOUT, "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00"}},
        "connectors": {"xen": pool.settings()},
    }))
    if servers is not None:
        (inv / "servers.yaml").write_text(yaml.safe_dump({"servers": servers}))
    return inv


def test_cli_discover_then_diff_shows_no_drift(xapi, bigbang, bb_env, tmp_path):
    xapi.add_vm("ctx-found01", cpu=4, memory_gb=16, disks_gb=(100, 200), network="vlan120-citrix",
                ip="10.20.0.70")
    env = {**bb_env, PASSWORD_ENV: PASSWORD}
    inv = _inventory(tmp_path, xapi)
    found = inv / "servers.yaml"
    out = bigbang("xen", "discover", "--inventory", inv, "--out", found, env=env, check=True)
    assert "servers to" in out.stderr
    servers = yaml.safe_load(found.read_text())["servers"]
    entry = next(s for s in servers if s["name"] == "ctx-found01")
    assert entry == {"name": "ctx-found01", "template": "unknown", "cluster": "cl-prod-02",
                     "datastore": "ds-ssd-01", "network": "vlan120-citrix", "cpu": 4, "memory_gb": 16,
                     "disks_gb": [100, 200], "platform": "citrix", "existing": True,
                     "customization": {"os": "windows", "ip": "10.20.0.70"}}
    since = len(xapi.calls)
    diff = bigbang("xen", "diff", inv, "--json", env=env)
    assert diff.returncode == 0, diff.stderr
    results = {r["server"]: r for r in json.loads(diff.stdout)}
    assert results["ctx-found01"]["action"] == "fine"
    assert {r["action"] for r in results.values()} == {"fine"}
    assert changing_calls(xapi, since) == []
    table = bigbang("xen", "diff", inv, env=env, check=True)
    assert "0 to create, 0 to reconfigure" in table.stdout and "0 drifted, 0 errors" in table.stdout


def test_memory_and_disks_that_are_not_whole_gb_round_trip_and_are_provisioned_exactly(xapi, bigbang, bb_env,
                                                                                       tmp_path):
    xapi.add_vm("ctx-odd01", cpu=2, memory_mb=6656, disks_gb=(40, 12.5), network="vlan120-citrix")
    env = {**bb_env, PASSWORD_ENV: PASSWORD}
    inv = _inventory(tmp_path, xapi)
    found = inv / "servers.yaml"
    bigbang("xen", "discover", "--inventory", inv, "--out", found, env=env, check=True)
    entry = next(s for s in yaml.safe_load(found.read_text())["servers"] if s["name"] == "ctx-odd01")
    assert entry["memory_mb"] == 6656 and "memory_gb" not in entry and entry["disks_gb"] == [40, 12.5]
    diff = bigbang("xen", "diff", inv, "--json", env=env)
    assert diff.returncode == 0, diff.stderr
    assert next(r for r in json.loads(diff.stdout) if r["server"] == "ctx-odd01")["action"] == "fine"

    conn = connector(xapi)
    try:  # a new server given in MB gets exactly that, not its memory_gb
        out = step(conn, "srv.provision", server("ctx-mem01", memory_gb=4, memory_mb=3584, disks_gb=[40]))
        assert out.ok, out.message
        vm = xapi.vm("ctx-mem01")
        assert {vm[f"memory_{k}"] for k in ("static_max", "dynamic_max", "dynamic_min")} == {str(3584 * 1024 ** 2)}
        too_big = step(conn, "srv.precheck", server("ctx-mem02", memory_mb=4096 * 1024 + 512))
        assert not too_big.ok and "servers[ctx-mem02].memory_mb:" in too_big.message and "MB free" in too_big.message
    finally:
        conn.close()


def test_cli_diff_shows_create_and_errors_and_exits_1(xapi, bigbang, bb_env, tmp_path):
    env = {**bb_env, PASSWORD_ENV: PASSWORD}
    wanted = {k: v for k, v in server("ctx-plan01").items() if v is not None and k != "depends_on"}
    broken = {**wanted, "name": "ctx-plan02", "template": "tpl-nope"}
    inv = _inventory(tmp_path, xapi, [wanted, broken])
    diff = bigbang("xen", "diff", inv, "--json", env=env)
    assert diff.returncode == 1
    results = {r["server"]: r for r in json.loads(diff.stdout)}
    assert results["ctx-plan01"]["action"] == "create"
    assert results["ctx-plan02"]["action"] == "error" and "tpl-nope" in results["ctx-plan02"]["message"]


def test_cli_names_the_problem_in_one_line(bigbang, bb_env, tmp_path, xapi):
    inv = _inventory(tmp_path, xapi)
    env = {k: v for k, v in bb_env.items() if k != PASSWORD_ENV}
    out = bigbang("xen", "discover", "--inventory", inv, env=env)
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"error: environment variable {PASSWORD_ENV} is not set")
    assert "Traceback" not in out.stderr


def test_demo_live_plan_puts_citrix_servers_on_xen(bigbang):
    out = bigbang("plan", ROOT / "inventories" / "demo", "--mode", "live", "--json", check=True)
    plan = json.loads(out.stdout)
    connectors = {s["name"]: {st["connector"] for st in s["steps"]} for s in plan["servers"]}
    assert connectors["srv-ctxddc01"] == {"xen"} and connectors["srv-ctxsf01"] == {"xen"}
    assert connectors["srv-sql01"] == {"vsphere"}
    listing = bigbang("connectors", "xen", check=True)
    assert "Citrix Hypervisor (XenServer/XCP-ng) through XenAPI" in listing.stdout


def test_a_cascaded_connector_still_wins(tmp_path):
    from bigbang.inventory.model import Server

    base = {k: v for k, v in server("ctx-casc01").items() if v is not None}
    assert Server.model_validate(base).connector == "xen"
    assert Server.model_validate({**base, "connector": "vsphere"}).connector == "vsphere"
    assert Server.model_validate({**base, "platform": "vmware"}).connector == "vsphere"
