"""The inventory cache: an unchanged inventory loads from its validated copy, anything else from the files."""

from __future__ import annotations

import shutil
import stat

import pytest

from bigbang.errors import InventoryError
from bigbang.inventory import cache, load_inventory
from bigbang.inventory import loader as loader_module
from bigbang.plan import build_plan
from tests.helpers import DEMO


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGBANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    path = tmp_path / "inventory"
    shutil.copytree(DEMO, path)
    return path


def _no_parsing(monkeypatch):
    def refuse(self):
        raise AssertionError("the files were parsed")
    monkeypatch.setattr(loader_module._Loader, "read", refuse)


def test_an_unchanged_inventory_loads_from_the_cache_the_same_as_from_its_files(inventory, monkeypatch):
    first = load_inventory(inventory)
    entries = list((inventory.parent / "cache" / "inventory").glob("*.json"))
    assert len(entries) == 1
    _no_parsing(monkeypatch)
    second = load_inventory(inventory)
    assert second == first
    assert (second.source, second.digest) == (first.source, first.digest)
    assert type(second.connectors["ssh"]) is type(first.connectors["ssh"])
    assert build_plan(second, "rehearsal").to_dict() == build_plan(first, "rehearsal").to_dict()


def test_an_edited_file_is_read_again_and_its_errors_keep_their_lines(inventory):
    load_inventory(inventory)
    rollout = inventory / "rollout.yaml"
    lines = rollout.read_text().splitlines()
    lines.append("bogus_section: 1")
    rollout.write_text("\n".join(lines) + "\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(inventory)
    problem = err.value.problems[0]
    assert problem.file.endswith("rollout.yaml") and problem.line == len(lines)
    assert "bogus_section" in problem.path


def test_a_torn_entry_is_ignored_and_written_again(inventory, monkeypatch):
    first = load_inventory(inventory)
    (entry,) = (inventory.parent / "cache" / "inventory").glob("*.json")
    entry.write_text('{"rollout": ')
    assert load_inventory(inventory) == first
    assert entry.read_text().startswith("{") and len(entry.read_text()) > 100
    _no_parsing(monkeypatch)
    assert load_inventory(inventory) == first


def test_entries_are_owner_only_and_the_cache_can_be_turned_off(inventory, monkeypatch):
    load_inventory(inventory)
    directory = inventory.parent / "cache" / "inventory"
    (entry,) = directory.glob("*.json")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    monkeypatch.setenv(cache.CACHE_ENV, "0")
    _no_parsing(monkeypatch)
    with pytest.raises(AssertionError, match="parsed"):
        load_inventory(inventory)


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGBANG_CACHE", str(tmp_path / "cache"))
    for i in range(cache.KEEP + 3):
        path = tmp_path / f"inventory-{i}"
        shutil.copytree(DEMO, path)
        load_inventory(path)
    assert len(list((tmp_path / "cache" / "inventory").glob("*.json"))) == cache.KEEP
