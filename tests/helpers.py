"""Helpers for tests that drive the runner without Prefect."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from bigbang.runner import Runner
from bigbang.session import RunOptions, RunSession

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "inventories" / "demo"


def copy_demo(tmp_path: Path, edit=None) -> Path:
    """A copy of the demo inventory; `edit(files)` may change the parsed YAML of each file first."""
    target = tmp_path / "inventory"
    shutil.copytree(DEMO, target)
    if edit is not None:
        files = {p.relative_to(target).as_posix(): yaml.safe_load(p.read_text()) for p in target.rglob("*.yaml")}
        edit(files)
        for rel, data in files.items():
            (target / rel).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target


def rehearse(inventory: Path, ledger_url: str, **options) -> RunSession:
    """A whole rehearsal in this process, in plan order, without the Prefect engine."""
    options.setdefault("zero_duration", True)
    session = RunSession.start(inventory, RunOptions(**options), ledger_url=ledger_url)
    finish(session)
    return session


def servers_ready(session: RunSession) -> Runner:
    """Run the prechecks and every server wave; the returned runner then takes locations."""
    runner = Runner(session)
    runner.run_prechecks()
    for index in range(len(session.plan.waves)):
        runner.run_wave(index)
    return runner


def finish(session: RunSession) -> None:
    runner = servers_ready(session)
    for loc in session.plan.locations:
        runner.run_location(loc.id)
    session.ledger.flush()


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """The first true value of `predicate()`, polled every `every` seconds; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
