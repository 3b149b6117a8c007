"""Lets bigbang read Prefect Secret blocks, without bigbang importing Prefect."""

from __future__ import annotations

from typing import Any

from bigbang.secrets import register_resolver


def _read_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    block: Any = Secret.load(name)  # sync in a sync context
    return str(block.get())


def register_prefect_secrets() -> None:
    register_resolver("prefect_secret", _read_secret_block)
