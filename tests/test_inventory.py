"""The inventory model and loader: good inventories load, every kind of mistake is reported, all at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from bigbang.errors import InventoryError
from bigbang.inventory import load_inventory
from tests.helpers import DEMO

BASE = """\
rollout:
  name: Test
  window: {start: 2026-11-27T18:00, end: 2026-11-30T07:00, timezone: Europe/Copenhagen}
  images: {win11: {version: "10.0.1"}}
  thin_client_profiles: {citrix: {storefront_url: https://sf.example/Citrix/Store}}
teams:
  - {id: team-a, name: Team A}
servers:
  - {name: srv-dc01, template: tpl, cluster: c1, datastore: d1, network: n1}
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run where the inventory is, as an ops lead would: problems then name files relative to here."""
    monkeypatch.chdir(tmp_path)


def shown(path: Path) -> str:
    return os.path.relpath(path)


def write(tmp_path: Path, text: str, name: str = "inv.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    return [str(p) for p in info.value.problems]


def test_demo_inventory_loads_with_cascaded_values():
    inv = load_inventory(DEMO)
    assert inv.summary() == ("Demo Kommune Big Bang 2026: 3 locations, 16 workstations, 14 thin clients, "
                             "6 servers, 2 teams")
    care = inv.location_by_id["HST-014"]
    # group care-24-7 gives criticality and 24/7 access; the location's own defaults the thin-client model
    assert care.criticality == "critical" and care.access_hours == []
    assert {tc.model for tc in care.thin_clients} == {"IGEL UD2 LX 60"}
    assert inv.location_by_id["HST-001"].thin_clients[0].model == "IGEL UD3 M350C"
    ws = inv.device_by_hostname["hst-ws-101"][1]
    assert ws.target_image == "win11-2026.11" and ws.domain == "ad.demo-kommune.dk"
    dc = inv.server_by_name["srv-dc01"]
    assert dc.customization.domain == "ad.demo-kommune.dk" and dc.customization.ip == "10.20.0.10"
    assert inv.connectors["vsphere"].password.env == "BIGBANG_VCENTER_PASSWORD"


def test_device_value_beats_location_defaults_beats_group_beats_defaults(tmp_path):
    path = write(tmp_path, BASE + """\
defaults:
  workstation: {target_image: win11, model: Default, room: default-room, user: default-user, desk: d0}
groups:
  g1:
    workstation: {model: Group, room: group-room, user: group-user}
locations:
  - id: L1
    name: One
    address: Street 1
    team: team-a
    groups: [g1]
    defaults:
      workstation: {room: location-room, user: location-user}
    workstations:
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:01", user: own-user}
""")
    ws = load_inventory(path).locations[0].workstations[0]
    assert (ws.desk, ws.model, ws.room, ws.user) == ("d0", "Group", "location-room", "own-user")


def test_every_problem_is_reported_in_one_pass_with_file_line_and_path(tmp_path):
    path = write(tmp_path, """\
rollout:
  name: Bad
  window: {start: 2026-11-28T18:00, end: 2026-11-27T07:00, timezone: Europe/Copenhagn}
  images: {win11: {version: "1"}}
  thin_client_profiles: {p1: {}}
defaults:
  workstation: {target_image: win12, model: M}
teams:
  - {id: t1, name: T}
servers:
  - {name: s1, template: t, cluster: c, datastore: d, network: n, depends_on: [s2]}
  - {name: s2, template: t, cluster: c, datastore: d, network: n, depends_on: [s1, s9]}
connectors:
  vsphere: {host: vc, username: u, password: hunter2, colour: red}
locations:
  - id: L1
    name: One
    address: A
    team: t2
    requires: [s1]
    workstations:
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:55", colour: blue}
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:5G"}
      - {hostname: ws3, serial: S3, mac: "00-11-22-33-44-55", target_image: win11}
    thin_clients:
      - {hostname: tc1, mac: "aa:bb:cc:dd:ee:ff", target_profile: p2}
""")
    f = shown(path)
    found = problems(path)
    expected = [
        f"{f}:3: rollout.window.end: the window ends (2026-11-27 07:00) before it starts (2026-11-28 18:00)",
        f"{f}:3: rollout.window.timezone: unknown timezone 'Europe/Copenhagn' (use an IANA name like Europe/Copenhagen)",
        f"{f}:7: defaults.workstation.target_image: unknown image 'win12'; did you mean 'win11'?; define it under rollout.images",
        f"{f}:11: servers[0].depends_on: dependency cycle: s1 -> s2 -> s1",
        f"{f}:12: servers[1].depends_on[1]: unknown server 's9' (known: s1, s2)",
        f"{f}:14: connectors.vsphere.colour: unknown key 'colour'",
        f"{f}:14: connectors.vsphere.password: plaintext secret; reference it instead: {{env: VARIABLE}} or {{prefect_secret: BLOCK_NAME}}",
        f"{f}:19: locations[0].team: unknown team 't2' (known: t1)",
        f"{f}:22: locations[0].workstations[0].colour: unknown key 'colour'",
        f"{f}:23: locations[0].workstations[1].hostname: duplicate hostname 'ws1' (also at {f}:22)",
        f"{f}:23: locations[0].workstations[1].mac: not a MAC address: '00:11:22:33:44:5G' (expected like 00:1a:2b:3c:4d:5e)",
        f"{f}:23: locations[0].workstations[1].serial: duplicate serial 'S1' (also at {f}:22)",
        f"{f}:24: locations[0].workstations[2].mac: duplicate mac '00-11-22-33-44-55' (also at {f}:22)",
        f"{f}:26: locations[0].thin_clients[0].target_profile: unknown thin-client profile 'p2' (known: p1); define it under rollout.thin_client_profiles",
    ]
    assert found == expected


def test_unknown_key_suggests_the_nearest_known_one(tmp_path):
    path = write(tmp_path, BASE + """\
locations:
  - id: L1
    name: One
    address: A
    team: team-a
    workstations:
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:01", target_image: win11, model: M, hostnme: x}
""")
    assert problems(path) == [
        f"{shown(path)}:16: locations[0].workstations[0].hostnme: unknown key 'hostnme'; did you mean 'hostname'?"]


def test_missing_required_key_is_located_at_its_entry(tmp_path):
    path = write(tmp_path, BASE + """\
locations:
  - id: L1
    name: One
    team: team-a
""")
    assert problems(path) == [f"{shown(path)}:11: locations[0].address: missing required key 'address'"]


def test_plaintext_secrets_anywhere_are_refused(tmp_path):
    path = write(tmp_path, BASE + """\
connectors:
  winrm:
    username: admin
    password: {env: WINRM_PASSWORD}
  ssh:
    key_passphrase: "correct horse"
locations:
  - id: L1
    name: One
    address: A
    team: team-a
    workstations:
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:01", target_image: win11, model: M,
         vars: {bios_password: "1234"}}
""")
    found = problems(path)
    assert len(found) == 2
    assert f"{shown(path)}:15: connectors.ssh.key_passphrase: plaintext secret" in found[0]
    assert "locations[0].workstations[0].vars.bios_password: plaintext secret" in found[1]


def test_yaml_syntax_and_duplicate_keys_are_located(tmp_path):
    inv = tmp_path / "inv"
    write(inv, BASE, "a.yaml")
    write(inv, "locations:\n  - id: L1\n    name: One\n    name: Two\n", "b.yaml")
    write(inv, "teams: [\n", "c.yaml")
    found = problems(inv)
    assert any(p.startswith(f"{shown(inv / 'b.yaml')}:4: locations[0].name: duplicate key 'name'") for p in found), found
    # located where the unclosed list starts, with its YAML path (issue 16: not "(root)", not a line late)
    assert any(p.startswith(f"{shown(inv / 'c.yaml')}:1: teams: YAML syntax error") for p in found), found


def test_directory_merge_conflicts_name_both_places(tmp_path):
    inv = tmp_path / "inv"
    write(inv, BASE, "a.yaml")
    write(inv, "rollout:\n  name: Other\n", "b.yaml")
    assert problems(inv) == [f"{shown(inv / 'b.yaml')}:2: rollout.name: already set in {shown(inv / 'a.yaml')}:2"]


def test_location_files_merge_and_keep_their_own_lines(tmp_path):
    inv = tmp_path / "inv"
    write(inv, BASE, "rollout.yaml")
    write(inv, "locations:\n  - {id: L1, name: One, address: A, team: team-a}\n", "locations/l1.yaml")
    write(inv, "locations:\n  - {id: L2, name: Two, address: B, team: team-x}\n", "locations/l2.yaml")
    assert problems(inv) == [f"{shown(inv / 'locations/l2.yaml')}:2: locations[0].team: unknown team 'team-x'; did you mean 'team-a'?"]


def test_access_hours_and_durations_parse(tmp_path):
    path = write(tmp_path, BASE + """\
  failure_policy: {retry_delay: 1h30m}
locations:
  - id: L1
    name: One
    address: A
    team: team-a
    access_hours:
      - {days: [sat], from: "08:00", to: "07:00"}
""".replace("  failure_policy", "rollout_extra:\n  failure_policy"))
    found = problems(path)
    assert any("rollout_extra: unknown section 'rollout_extra'" in p for p in found)
    assert any("locations[0].access_hours[0]: access window ends (07:00) before it starts (08:00)" in p for p in found)


def test_validate_cli_exit_status_and_summary(bigbang, tmp_path):
    ok = bigbang("validate", DEMO)
    assert ok.returncode == 0
    assert ok.stdout.strip().startswith("ok: Demo Kommune Big Bang 2026: 3 locations")
    bad = write(tmp_path, BASE + "locations:\n  - {id: L1, name: One, address: A, team: nobody}\n")
    out = bigbang("validate", bad)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "inv.yaml:11: locations[0].team: unknown team 'nobody' (known: team-a)"
    assert lines[-1].startswith("error: inventory has 1 problem")
    assert "Traceback" not in out.stderr
