"""Where bigbang keeps what it can always make again: the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$BIGBANG_CACHE, else `bigbang` in the user's cache directory (XDG): a cache, not a run's state, so
    read-only commands (`validate`, `plan`) write nothing into the working directory."""
    return Path(os.environ.get("BIGBANG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bigbang"))
