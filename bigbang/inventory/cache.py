"""Validated inventories kept by content, so a second run of the same files does not parse them again.

Loading is a pure function of the files' bytes and of the loader's own code: parsing the YAML with
line numbers, cascading and validating Höglandet's 250 locations takes ~2.7 s here, reading the
validated model back from JSON ~0.6 s. An entry's key is a hash of both (the loader's and the model's
source, every file's path and bytes), so an edited file or an upgraded bigbang misses the cache and
loads the ordinary way; only inventories that loaded without a problem are kept, so every error is
still reported from the files with their lines.

Entries live in the user's cache directory (`~/.cache/bigbang/inventory`, owner-only; `BIGBANG_CACHE`
moves it); an inventory holds secret references, never secrets (the loader refuses plain ones), so the
cache holds nothing a reader of the YAML could not see. `BIGBANG_INVENTORY_CACHE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pydantic

from bigbang.inventory.model import Inventory
from bigbang.user_dirs import cache_root

CACHE_ENV = "BIGBANG_INVENTORY_CACHE"
KEEP = 8  # entries kept; the oldest go first
_CODE: list[bytes] = []


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


def cache_dir() -> Path:
    return cache_root() / "inventory"


def _code_fingerprint() -> bytes:
    """What the loaded model depends on besides the files: bigbang's code (the loader, the model, the
    connectors' settings) and pydantic's version. ~2 MB hashed once per process, a few milliseconds."""
    if not _CODE:
        digest = hashlib.sha256(pydantic.VERSION.encode())
        package = Path(__file__).resolve().parent.parent
        for source in sorted(package.rglob("*.py")):
            digest.update(source.relative_to(package).as_posix().encode())
            digest.update(source.read_bytes())
        _CODE.append(digest.digest())
    return _CODE[0]


def content_digest(root: Path, files: list[Path]) -> str | None:
    """The hash of the files as the loader's digest counts them (relative path and bytes), in full."""
    digest = hashlib.sha256()
    try:
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() if root.is_dir() else b"")
            digest.update(file.read_bytes())
    except OSError:
        return None  # the loader reports what could not be read
    return digest.hexdigest()


def key(root: Path, content: str) -> str:
    digest = hashlib.sha256(_code_fingerprint())
    digest.update(os.path.abspath(root).encode())
    digest.update(content.encode())
    return digest.hexdigest()[:32]


def get(entry: str) -> Inventory | None:
    from bigbang.connectors import CONNECTORS

    path = cache_dir() / f"{entry}.json"
    try:
        text = path.read_bytes()
    except OSError:
        return None
    try:
        inventory = Inventory.model_validate_json(text)
        # as the loader leaves them: each connector's settings as its settings model
        connectors = {name: CONNECTORS[name].settings_model.model_validate(settings)
                      for name, settings in inventory.connectors.items()}
        inventory = inventory.model_copy(update={"connectors": connectors})
    except (ValueError, KeyError, pydantic.ValidationError):
        _remove(path)  # torn or from a different model: load the ordinary way and write it again
        return None
    try:
        os.utime(path)  # recently used entries stay
    except OSError:
        pass
    return inventory


def put(entry: str, inventory: Inventory) -> None:
    """Keep a validated inventory; a cache that cannot be written is only slower, never an error."""
    directory = cache_dir()
    tmp = None
    try:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")  # created 0600
        with os.fdopen(fd, "wb") as f:
            f.write(inventory.model_dump_json().encode())
        os.replace(tmp, directory / f"{entry}.json")
        tmp = None
        entries = sorted((p for p in directory.iterdir() if p.suffix == ".json"),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            _remove(old)
    except OSError:
        pass
    finally:
        if tmp is not None:
            _remove(Path(tmp))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
