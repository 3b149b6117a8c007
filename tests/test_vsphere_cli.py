"""`bigbang vcenter discover` and `bigbang vcenter diff` against the vCenter simulator, as an ops lead runs them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from tests.peers.vcsim import PASSWORD_ENV, vcsim  # noqa: F401
from tests.test_vsphere import ROLLOUT, clone_by_hand, connector, find_vm, server, step

ROLLOUT_DOC = {"rollout": {"name": ROLLOUT, "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00"}}}


@pytest.fixture
def env(bb_env, vcsim):  # noqa: F811
    return {**bb_env, PASSWORD_ENV: vcsim.password}


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_discover_writes_servers_that_load_as_inventory_and_diff_as_already_fine(bigbang, env, vcsim,  # noqa: F811
                                                                                   tmp_path):
    conn = connector(vcsim)
    spec = server("disc-sql01", cluster="cl-prod-02", datastore="ds-nl-01", network="vlan120-citrix", cpu=4,
                  memory_gb=16, disks_gb=[60, 300], customization={"os": "linux", "ip": "10.20.0.77"})
    assert step(conn, "srv.provision", spec).ok
    assert step(conn, "srv.verify", spec).ok
    conn.close()
    clone_by_hand(vcsim.connect(), "Old File Server")  # a name no inventory can hold

    inv = tmp_path / "inv"
    write(inv / "rollout.yaml", {**ROLLOUT_DOC, "connectors": {"vsphere": vcsim.settings()}})
    out = inv / "servers.yaml"
    proc = bigbang("vcenter", "discover", "--inventory", inv / "rollout.yaml", "--out", out, env=env, check=True)
    assert f"to {out}" in proc.stderr and "1 VMs left out" in proc.stderr

    text = out.read_text()
    assert "'Old File Server': not a valid server name" in text
    servers = {s["name"]: s for s in yaml.safe_load(text)["servers"]}
    assert "tpl-rhel9" not in servers, "templates are not servers"
    sql = servers["disc-sql01"]
    assert sql == {"name": "disc-sql01", "template": "tpl-rhel9", "datacenter": "DC-Holstebro",
                   "cluster": "cl-prod-02", "datastore": "ds-nl-01", "network": "vlan120-citrix", "cpu": 4,
                   "memory_gb": 16, "disks_gb": [60, 300], "existing": True,
                   "customization": {"os": "linux", "ip": "10.20.0.77"}}

    bigbang("validate", inv, env=env, check=True)
    proc = bigbang("vcenter", "diff", inv, "--json", env=env, check=True)
    rows = {r["server"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(servers)
    assert {r["action"] for r in rows.values()} == {"fine"}, [r for r in rows.values() if r["action"] != "fine"]


def test_diff_shows_create_reconfigure_fine_drift_and_errors(bigbang, env, vcsim, tmp_path):  # noqa: F811
    conn = connector(vcsim)
    assert step(conn, "srv.provision", server("diff-fine")).ok
    conn.close()
    clone_by_hand(vcsim.connect(), "diff-bigger")
    doc = {
        **ROLLOUT_DOC,
        "servers": [
            {"name": "diff-new", "template": "tpl-win2022", "cluster": "cl-lab-01", "datastore": "ds-ssd-02",
             "network": "vlan110-servers"},
            {"name": "diff-fine", "template": "tpl-rhel9", "cluster": "cl-prod-01", "datastore": "ds-ssd-01",
             "network": "vlan110-servers", "cpu": 2, "memory_gb": 4},
            {"name": "diff-bigger", "template": "tpl-rhel9", "cluster": "cl-prod-02", "datastore": "ds-nl-01",
             "network": "vlan110-servers", "cpu": 8, "memory_gb": 4},
            {"name": "diff-typo", "template": "tpl-win2019", "cluster": "cl-prod-01", "datastore": "ds-ssd-01",
             "network": "vlan110-servers"},
        ],
        "connectors": {"vsphere": vcsim.settings()},
    }
    path = write(tmp_path / "inventory.yaml", doc)
    proc = bigbang("vcenter", "diff", path, "--json", env=env)
    assert proc.returncode == 1, proc.stderr  # an error row: like a failed plan
    rows = {r["server"]: r for r in json.loads(proc.stdout)}
    assert rows["diff-new"]["action"] == "create"
    assert rows["diff-fine"]["action"] == "fine"
    assert rows["diff-bigger"]["action"] == "drift" and rows["diff-bigger"]["changes"] == ["cpu 2 → 8"]
    assert rows["diff-typo"]["action"] == "error" and "templates there: tpl-rhel9, tpl-win2022" in \
        rows["diff-typo"]["message"]

    doc["connectors"]["vsphere"]["drift"] = "reconfigure"
    write(path, doc)
    proc = bigbang("vcenter", "diff", path, env=env)
    assert "reconfigure: cpu 2 → 8" in proc.stdout
    assert "1 to create, 1 to reconfigure, 1 already fine, 0 drifted, 1 errors" in proc.stdout
    proc = bigbang("plan", path, "--vcenter", env=env)
    assert proc.returncode == 1, proc.stderr  # like `vcenter diff`: an error row fails the plan
    assert "Servers, in dependency waves" in proc.stdout and "Servers against vCenter" in proc.stdout
    assert "1 to create, 1 to reconfigure, 1 already fine, 0 drifted, 1 errors" in proc.stdout
    assert find_vm(vcsim.connect(), "diff-new") is None, "diff and plan change nothing"


def test_unreachable_vcenter_is_one_clear_line(bigbang, env, vcsim, tmp_path):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write(tmp_path / "inventory.yaml", {**ROLLOUT_DOC, "servers": [
        {"name": "x1", "template": "tpl-rhel9", "cluster": "c", "datastore": "d", "network": "n"}],
        "connectors": {"vsphere": vcsim.settings(port=port)}})
    proc = bigbang("vcenter", "diff", path, env=env)
    assert proc.returncode == 1
    assert f"error: cannot reach vCenter 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bigbang("vcenter", "discover", env=env)
    assert proc.returncode == 1 and "say which vCenter" in proc.stderr
    bad_pin = write(tmp_path / "pin.yaml", {**ROLLOUT_DOC, "connectors": {"vsphere": vcsim.settings(
        thumbprint="12:34")}})
    proc = bigbang("validate", bad_pin, env=env)
    assert proc.returncode == 1 and "connectors.vsphere.thumbprint" in proc.stderr
    assert "not a SHA-256 thumbprint" in proc.stderr
    no_conn = write(tmp_path / "bare.yaml", ROLLOUT_DOC)
    proc = bigbang("vcenter", "diff", no_conn, env=env)
    assert proc.returncode == 1 and "no connectors.vsphere section" in proc.stderr
