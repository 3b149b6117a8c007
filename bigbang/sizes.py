"""Server sizes as the inventory writes them and as hypervisors keep them, shared by vSphere and Xen.

The inventory says `memory_gb` (whole GB) or `memory_mb` (where it is not whole GB, e.g. after a
discover); disks are GB, whole or fractional. Both hypervisors' discover writes what an untouched VM
has exactly, so that discover then diff shows no drift.
"""

from __future__ import annotations

from typing import Any

MiB = 1024 ** 2
GiB = 1024 ** 3


def memory_mb_of(spec: dict[str, Any]) -> int:
    """A server's memory in MB: memory_mb where given, else memory_gb."""
    return int(spec["memory_mb"]) if spec.get("memory_mb") is not None else int(spec["memory_gb"]) * 1024


def memory_label(spec: dict[str, Any]) -> str:
    """The memory as the inventory gave it, for messages."""
    return f"{spec['memory_mb']} MB" if spec.get("memory_mb") is not None else f"{spec['memory_gb']} GB"


def memory_entry(mb: int) -> dict[str, int]:
    """The inventory fields for `mb` MB: memory_gb when it is whole GB, else memory_mb."""
    return {"memory_gb": mb // 1024} if mb % 1024 == 0 and mb >= 1024 else {"memory_mb": mb}


def gb_exact(size_bytes: int) -> int | float:
    """Bytes as GB, exactly: whole GB as an int, else a float (bytes / 2**30 is exact in binary floating point
    for sizes below 2**83 bytes)."""
    return size_bytes // GiB if size_bytes % GiB == 0 else size_bytes / GiB
