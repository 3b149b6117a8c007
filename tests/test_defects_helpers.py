"""Shared set-up for the defect tests (no tests here): a demo inventory with known failures, rehearsed without Prefect."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from bigbang.session import RunOptions, RunSession
from tests.helpers import finish

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "inventories" / "demo"
PXE = "PXE boot did not start within 10 min"
DOMAIN = "device not joined to the domain"
USERS = [{"id": "lbe", "name": "Lise Bech", "phone": "+45 97 42 11 01"},
         {"id": "kma", "name": "Karen Madsen", "phone": "+45 97 42 11 02", "email": "kma@demo-kommune.dk"},
         {"id": "pda", "name": "Peter Dahl", "phone": "+45 97 42 27 01"}]


def demo_inventory(tmp: Path, *, support: dict[str, Any] | None = None) -> Path:
    """The demo with deterministic failures:
    - the same ws.image failure on one Lenovo in each of the three locations (one problem),
    - hst-ws-102's verification fails during the rollout and in the first probe round, then passes,
    - hst-tc-203's firmware update fails (the demo's own injection)."""
    target = tmp / "inventory"
    shutil.copytree(DEMO, target)
    rollout_file = target / "rollout.yaml"
    data = yaml.safe_load(rollout_file.read_text(encoding="utf-8"))
    data["rehearsal"]["failure_rate"] = 0.0
    data["rehearsal"]["inject"] += [
        {"target": host, "step": "ws.image", "message": PXE} for host in ("hst-ws-101", "lys-ws-101", "nor-ws-101")
    ] + [{"target": "hst-ws-102", "step": "ws.verify", "attempts": 101, "message": DOMAIN}]
    data["support"] = {"probe_sample_percent": 0, "users": USERS, **(support or {})}
    rollout_file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def rehearse(inventory: Path, ledger_url: str, **options: Any) -> RunSession:
    """A finished rehearsal in this process, without Prefect."""
    session = RunSession.start(inventory, RunOptions(zero_duration=True, **options), ledger_url=ledger_url)
    finish(session)
    session.ledger.set_run_status(session.run_id, "completed")
    return session
