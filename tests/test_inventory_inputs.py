"""Issue 16, "every input is safe": one test per class of input that used to change meaning, hang,
or end in a traceback. Bad input gets a clear error (file:line: yaml.path: message), all problems in
one pass, and loses nothing."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bigbang.errors import InventoryError, UserError
from bigbang.inventory import load_inventory
from bigbang.inventory.csvimport import import_csv
from tests.helpers import DEMO

BASE = """\
rollout:
  name: Test
  window: {start: 2026-11-27T18:00, end: 2026-11-30T07:00, timezone: Europe/Copenhagen}
  images: {win11: {version: "10.0.1"}}
  thin_client_profiles: {citrix: {storefront_url: "https://sf.example/Citrix/Store"}}
teams:
  - {id: team-a, name: Team A}
servers:
  - {name: srv-dc01, template: tpl, cluster: c1, datastore: d1, network: n1}
"""
LOC = """\
locations:
  - id: L1
    name: One
    address: A
    team: team-a
    workstations:
"""
WS = '      - {hostname: ws%d, serial: S%d, mac: "00:11:22:33:44:%02d", target_image: win11, model: M%s}\n'


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "inv.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    return [str(p) for p in info.value.problems]


def ws(i: int, extra: str = "") -> str:
    return WS % (i, i, i, extra)


# ---------------------------------------------------------------- YAML 1.1 changing values

def test_values_mean_what_they_say(tmp_path):
    path = write(tmp_path, BASE.replace('version: "10.0.1"', "version: 10.10").replace(
        '{storefront_url: "https://sf.example/Citrix/Store"}',
        '{storefront_url: "https://sf.example/Citrix/Store", settings: {keyboard: no, power_off_at: 22:00, '
        'volume: 80, enabled: true}}') + LOC + ws(1, ", serial: 012345, desk: 1.10, room: yes")
        .replace("serial: S1, ", ""))
    inv = load_inventory(path)
    assert inv.rollout.images["win11"].version == "10.10"
    device = inv.locations[0].workstations[0]
    assert (device.serial, device.desk, device.room) == ("012345", "1.10", "yes")
    settings = inv.rollout.thin_client_profiles["citrix"].settings
    assert settings == {"keyboard": "no", "power_off_at": "22:00", "volume": 80, "enabled": True}


def test_an_ambiguous_scalar_in_an_any_value_is_an_error(tmp_path):
    path = write(tmp_path, BASE + LOC + ws(1, ", vars: {asset: 012345, version: 10.10, ok: 7, text: '012'}"))
    assert problems(path) == [
        'inv.yaml:16: locations[0].workstations[0].vars.asset: 012345 reads as the number 12345 (older YAML: '
        'an octal number); write "012345" in quotes for text, or 12345 for the number',
        'inv.yaml:16: locations[0].workstations[0].vars.version: 10.10 reads as the number 10.1; '
        'write "10.10" in quotes for text, or 10.1 for the number',
    ]


def test_clock_times_are_text_not_sexagesimal_numbers(tmp_path):
    path = write(tmp_path, BASE + LOC.replace("    workstations:\n", "    access_hours:\n"
                                              "      - {days: [sat], from: 07:00, to: 22:00}\n"))
    window = load_inventory(path).locations[0].access_hours[0]
    assert (window.start.hour, window.end.hour) == (7, 22)


# ---------------------------------------------------------------- aliases, depth, size

def test_alias_expansion_is_bounded(tmp_path):
    laughs = "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"    {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    path = write(tmp_path, BASE + "rehearsal:\n  steps:\n" + laughs)
    started = time.monotonic()
    found = problems(path)
    assert time.monotonic() - started < 5
    assert found == ["inv.yaml:17: rehearsal.steps.f[0]: aliases copy more than 100,000 values in this file"]


def test_self_referencing_alias_and_deep_nesting_are_problems_not_recursion_errors(tmp_path):
    inv = tmp_path / "inv"
    write(inv, BASE, "a.yaml")
    write(inv, "groups: &g\n  g1: {location: *g}\n", "b.yaml")
    write(inv, "rehearsal:\n  inject: " + "[" * 50_000 + "]" * 50_000 + "\n", "c.yaml")
    found = problems(inv)
    assert found[0] == ("inv/b.yaml:2: groups.g1.location: alias *g names no anchor above it "
                        "(an alias cannot refer to a value that contains it)")
    assert found[1].startswith("inv/c.yaml:2: rehearsal.inject[0][0][0]") and found[1].endswith(
        ": nested more than 32 levels deep")
    assert len(found) == 2


def test_field_length_is_limited(tmp_path):
    path = write(tmp_path, BASE + LOC + ws(1, ", room: " + "x" * 20_000))
    assert problems(path) == ["inv.yaml:16: locations[0].workstations[0].room: the value is 20,000 characters; "
                              "at most 10,000"]


# ---------------------------------------------------------------- plausible input, no traceback

def test_window_offset_and_directory_timezone_are_problems(tmp_path):
    path = write(tmp_path, BASE.replace("start: 2026-11-27T18:00", "start: 2026-11-27T17:00+01:00")
                 .replace("Europe/Copenhagen", "Europe"))
    assert problems(path) == [
        "inv.yaml:3: rollout.window.start: write the time without an offset; the window's 'timezone' says which",
        "inv.yaml:3: rollout.window.timezone: unknown timezone 'Europe' (use an IANA name like Europe/Copenhagen)",
    ]


def test_nul_and_esc_characters_are_located(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_bytes((BASE + LOC + ws(1, ", room: a\x1bb") + ws(2, ', desk: "x\\0y"')).encode())
    assert problems(path) == [
        "inv.yaml:16: locations[0].workstations[0].room: character U+001B (ESC) at column 101 is not allowed",
        "inv.yaml:17: locations[0].workstations[1].desk: the value contains U+0000 (NUL); remove it",
    ]


def test_invalid_utf8_is_located_and_the_rest_still_checked(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_bytes((BASE + LOC).encode() + ws(1, ", room: R\xf8d").encode("latin-1") + ws(2).encode()
                     + b"      - {hostname: ws2}\n")
    found = problems(path)
    assert found[0] == "inv.yaml:16: locations[0].workstations[0].room: byte 0xf8 at column 101 is not valid UTF-8 text"
    assert "inv.yaml:18: locations[0].workstations[2].hostname: duplicate hostname 'ws2' (also at inv.yaml:17)" in found


def test_symlink_loop_dangling_links_and_upper_case_names(tmp_path):
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    assert problems(tmp_path / "loop-a") == ["loop-a:1: (root): cannot read file: Too many levels of symbolic links"]
    inv = tmp_path / "inv"
    write(inv, BASE, "ROLLOUT.YAML")
    write(inv, LOC + ws(1), "locations/L1.Yml")
    os.symlink("gone.yaml", inv / "locations" / "l2.yaml")
    os.symlink("..", inv / "locations" / "up")  # a directory loop: reported, and read once
    assert problems(inv) == ["inv/locations/l2.yaml:1: (root): a symbolic link to nowhere (gone.yaml); it is not read",
                             "inv/locations/up:1: (root): a symbolic link loop; this directory is read once"]


def test_syntax_errors_have_a_path_and_the_line_where_the_mistake_is(tmp_path):
    inv = tmp_path / "inv"
    write(inv, BASE, "a.yaml")
    write(inv, 'locations:\n  - id: L1\n    name: "Rådhus\n    address: A\n    team: team-a\n', "b.yaml")
    write(inv, "teams:\n  - id: t1\n    name: T\n  - id: t2\n  name: U\n", "c.yaml")
    write(inv, "servers:\n  - {name: s1, template: t\n", "d.yaml")
    assert problems(inv) == [
        "inv/b.yaml:3: locations[0].name: YAML syntax error: a quoted scalar is never closed (the file ends on line 6)",
        "inv/c.yaml:5: teams: YAML syntax error: did not find expected '-' indicator",
        "inv/d.yaml:2: servers[0]: YAML syntax error: this mapping is never closed with '}'",
    ]


# ---------------------------------------------------------------- secrets

def test_secret_scan_matches_words_not_substrings(tmp_path):
    path = write(tmp_path, BASE + LOC + ws(1, ", vars: {passwd: a, pwd: b, secret_key: c, accessKey: d, "
                                              "passwords: [e, {env: OK_VAR}], api_tokens: f, password: {value: g}, "
                                              "bypass: h, compass: i, password_hash: j, key_file: k, keyboard: l, "
                                              "token_ttl: 5, use_password: true}"))
    plaintext = "plaintext secret; reference it instead: {env: VARIABLE} or {prefect_secret: BLOCK_NAME}"
    at = "inv.yaml:16: locations[0].workstations[0].vars."
    assert problems(path) == sorted([
        f"{at}accessKey: {plaintext}",
        f"{at}api_tokens: {plaintext}",
        f"{at}passwd: {plaintext}",
        f"{at}password: plaintext secret; a secret is only a reference: {{env: VARIABLE}} or "
        "{prefect_secret: BLOCK_NAME}",
        f"{at}passwords[0]: {plaintext}",
        f"{at}pwd: {plaintext}",
        f"{at}secret_key: {plaintext}",
    ])


def test_an_empty_or_malformed_reference_is_refused(tmp_path):
    path = write(tmp_path, BASE + 'connectors:\n  vsphere: {host: vc, username: u, password: {env: ""}}\n'
                 "  winrm: {username: u, password: {env: A, prefect_secret: b}}\n")
    assert problems(path) == [
        "inv.yaml:11: connectors.vsphere.password: {env: ...} needs a name, e.g. {env: BIGBANG_PASSWORD}",
        "inv.yaml:12: connectors.winrm.password: give exactly one of 'env' or 'prefect_secret'",
    ]


# ---------------------------------------------------------------- duplicates after normalisation

def test_duplicates_differing_by_spaces_or_number_vs_text_are_found(tmp_path):
    path = write(tmp_path, BASE + LOC
                 + '      - {hostname: ws1, serial: 12345, mac: "00:11:22:33:44:01", target_image: win11, model: M}\n'
                 + '      - {hostname: "WS1 ", serial: "12345", mac: " 00:11:22:33:44:02", target_image: win11, model: M}\n'
                 + '      - {hostname: ws3, serial: " 12345 ", mac: "00-11-22-33-44-02 ", target_image: win11, model: M}\n')
    assert problems(path) == [
        "inv.yaml:17: locations[0].workstations[1].hostname: duplicate hostname 'WS1 ' (also at inv.yaml:16)",
        "inv.yaml:17: locations[0].workstations[1].serial: duplicate serial '12345' (also at inv.yaml:16)",
        "inv.yaml:18: locations[0].workstations[2].mac: duplicate mac '00-11-22-33-44-02 ' (also at inv.yaml:17)",
        "inv.yaml:18: locations[0].workstations[2].serial: duplicate serial ' 12345 ' (also at inv.yaml:16)",
    ]


# ---------------------------------------------------------------- values the model used to accept

def test_invalid_addresses_sizes_coordinates_connectors_and_groups_are_refused(tmp_path):
    path = write(tmp_path, BASE.replace(
        "network: n1}", "network: n1, disks_gb: [80, -5], customization: {ip: 10.0.0.300, dns: [10.0.0.1, x]}}")
        + """\
defaults:
  location: {groups: [g1, g9]}
groups:
  g1:
    location: {criticality: high, groups: [g2]}
  g2:
    location: {criticality: critical}
locations:
  - id: L1
    name: One
    address: A
    team: team-a
    coordinates: [156.36, 8.61]
    network: {subnet: 10.31.1.0/33, broadcast: 10.31.1.256}
    workstations:
      - {hostname: ws1, serial: S1, mac: "00:11:22:33:44:01", target_image: win11, model: M, connector: winrn,
         address: "10.0.0.1:99"}
""")
    assert problems(path) == [
        "inv.yaml:9: servers[0].customization.dns[1]: not an IP address: 'x'",
        "inv.yaml:9: servers[0].customization.ip: not an IP address: '10.0.0.300'",
        "inv.yaml:9: servers[0].disks_gb[1]: Input should be greater than 0",
        "inv.yaml:11: defaults.location.groups[1]: unknown group 'g9' (known: g1, g2)",
        "inv.yaml:14: groups.g1.location.groups: a group cannot name other groups; list each group on the "
        "location (or under defaults.location.groups)",
        "inv.yaml:22: locations[0].coordinates: latitude 156.36 is not between -90 and 90 (write [latitude, longitude])",
        "inv.yaml:23: locations[0].network.broadcast: not an IP address: '10.31.1.256'",
        "inv.yaml:23: locations[0].network.subnet: not a network: '10.31.1.0/33' (expected like 10.31.1.0/24)",
        "inv.yaml:25: locations[0].workstations[0].connector: unknown connector 'winrn'; did you mean 'winrm'?",
        "inv.yaml:26: locations[0].workstations[0].address: not an IP address or DNS name: '10.0.0.1:99'",
    ]


def test_groups_from_defaults_apply(tmp_path):
    path = write(tmp_path, BASE + "defaults:\n  location: {groups: [care]}\n"
                 "groups:\n  care:\n    location: {criticality: critical}\n" + LOC + ws(1))
    assert load_inventory(path).locations[0].criticality == "critical"


def test_url_with_a_port_out_of_range_is_a_problem(tmp_path):
    path = write(tmp_path, BASE.replace("https://sf.example/Citrix/Store", "https://sf.example:99999/Store"))
    assert problems(path) == ["inv.yaml:5: rollout.thin_client_profiles.citrix.storefront_url: not a URL: "
                              "'https://sf.example:99999/Store' (Port out of range 0-65535)"]


# ---------------------------------------------------------------- CSV import

HEADER = "Location;Location name;Location address;Team;Type;Computer name;Serial number;MAC address\n"


def row(n: int, lid: str = "HST-001", sep: str = ";", first: bool = False) -> str:
    meta = ["Rådhus", "Street 1", "team-a"] if first else ["", "", ""]
    return sep.join([lid, *meta, "PC", f"pc-{n:03d}", f"S{n:03d}", f"00:1a:2b:00:00:{n:02x}"]) + "\n"


def test_csv_one_row_with_another_delimiter_or_an_unclosed_quote_is_one_refused_row(tmp_path):
    csv_file = tmp_path / "a.csv"
    rows = [row(1, first=True), row(2, sep=","), row(3).replace("S003", '"S003')] + [row(n) for n in range(4, 250)]
    csv_file.write_text(HEADER + "".join(rows), encoding="utf-8")
    result = import_csv(csv_file, tmp_path / "out")
    assert [str(p) for p in result.problems] == [
        f"{csv_file}:3: row: this row separates values with ',', the header with ';'; the row is refused",
        f'{csv_file}:4: row: a quote (") opens a value that is not closed on this line; the row is refused',
    ]
    assert result.devices == 247 and result.refused == 2


def test_csv_location_ids_differing_in_case_do_not_overwrite_each_other(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text(HEADER + row(1, first=True) + row(2, lid="hst-001", first=True) + row(3, lid="hst-001"),
                        encoding="utf-8")
    result = import_csv(csv_file, tmp_path / "out")
    assert [str(p) for p in result.problems] == [
        f"{csv_file}:3: location_id: location id 'hst-001' differs only in case from 'HST-001' (line 2); "
        "write it the same way in every row",
        f"{csv_file}:4: location_id: location id 'hst-001' differs only in case from 'HST-001' (line 2); "
        "write it the same way in every row",
    ]
    assert result.refused == 2 and [f.name for f in result.files] == ["hst-001.yaml"]


def test_csv_refused_counts_rows_not_problems(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text(HEADER + row(1, first=True) + "HST-001;;;;toaster;bad name;;zz\n", encoding="utf-8")
    result = import_csv(csv_file, tmp_path / "out")
    assert len(result.problems) == 3 and result.refused == 1


def test_csv_bad_bytes_huge_fields_and_existing_files(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_bytes((HEADER + row(1, first=True)).encode("cp1252") + b"HST-001;;;;PC;pc-002;S\x81;aa\n"
                         + ("HST-001;;;;PC;pc-003;" + "x" * 200_000 + ";aa\n").encode() + row(4).encode())
    result = import_csv(csv_file, tmp_path / "out")
    assert [str(p) for p in result.problems] == [
        f"{csv_file}:3: row: byte 0x81 at column 23 is not valid CP1252 text; the row is refused "
        "(save the spreadsheet as 'CSV UTF-8')",
        f"{csv_file}:4: row: the row is 200,024 characters long; at most 10,000",
    ]
    assert result.devices == 2
    data = yaml.safe_load((tmp_path / "out" / "hst-001.yaml").read_text(encoding="utf-8"))
    assert data["locations"][0]["name"] == "Rådhus"
    with pytest.raises(UserError, match="is a file; give a directory"):
        import_csv(csv_file, csv_file)
    with pytest.raises(UserError, match="the delimiter must be one character"):
        import_csv(csv_file, tmp_path / "out", delimiter=";;")
    again = import_csv(csv_file, tmp_path / "out")
    assert again.files_refused == 1 and "exists already" in str(again.problems[-1])


# ---------------------------------------------------------------- output

def test_output_is_not_wrapped_and_user_data_is_not_markup_or_emoji(bigbang, tmp_path):
    path = write(tmp_path, BASE + LOC.replace("name: One", "name: '[bold]One[/bold] :cd:'")
                 + '      - {hostname: "nor:cd:101", serial: S1, mac: "00:11:22:33:44:01", target_image: win11, '
                   "model: M, room: " + "long-room-name-" * 8 + "}\n")
    out = bigbang("validate", path)
    lines = out.stderr.strip().splitlines()
    assert lines[0] == ("inv.yaml:16: locations[0].workstations[0].hostname: not a valid hostname: 'nor:cd:101' "
                        "(letters, digits and dashes, at most 63, no dots)")
    assert len(lines) == 2 and "Traceback" not in out.stderr
    ok = bigbang("validate", write(tmp_path, BASE.replace("name: Test", "name: '[red]T[/red] :cd: " + "x" * 90 + "'")))
    assert ok.stdout.strip() == "ok: [red]T[/red] :cd: " + "x" * 90 + ": 0 locations, 0 workstations, 0 thin clients, " \
                                "1 servers, 1 teams"


def test_demo_still_loads(tmp_path):
    assert load_inventory(DEMO).device_count == 30
