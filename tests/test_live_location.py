"""End to end without Prefect: a live run of one location over real sshd thin clients and WS-Man workstations."""

from __future__ import annotations

import yaml

from bigbang.runner import Runner
from bigbang.session import RunOptions, RunSession
from tests.peers.sshd import thin_client_lab  # noqa: F401
from tests.peers.wsman_server import COMMANDS_DIR, wsman_lab  # noqa: F401


def test_live_run_of_a_location(thin_client_lab, wsman_lab, tmp_path, monkeypatch):
    ssh_lab, win_lab = thin_client_lab, wsman_lab
    thin_clients = ssh_lab.add_hosts(3, prefix="e2e")
    stuck = ssh_lab.add_hosts(1, prefix="e2e-stuck", never_returns=True)[0]
    server = win_lab.hosts.get("mdt-e2e") or win_lab.add_host("mdt-e2e")
    workstations = [win_lab.add_host(f"e2e-ws-{i}", mac=f"00:1a:2b:77:00:{i:02x}", powered=False,
                                     image_version="10.0.19045.1", hostname=f"old-{i}", domain="") for i in (1, 2)]
    monkeypatch.setenv("BB_E2E_WINRM_PASSWORD", win_lab.password)
    inventory = {
        "rollout": {
            "name": "Lab Big Bang",
            "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00", "timezone": "Europe/Copenhagen"},
            "images": {"win11": {"version": "10.0.26100.2314"}},
            "thin_client_profiles": {"igel-2026": {
                "firmware": "12.6.1", "storefront_url": "https://storefront.lab/Citrix/Store",
                "hostname_pattern": "{location}-tc-{index:02d}", "settings": {"keyboard": "da"}}},
            "baselines": {"std": {"packages": ["Microsoft 365 Apps 2411"]}},
            "failure_policy": {"retries": 1, "retry_delay": "0.1s", "max_fail_percent": 50},
            "signoff_timeout": "10s",
        },
        "teams": [{"id": "lab-team", "name": "Lab team", "capacity": {"parallel_devices": 8}}],
        "locations": [{
            "id": "LAB-001", "name": "Loopback Rådhus", "address": "127.0.0.1", "team": "lab-team",
            "network": {"broadcast": "127.255.255.255"},
            "workstations": [{"hostname": f"lab-ws-old{i}", "serial": f"SN{i}", "mac": ws.mac, "model": "M70q",
                              "target_image": "win11", "baseline": "std", "domain": "ad.lab.dk",
                              "new_hostname": f"lab-ws-{i:02d}", "address": ws.address}
                             for i, ws in enumerate(workstations, start=1)],
            "thin_clients": [{"hostname": f"lab-tc-old{i}", "mac": f"00:e0:c5:77:00:{i:02x}",
                              "target_profile": "igel-2026", "address": tc.address}
                             for i, tc in enumerate([*thin_clients, stuck], start=1)],
        }],
        "connectors": {
            "ssh": ssh_lab.ssh_settings(reboot_timeout=3),
            "winrm": {"username": win_lab.username, "password": {"env": "BB_E2E_WINRM_PASSWORD"},
                      "transport": "basic", "port": win_lab.port, "ca_bundle": win_lab.ca_file,
                      "deployment_server": server.address, "operation_timeout": 5, "read_timeout": 10,
                      "image_poll": 0.1, "image_timeout": 10, "wol_port": win_lab.wol_port,
                      "commands_dir": str(COMMANDS_DIR)},
        },
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, allow_unicode=True, sort_keys=False))

    session = RunSession.start(path, RunOptions(mode="live"), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        session.ledger.sign_off(session.run_id, "LAB-001", "Test Technician", "all desks checked")
        result = Runner(session).run_location("LAB-001")
        steps = session.ledger.step_results(session.run_id, scope="LAB-001")
        substeps = {(e["subject"], e["message"]) for e in session.ledger.events(session.run_id) if e["kind"] == "substep"}
    finally:
        session.close()

    assert result.status == "completed_with_failures", result.reason
    assert (result.devices, result.devices_failed) == (6, 1)
    for i, tc in enumerate(thin_clients, start=1):
        reassign, verify = steps[f"lab-tc-old{i}:tc.reassign"], steps[f"lab-tc-old{i}:tc.verify"]
        assert reassign.status == "succeeded" and reassign.changed, reassign.message
        assert verify.status == "succeeded", verify.message
        assert verify.facts["found"]["hostname"] == verify.facts["expected"]["hostname"] == f"lab-001-tc-{i:02d}"
        assert tc.running_hostname == f"lab-001-tc-{i:02d}"
        assert "storefront_url = https://storefront.lab/Citrix/Store" in tc.read("var/lib/thinclient/active.conf")
    failed = steps["lab-tc-old4:tc.reassign"]
    assert failed.status == "failed" and "did not come back within 3 s" in failed.message
    assert steps["lab-tc-old4:tc.verify"].status == "skipped"
    for i, ws in enumerate(workstations, start=1):
        for kind in ("ws.prestage", "ws.image", "ws.verify"):
            assert steps[f"lab-ws-old{i}:{kind}"].status == "succeeded", steps[f"lab-ws-old{i}:{kind}"].message
        assert (ws.read("hostname"), ws.read("domain")) == (f"lab-ws-{i:02d}", "ad.lab.dk")
        assert steps[f"lab-ws-old{i}:ws.verify"].facts["found"]["image_version"] == "10.0.26100.2314"
    assert steps["LAB-001:loc.signoff"].status == "succeeded"
    # sub-steps are journalled as they finish (the device checks make a resume skip them)
    assert {("lab-tc-old1:tc.reassign", m) for m in ("profile written", "profile applied", "rebooted")} <= substeps
    assert ("lab-ws-old1:ws.image", "up with the target image") in substeps
