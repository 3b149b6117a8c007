"""Generated inventories: exact sizes, valid, deterministic for a seed, and the CSV import."""

from __future__ import annotations

import filecmp

from bigbang.inventory import load_inventory
from bigbang.inventory.generate import PRESETS, generate, write


def test_holstebro_preset_has_the_reference_size_and_validates(tmp_path):
    write(generate(PRESETS["holstebro"], seed=7), tmp_path / "hol")
    inv = load_inventory(tmp_path / "hol")
    assert len(inv.locations) == 150 and len(inv.servers) == 400
    assert sum(len(loc.workstations) for loc in inv.locations) == 2000
    assert sum(len(loc.thin_clients) for loc in inv.locations) == 1500
    assert {loc.criticality for loc in inv.locations} == {"normal", "high", "critical"}
    # servers form a real dependency chain, and every location needs some of them
    assert any(s.depends_on for s in inv.servers) and all(loc.requires for loc in inv.locations)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    from bigbang.inventory.generate import Size

    size = Size(12, 40, 30, 20, "sv")
    write(generate(size, seed=3), tmp_path / "a")
    write(generate(size, seed=3), tmp_path / "b")
    write(generate(size, seed=4), tmp_path / "c")
    same = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not same.diff_files and not filecmp.dircmp(tmp_path / "a" / "locations", tmp_path / "b" / "locations").diff_files
    assert (tmp_path / "a" / "locations").exists()
    differ = [f.name for f in (tmp_path / "a" / "locations").iterdir()
              if f.read_text() != (tmp_path / "c" / "locations" / f.name).read_text()]
    assert differ


def test_generate_cli(bigbang, tmp_path):
    out = bigbang("inventory", "generate", "--locations", "5", "--workstations", "20", "--thin-clients", "10",
                  "--servers", "8", "--seed", "2", "--out", tmp_path / "gen", check=True)
    assert "5 locations, 20 workstations, 10 thin clients, 8 servers" in out.stdout
    again = bigbang("inventory", "generate", "--preset", "demo", "--out", tmp_path / "gen")
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_csv_import_reports_bad_rows_by_line_and_keeps_good_ones(bigbang, tmp_path):
    csv_file = tmp_path / "assets.csv"
    csv_file.write_text(
        "Location;Location name;Location address;Team;Type;Computer name;Serial number;MAC address;Room\n"
        "HST-001;Rådhus;Kirkestræde 11;team-nord;PC;hst-pc-001;S001;00:1a:2b:00:00:01;Borgerservice\n"
        "HST-001;;;;PC;hst-pc-002;S002;00-1A-2B-00-00-02;Økonomi\n"
        "HST-001;;;;PC;hst pc 003;S003;00:1a:2b:00:00:03;Økonomi\n"
        "HST-001;;;;PC;hst-pc-004;S004;00:1a:2b:00:00:01;Økonomi\n"
        "HST-001;;;;thin client;hst-tc-001;;00:e0:c5:00:00:01;Kantine\n"
        "HST-002;;;;PC;hst-pc-005;S005;00:1a:2b:00:00:05;\n"
        "HST-001;;;;toaster;hst-pc-006;S006;00:1a:2b:00:00:06;\n",
        encoding="utf-8",
    )
    out = bigbang("inventory", "import", csv_file, "--out", tmp_path / "locations")
    assert out.returncode == 1
    errors = out.stderr.strip().splitlines()
    assert errors == [
        f"{csv_file}:4: hostname: not a valid hostname: 'hst pc 003' (letters, digits and dashes, at most 63, no dots)",
        f"{csv_file}:5: mac: duplicate mac '00:1a:2b:00:00:01' (first on line 2)",
        f"{csv_file}:7: location_name: the first row of location HST-002 must give location_name, location_address, team",
        f"{csv_file}:8: kind: unknown kind 'toaster' (workstation or thin_client)",
    ]
    assert "imported 3 devices into 1 location files" in out.stdout
    import yaml

    data = yaml.safe_load((tmp_path / "locations" / "hst-001.yaml").read_text())["locations"][0]
    assert data["name"] == "Rådhus" and data["team"] == "team-nord"
    assert [w["hostname"] for w in data["workstations"]] == ["hst-pc-001", "hst-pc-002"]
    assert data["workstations"][1]["mac"] == "00:1a:2b:00:00:02"
    assert data["thin_clients"] == [{"hostname": "hst-tc-001", "mac": "00:e0:c5:00:00:01", "room": "Kantine"}]
