"""The ums connector end to end against the IMI test server (HTTPS with a lab CA, cookie sessions)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from bigbang.connectors import CONNECTORS
from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.ums import UmsConnector, UmsSettings, create, firmware_matches
from bigbang.errors import ConfigError
from bigbang.inventory import load_inventory
from bigbang.plan import build_plan
from bigbang.runner import Runner
from bigbang.secrets import resolve
from bigbang.session import RunOptions, RunSession
from tests.helpers import copy_demo
from tests.peers import imi_server as imi_peer
from tests.peers.imi_server import ImiServer, populate, thin_client_params

imi_server = imi_peer.imi_server  # the fixture

CONTEXT = ConnectorContext(run_id="test", inventory=None, resolve_secret=resolve)
DIRECTORY = "HST-001 Holstebro Rådhus"


def lab_settings(lab: ImiServer, **overrides) -> dict:
    values = dict(host="127.0.0.1", port=lab.port, username=lab.username, password={"env": "BB_TEST_IMI_PASSWORD"},
                  ca_file=lab.ca_file, batch_window=0.05, reboot_poll=0.1, reboot_timeout=3)
    values.update(overrides)
    return values


@pytest.fixture
def connect(imi_server, monkeypatch):
    monkeypatch.setenv("BB_TEST_IMI_PASSWORD", imi_server.password)
    made: list[UmsConnector] = []

    def make(**overrides) -> UmsConnector:
        conn = create(UmsSettings(**lab_settings(imi_server, **overrides)), CONTEXT)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def run(conn, lab, device, kind="tc.reassign", attempt=1, **params):
    return conn.run(Action(f"{device.name}:{kind}", kind, device.name, attempt,
                           thin_client_params(lab, device, **params)))


def run_all(conn, lab, devices, kind="tc.reassign", threads=8):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda d: run(conn, lab, d, kind), devices))


def test_reassign_and_verify_many_devices_concurrently(imi_server, connect):
    lab = imi_server
    devices = populate(lab, 24)
    conn = connect()
    outcomes = run_all(conn, lab, devices)
    for outcome in outcomes:
        assert outcome.ok and outcome.changed, outcome.message
        assert outcome.facts["substeps"] == [f"moved to {DIRECTORY}", "unassigned igel-citrix-2022",
                                             "assigned igel-citrix-2026", "settings sent", "rebooted"]
        assert outcome.facts["found"]["firmware"] == "12.6.1" and outcome.facts["found"]["online"] is True
    directory = lab.directory(DIRECTORY)
    assert directory is not None and sum(d["name"] == DIRECTORY for d in lab.directories.values()) == 1
    for device in devices:  # read back from the server
        assert device.parent_id == directory
        assert lab.assigned(device) == ["igel-citrix-2026"]
        assert device.applied_profiles == ["igel-citrix-2026"] and device.firmware_id == "2"
        assert (device.settings_received, device.reboots) == (1, 1) and device.online

    verified = run_all(conn, lab, devices, "tc.verify")
    assert all(v.ok for v in verified), [v.message for v in verified if not v.ok]
    assert verified[0].facts["profile"] == "igel-citrix-2026" and verified[0].facts["firmware"] == "12.6.1"
    assert verified[0].facts["mismatches"] == [] and verified[0].facts["found"]["directory"] == DIRECTORY

    counts = lab.requests
    assert lab.logins == 1 and conn.imi.logins == 1 and counts["POST login"] == 1
    assert counts["GET thinclients?facets=details"] == 1  # one listing serves every MAC look-up
    for batched in ("POST thinclients?command=reboot", "POST thinclients?command=settings2tc",
                    "PUT directories/tcdirectories/{id}?operation=move", "POST profiles/{id}/assignments/thinclients"):
        assert 1 <= counts[batched] < len(devices) / 2, (batched, counts[batched])
    assert counts["PUT directories/tcdirectories"] == 1


def test_rerun_is_idempotent(imi_server, connect):
    lab = imi_server
    devices = populate(lab, 4)
    assert all(o.ok for o in run_all(connect(), lab, devices))
    lab.reset_counters()
    again = run_all(connect(), lab, devices)  # a new run: a new connector, fresh listings
    assert all(o.ok and not o.changed for o in again), [o.message for o in again]
    assert "already in" in again[0].message
    assert all(d.reboots == 1 and d.settings_received == 1 for d in devices)
    assert not [k for k in lab.requests if "command=" in k or "operation=move" in k or k.startswith("DELETE")]
    assert lab.logins == 1


def test_offline_device_fails_transiently_then_succeeds_on_retry(imi_server, connect):
    lab = imi_server
    populate(lab, 1)
    gone = lab.add_device("00:e0:c5:aa:00:01", "gone", profile="igel-citrix-2022", offline=True)
    conn = connect()
    first = run(conn, lab, gone)
    assert not first.ok and first.transient
    assert "offline or unreachable" in first.message and "settings2tc" in first.message
    assert first.changed and first.facts["substeps"][-1] == "assigned igel-citrix-2026"  # UMS-side work kept
    gone.offline, gone.online = False, True  # powered on
    retry = run(conn, lab, gone, attempt=2)
    assert retry.ok and retry.facts["substeps"] == ["settings sent", "rebooted"], retry.message
    assert gone.reboots == 1 and gone.firmware_id == "2"


def test_unknown_mac_fails_for_good_after_one_fresh_listing(imi_server, connect):
    lab = imi_server
    known = populate(lab, 2)
    conn = connect()
    assert run(conn, lab, known[0]).ok
    stranger = lab.add_device("00:e0:c5:bb:00:01", "stranger")
    del lab.devices[stranger.id]  # UMS never heard of it
    outcome = run(conn, lab, stranger)
    assert not outcome.ok and not outcome.transient
    assert "knows no thin client with MAC 00:e0:c5:bb:00:01" in outcome.message
    assert lab.requests["GET thinclients?facets=details"] == 2  # the miss fetched the listing once more

    late = lab.add_device("00:e0:c5:bb:00:02", "late-registered", profile="igel-citrix-2022")
    assert run(conn, lab, late).ok  # registered during the run: found by the refresh


def test_expired_session_is_renewed_once(imi_server, connect):
    lab = imi_server
    devices = populate(lab, 8)
    conn = connect()
    assert all(o.ok for o in run_all(conn, lab, devices[:4]))
    lab.expire_sessions()
    outcomes = run_all(conn, lab, devices[4:]) + run_all(conn, lab, devices, "tc.verify")
    assert all(o.ok for o in outcomes), [o.message for o in outcomes if not o.ok]
    assert lab.logins == 2 and conn.imi.logins == 2


def test_untrusted_certificate_and_wrong_password_are_clear_failures(imi_server, connect, monkeypatch):
    lab = imi_server
    device = populate(lab, 1)[0]
    untrusted = run(connect(ca_file=None), lab, device)
    assert not untrusted.ok and not untrusted.transient
    assert "TLS certificate of UMS 127.0.0.1" in untrusted.message and "ca_file" in untrusted.message
    assert lab.logins == 0 and device.parent_id == "-1"

    monkeypatch.setenv("BB_TEST_IMI_WRONG", "nope")
    refused = run(connect(password={"env": "BB_TEST_IMI_WRONG"}), lab, device)
    assert not refused.ok and not refused.transient and "refused the login of user imi-admin" in refused.message

    with pytest.raises(ConfigError, match="ca_file /nowhere.pem does not exist"):
        connect(ca_file="/nowhere.pem")
    unknown_profile = run(connect(), lab, device, target_profile="no-such-profile")
    assert not unknown_profile.ok and not unknown_profile.transient and "no profile named" in unknown_profile.message


def test_ums_id_skips_the_listing(imi_server, connect):
    lab = imi_server
    device = populate(lab, 1)[0]
    outcome = run(connect(), lab, device, vars={"ums_id": device.id})
    assert outcome.ok, outcome.message
    assert lab.requests["GET thinclients?facets=details"] == 0 and lab.requests["GET thinclients/{id}"] == 1


def test_verify_reports_mismatches_for_defects(imi_server, connect):
    lab = imi_server
    device = populate(lab, 1)[0]
    outcome = run(connect(), lab, device, "tc.verify")
    assert not outcome.ok and not outcome.transient
    assert set(outcome.facts["mismatches"]) == {
        f"directory: expected {DIRECTORY!r}, found '(root)'",
        "profile: expected 'igel-citrix-2026', found 'igel-citrix-2022'",
        "profile: 'igel-citrix-2022' is still assigned", "firmware: expected '12.6.1', found '11.10.100'"}


def test_firmware_versions_compare_by_numeric_prefix():
    assert firmware_matches("12.6.1", "12.06.01") and firmware_matches("12.6.1", "12.6.1.100")
    assert not firmware_matches("12.6.1", "12.6.10") and not firmware_matches("12.6.1", "12.7")


def test_registered_and_described():
    ums = CONNECTORS["ums"]
    assert ums.summary == "IGEL thin clients through IGEL UMS (IMI REST API v3)"
    assert ums.step_kinds == CONNECTORS["ssh"].step_kinds == frozenset({"tc.reassign", "tc.verify"})
    fields = ums.settings_model.model_fields
    assert fields["port"].default == 8443 and fields["insecure"].default is False
    assert all(fields[name].description for name in ("password", "ca_file", "batch_window", "max_in_flight"))
    with pytest.raises(ValueError, match="plaintext secret"):
        UmsSettings.model_validate({"host": "ums", "username": "u", "password": "clear-text"})


def test_cascade_chooses_ums_or_ssh_per_device(tmp_path):
    def edit(files):
        rollout = files["rollout.yaml"]
        rollout["groups"]["igel-ums"] = {"thin_client": {"connector": "ums"}}
        rollout["connectors"]["ums"] = {"host": "ums.demo-kommune.dk", "username": "bigbang",
                                        "password": {"env": "BIGBANG_UMS_PASSWORD"}}
        location = files["locations/hst-014-plejecenter.yaml"]["locations"][0]
        location["groups"].append("igel-ums")
        location["thin_clients"][0]["connector"] = "ssh"  # the device itself wins over its group
    inventory = load_inventory(copy_demo(tmp_path, edit))
    plan = build_plan(inventory, "live")
    by_target = {s.target: s.connector for s in plan.steps() if s.kind == "tc.reassign"}
    assert by_target["lys-tc-201"] == "ssh"
    assert {by_target[f"lys-tc-20{i}"] for i in range(2, 7)} == {"ums"}
    assert by_target["hst-tc-201"] == "ssh"  # other locations keep the default
    assert isinstance(inventory.connectors["ums"], UmsSettings)
    assert {s.connector for s in build_plan(inventory, "rehearsal").steps() if s.kind.startswith("tc.")} == {"simulated"}


def test_live_location_through_runner(imi_server, tmp_path, monkeypatch):
    lab = imi_server
    devices = populate(lab, 4)
    gone = lab.add_device("00:e0:c5:cc:00:01", "gone", profile="igel-citrix-2022", offline=True)
    monkeypatch.setenv("BB_TEST_IMI_PASSWORD", lab.password)
    inventory = {
        "rollout": {
            "name": "UMS Lab Big Bang",
            "window": {"start": "2026-11-27T17:00", "end": "2026-11-30T07:00", "timezone": "Europe/Copenhagen"},
            "thin_client_profiles": {"igel-citrix-2026": {"firmware": "12.6.1"}},
            "failure_policy": {"retries": 1, "retry_delay": "0.1s", "max_fail_percent": 50},
            "signoff_timeout": "10s",
        },
        "defaults": {"thin_client": {"connector": "ums", "target_profile": "igel-citrix-2026",
                                     "current_profile": "igel-citrix-2022"}},
        "teams": [{"id": "lab-team", "name": "Lab team", "capacity": {"parallel_devices": 8}}],
        "locations": [{
            "id": "HST-001", "name": "Holstebro Rådhus", "address": "127.0.0.1", "team": "lab-team",
            "thin_clients": [{"hostname": d.name, "mac": ":".join(d.mac[i:i + 2] for i in range(0, 12, 2))}
                             for d in (*devices, gone)],
        }],
        "connectors": {"ums": lab_settings(lab)},
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, allow_unicode=True, sort_keys=False))
    session = RunSession.start(path, RunOptions(mode="live"), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        session.ledger.sign_off(session.run_id, "HST-001", "Test Technician", "all desks checked")
        result = Runner(session).run_location("HST-001")
        steps = session.ledger.step_results(session.run_id, scope="HST-001")
    finally:
        session.close()
    assert (result.devices, result.devices_failed) == (5, 1), result.reason
    for device in devices:
        assert steps[f"{device.name}:tc.reassign"].status == "succeeded"
        assert steps[f"{device.name}:tc.verify"].status == "succeeded"
        assert device.parent_id == lab.directory(DIRECTORY) and lab.assigned(device) == ["igel-citrix-2026"]
    failed = steps["gone:tc.reassign"]
    assert failed.status == "failed" and failed.attempts == 2 and "offline or unreachable" in failed.message
    assert lab.logins == 1 and lab.requests["POST logout"] == 1
