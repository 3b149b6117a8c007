"""Terminal output that scales: `plan` of a Holstebro-size inventory, the end-of-run table, `runs` and
`latest`, the live display's location states. Output to a pipe: whole lines, no markup read from data."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from bigbang.progress import Snapshot, summary_table
from bigbang.run_ids import resolve_run_id
from bigbang.session import RunOptions, RunSession
from tests.conftest import DEMO
from tests.helpers import finish


@pytest.fixture(scope="module")
def holstebro(tmp_path_factory):
    from bigbang.cli import main

    out = tmp_path_factory.mktemp("holstebro") / "inv"
    assert main(["inventory", "generate", "--preset", "holstebro", "--out", str(out)]) == 0
    return out


def test_plan_of_holstebro_is_a_summary_sorted_as_its_headings_say(bigbang, holstebro):
    out = bigbang("plan", holstebro, check=True).stdout
    lines = out.splitlines()
    assert len(lines) <= 120, f"{len(lines)} lines"
    assert "150 locations" in lines[0] and "400 servers" in lines[0] and "3500 devices" in lines[0]
    assert "srv-app001" in out and "srv-app204" not in out  # waves summarised, not 400 servers one by one
    # Teams in order, and within a team the dispatch order (each location after the one it follows)
    rows = [line for line in lines if line.startswith("│ team-")]
    teams = [row.split("│")[1].strip() for row in rows]
    assert teams == sorted(teams) and len(teams) == 15
    # Not a terminal: no line is wrapped, so every line of a table is as wide as its top border
    widths = {len(line) for line in lines if line[:1] in "┏┃┡│└"}
    assert len(widths) <= 4, widths  # one width per table
    verbose = bigbang("plan", holstebro, "--verbose", check=True).stdout
    assert "srv-app204" in verbose and "1 locations" not in verbose
    one = bigbang("plan", holstebro, "--location", "HOL-001", check=True).stdout
    assert "HOL-001 devices" in one and len(one.splitlines()) < 220


def _render(renderable, width: int = 200) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, markup=False, emoji=False).print(renderable)
    return buf.getvalue().splitlines()


def _location(i: int, status: str = "succeeded", reason: str = "") -> dict:
    return {"id": f"L-{i:03d}", "name": f"School {i} [bold]x[/] :smile:", "status": status, "reason": reason,
            "devices": 20, "failed": 0 if status == "succeeded" else 3, "skipped": 0}


def test_summary_of_an_all_green_holstebro_size_run_is_short():
    lines = _render(summary_table({"locations": [_location(i) for i in range(150)]}))
    assert lines == ["All 150 locations succeeded."]


def test_summary_lists_only_what_did_not_succeed_plus_totals_and_reads_no_markup():
    locations = [_location(i) for i in range(150)]
    locations[7] = _location(7, "halted", "4 of 20 devices failed")
    locations[9] = _location(9, "completed_with_failures", "1 of 20 devices failed")
    lines = _render(summary_table({"locations": locations}))
    text = "\n".join(lines)
    assert "2 locations of 150 did not succeed" in text
    assert "L-007" in text and "L-009" in text and "L-001" not in text
    assert text.index("L-007") < text.index("L-009")  # halted first
    assert "[bold]x[/] :smile:" in text  # user data stays text
    assert "148 succeeded" in lines[-1] and "1 halted" in lines[-1]
    assert len(lines) <= 30
    many = [_location(i, "blocked", "srv-dc01 not ready") for i in range(150)]
    lines = _render(summary_table({"locations": many}))
    assert len(lines) <= 30 and "… 130 more" in "\n".join(lines)


def test_live_display_states_and_latest_run_id(tmp_path, bigbang):
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(DEMO, RunOptions(mode="rehearsal", zero_duration=True, failure_rate=0.0),
                               ledger_url=ledger_url)
    ledger, plan = session.ledger, session.plan
    snap = Snapshot(plan, ledger.progress(session.run_id), ledger.location_results(session.run_id))
    assert {snap.state(loc.id) for loc in plan.locations} == {"not started"}
    # a location that began and waits for its slot is not "running 0/32"
    first = plan.locations[0]
    ledger.record_location(session.run_id, first.id, "running", devices=len(first.devices), started_at=1.0)
    ledger.flush()
    snap = Snapshot(plan, ledger.progress(session.run_id), ledger.location_results(session.run_id))
    assert snap.state(first.id) == "waiting for slot"
    snap.loc_device_done[first.id] = sum(len(d.steps) for d in first.devices)
    snap.loc_done[first.id] = 5
    assert snap.state(first.id) == "waiting for sign-off"
    ledger.record_location(session.run_id, first.id, "blocked", devices=len(first.devices))
    ledger.flush()
    snap = Snapshot(plan, ledger.progress(session.run_id), ledger.location_results(session.run_id))
    assert snap.state(first.id) == "blocked"
    finish(session)
    snap = Snapshot(plan, ledger.progress(session.run_id), ledger.location_results(session.run_id))
    assert set(snap.states()) <= {"done", "done with failures", "blocked"}

    assert resolve_run_id(ledger, "latest") == session.run_id
    assert resolve_run_id(ledger, session.run_id[:-2]) == session.run_id
    runs = bigbang("runs", "--ledger", ledger_url, check=True).stdout
    assert session.run_id in runs  # whole, never cut
    report = bigbang("report", "latest", "--ledger", ledger_url, "--json", check=True).stdout
    assert session.run_id in report
    missing = bigbang("report", "run-nope", "--ledger", ledger_url)
    assert missing.returncode == 1 and "no run run-nope" in missing.stderr
    session.close()


def test_plural_forms_in_plan():
    from bigbang.commands.plan import plural

    assert plural(1, "location") == "1 location" and plural(2, "location") == "2 locations"
    assert re.fullmatch(r"0 thin clients", plural(0, "thin client"))
