"""The winrm connector against the test WS-Man server (HTTPS, Basic) and real Wake-on-LAN over UDP."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.winrm import WinrmSettings, create
from bigbang.errors import ConfigError
from bigbang.secrets import resolve
from bigbang.wol import magic_packet, send_magic_packet
from tests.peers.wsman_server import COMMANDS_DIR, workstation_params, wsman_http_lab, wsman_lab  # noqa: F401

CONTEXT = ConnectorContext(run_id="test", inventory=None, resolve_secret=resolve)


@pytest.fixture
def settings(wsman_lab, monkeypatch):
    monkeypatch.setenv("BB_TEST_WINRM_PASSWORD", wsman_lab.password)
    if "mdt01" not in wsman_lab.hosts:
        wsman_lab.add_host("mdt01")

    def make(**overrides):
        values = dict(username=wsman_lab.username, password={"env": "BB_TEST_WINRM_PASSWORD"}, transport="basic",
                      port=wsman_lab.port, ca_bundle=wsman_lab.ca_file, deployment_server=wsman_lab.hosts["mdt01"].address,
                      operation_timeout=5, read_timeout=10, image_poll=0.1, image_timeout=8,
                      wol_port=wsman_lab.wol_port, commands_dir=str(COMMANDS_DIR))
        values.update(overrides)
        return WinrmSettings(**values)

    return make


def act(conn, host, kind, attempt=1, **params):
    return conn.run(Action(f"{host.name}:{kind}", kind, host.name, attempt, workstation_params(host, **params)))


def packets_for(lab, mac):
    return [p for _, p in lab.wol_packets if p == magic_packet(mac)]


def test_prestage_wake_image_and_verify(wsman_lab, settings):
    lab = wsman_lab
    host = lab.add_host("ws-101", mac="00:1a:2b:31:01:01", powered=False, image_version="10.0.19045.4170",
                        hostname="OLD-101", domain="")
    neighbour = lab.add_host("ws-102", mac="00:1a:2b:31:01:02", powered=False)
    conn = create(settings(), CONTEXT)
    try:
        staged = act(conn, host, "ws.prestage")
        assert staged.ok and staged.changed and staged.facts["staged"] == "new", staged.message
        record = lab.hosts["mdt01"].state / "deploy" / "00-1a-2b-31-01-01.conf"
        assert "hostname=hst-ws-101" in record.read_text() and "image_version=10.0.26100.2314" in record.read_text()
        again = act(conn, host, "ws.prestage")
        assert again.ok and not again.changed and again.facts["staged"] == "unchanged"

        imaged = act(conn, host, "ws.image")
        assert imaged.ok, imaged.message
        assert imaged.changed and imaged.facts["found"]["hostname"] == "hst-ws-101"
        assert packets_for(lab, host.mac), "no magic packet for the device's MAC arrived"
        assert not packets_for(lab, neighbour.mac) and not neighbour.powered
        assert (host.read("image_version"), host.read("domain")) == ("10.0.26100.2314", "ad.example.dk")

        sent = len(packets_for(lab, host.mac))
        resumed = act(conn, host, "ws.image", attempt=2)
        assert resumed.ok and not resumed.changed
        assert len(packets_for(lab, host.mac)) == sent  # already imaged: no second wake-up

        verified = act(conn, host, "ws.verify")
        assert verified.ok, verified.message
        assert verified.facts["baseline_missing"] == [] and verified.facts["mismatches"] == []
        assert verified.facts["expected"]["image_version"] == verified.facts["found"]["image_version"]
        json.dumps(dict(verified.facts))
    finally:
        conn.close()


def test_verify_reports_missing_baseline_and_wrong_domain(wsman_lab, settings):
    host = wsman_lab.add_host("ws-201", mac="00:1a:2b:31:02:01", image_version="10.0.26100.2314",
                              hostname="hst-ws-201", domain="workgroup", packages="Microsoft 365 Apps 2411")
    conn = create(settings(), CONTEXT)
    try:
        outcome = act(conn, host, "ws.verify")
        assert not outcome.ok and not outcome.transient
        assert outcome.facts["baseline_missing"] == ["Citrix Workspace 2409"]
        assert outcome.facts["found"]["domain"] == "workgroup"
        assert "domain: expected 'ad.example.dk', found 'workgroup'" in outcome.message
        assert "missing Citrix Workspace 2409" in outcome.message
    finally:
        conn.close()


def test_device_that_never_wakes_times_out(wsman_lab, settings):
    host = wsman_lab.add_host("ws-301", mac="00:1a:2b:31:03:01", powered=False)  # never staged: PXE does nothing
    conn = create(settings(image_timeout=1.0), CONTEXT)
    try:
        outcome = act(conn, host, "ws.image")
        assert not outcome.ok and not outcome.transient
        assert "not re-imaged within 1 s after Wake-on-LAN (no answer over WinRM; last: cannot reach" in outcome.message
        assert packets_for(wsman_lab, host.mac)
    finally:
        conn.close()


def test_wsman_fault_is_a_clear_failure(wsman_lab, settings):
    host = wsman_lab.add_host("ws-401", mac="00:1a:2b:31:04:01")
    host.command_fault = (5, "Access is denied.")
    conn = create(settings(), CONTEXT)
    try:
        outcome = act(conn, host, "ws.verify")
        assert not outcome.ok and not outcome.transient
        assert outcome.message == f"WS-Man fault 5 w:AccessDenied from {host.address} during ws_state: Access is denied."
    finally:
        conn.close()


def test_wrong_password_untrusted_certificate_and_unreachable(wsman_lab, settings, monkeypatch):
    host = wsman_lab.add_host("ws-501", mac="00:1a:2b:31:05:01", image_version="1", hostname="x", domain="")
    monkeypatch.setenv("BB_TEST_WRONG", "nope")
    conn = create(settings(password={"env": "BB_TEST_WRONG"}), CONTEXT)
    outcome = act(conn, host, "ws.verify")
    assert not outcome.ok and not outcome.transient and "rejected the WinRM credentials" in outcome.message
    conn = create(settings(ca_bundle=None), CONTEXT)
    outcome = act(conn, host, "ws.verify")
    assert not outcome.ok and not outcome.transient and "TLS certificate of" in outcome.message
    conn = create(settings(), CONTEXT)
    outcome = conn.run(Action("x:ws.verify", "ws.verify", "x", 1, workstation_params(host, address="127.0.249.249")))
    assert not outcome.ok and outcome.transient and "cannot reach 127.0.249.249" in outcome.message


def test_configuration_errors_are_clear(settings, wsman_lab):
    with pytest.raises(ConfigError, match="read_timeout must be longer than operation_timeout"):
        create(settings(operation_timeout=30, read_timeout=20), CONTEXT)
    with pytest.raises(ConfigError, match="BB_TEST_UNSET is not set"):
        create(settings(password={"env": "BB_TEST_UNSET"}), CONTEXT)
    conn = create(settings(deployment_server=None), CONTEXT)
    host = wsman_lab.add_host("ws-601", mac="00:1a:2b:31:06:01")
    outcome = act(conn, host, "ws.prestage")
    assert not outcome.ok and not outcome.transient and "deployment_server" in outcome.message


def test_magic_packet_arrives_at_a_udp_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("0.0.0.0", 0))
    listener.settimeout(5)
    received = []
    thread = threading.Thread(target=lambda: received.append(listener.recvfrom(1024)[0]))
    thread.start()
    send_magic_packet("00-1A-2B-3C-4D-5E", "127.255.255.255", listener.getsockname()[1], count=1)
    thread.join()
    listener.close()
    assert received[0] == b"\xff" * 6 + bytes.fromhex("001a2b3c4d5e") * 16


def test_ntlm_over_http_without_message_encryption(wsman_http_lab, monkeypatch):
    """The http lab has no Wake-on-LAN listener, so this checks ws.verify only."""
    monkeypatch.setenv("BB_TEST_NTLM_PASSWORD", wsman_http_lab.password)
    host = wsman_http_lab.add_host("ws-ntlm", mac="00:1a:2b:31:07:01", image_version="10.0.26100.2314",
                                   hostname="hst-ws-ntlm", domain="ad.example.dk",
                                   packages="Microsoft 365 Apps 2411|Citrix Workspace 2409")
    settings = WinrmSettings(username=wsman_http_lab.username, password={"env": "BB_TEST_NTLM_PASSWORD"},
                             transport="ntlm", scheme="http", message_encryption="never", port=wsman_http_lab.port,
                             operation_timeout=5, read_timeout=10, commands_dir=str(COMMANDS_DIR))
    conn = create(settings, CONTEXT)
    try:
        outcome = act(conn, host, "ws.verify")
        assert outcome.ok, outcome.message
        assert outcome.facts["found"]["hostname"] == "hst-ws-ntlm"
    finally:
        conn.close()


def test_failing_powershell_template_reports_exit_code_and_plain_error_text(wsman_lab, settings, tmp_path):
    host = wsman_lab.add_host("ws-701", mac="00:1a:2b:31:07:02", image_version="1", hostname="x", domain="")
    (tmp_path / "ws_state.ps1.j2").write_text("echo 'Get-CimInstance : Access denied' >&2\nexit 1\n")
    conn = create(settings(commands_dir=str(tmp_path)), CONTEXT)
    try:
        outcome = act(conn, host, "ws.verify")
        assert not outcome.ok and not outcome.transient
        assert outcome.message == f"ws_state exited 1 on {host.address}: Get-CimInstance : Access denied"
        assert outcome.facts["command"]["exit_code"] == 1
    finally:
        conn.close()
