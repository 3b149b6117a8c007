"""The run ledger on SQLite and on a real PostgreSQL: nothing recorded is lost or undone."""

from __future__ import annotations

import threading

import pytest

from bigbang.store.ledger import Ledger, StepRecord
from tests.helpers import copy_demo, rehearse, wait_for
from tests.peers.postgres import postgres  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres").create_database()


def new_run(ledger: Ledger, run_id: str = "r1") -> str:
    ledger.create_run(run_id, rollout="t", inventory="inv", inventory_digest="d", plan_digest="p",
                      mode="rehearsal", options={}, clock="simulated", plan={}, inventory_data={})
    return run_id


def test_a_succeeded_step_is_never_overwritten(ledger_url):
    ledger = Ledger(ledger_url)
    run = new_run(ledger)
    ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "running"))
    ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "succeeded", attempts=2, finished_at=5.0))
    ledger.flush()
    ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "running"))  # a stale writer
    ledger.record_step(run, StepRecord("b:ws.image", "L1", "b", "ws.image", "failed", attempts=3, message="x"))
    ledger.flush()
    ledger.record_step(run, StepRecord("b:ws.image", "L1", "b", "ws.image", "succeeded", attempts=1))
    ledger.flush()
    results = ledger.step_results(run)
    assert (results["a:ws.image"].status, results["a:ws.image"].attempts) == ("succeeded", 2)
    assert results["b:ws.image"].status == "succeeded"  # a retried failure may succeed later
    ledger.close()


def test_a_running_state_is_written_once_it_lasts_and_an_outcome_in_time_supersedes_it(ledger_url):
    ledger = Ledger(ledger_url)
    run = new_run(ledger)
    written: list[list[str]] = []
    original = Ledger._upsert_steps

    def spy(self, conn, items):  # noqa: ANN001 - records what each committed batch wrote
        written.append([f"{r.step_id}={r.status}" for _, r, _, _ in items])
        return original(self, conn, items)

    Ledger._upsert_steps = spy  # type: ignore[method-assign]
    try:
        ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "running", clock_start=1.0))
        ledger.record_step(run, StepRecord("b:tc.verify", "L1", "b", "tc.verify", "running", clock_start=1.0))
        ledger.record_step(run, StepRecord("b:tc.verify", "L1", "b", "tc.verify", "succeeded", attempts=1))
        # the long step shows as running without a flush, once it has run RUNNING_DELAY seconds
        running = wait_for(lambda: ledger.step_results(run).get("a:ws.image"), 20, "the running state")
        assert running.status == "running" and running.clock_start == 1.0
        ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "succeeded", attempts=1))
        ledger.flush()
    finally:
        Ledger._upsert_steps = original  # type: ignore[method-assign]
    rows = [row for batch in written for row in batch]
    assert "b:tc.verify=running" not in rows and rows.count("b:tc.verify=succeeded") == 1  # written once
    assert rows.index("a:ws.image=running") < rows.index("a:ws.image=succeeded")
    assert {k: r.status for k, r in ledger.step_results(run).items()} == {"a:ws.image": "succeeded",
                                                                          "b:tc.verify": "succeeded"}
    # a flush writes a running state at once: what was queued before it is committed
    ledger.record_step(run, StepRecord("c:ws.image", "L1", "c", "ws.image", "running"))
    ledger.flush()
    assert ledger.step_results(run)["c:ws.image"].status == "running"
    ledger.close()


def test_concurrent_writers_from_two_ledgers_lose_and_duplicate_nothing(ledger_url):
    first, second = Ledger(ledger_url), Ledger(ledger_url)
    run = new_run(first)

    def write(ledger: Ledger, offset: int) -> None:
        for i in range(400):
            sid = f"d{(i + offset) % 400}:ws.image"
            ledger.record_step(run, StepRecord(sid, "L1", sid.split(":")[0], "ws.image", "succeeded", attempts=1))
        ledger.flush()

    threads = [threading.Thread(target=write, args=(first, 0)), threading.Thread(target=write, args=(second, 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = first.step_results(run)
    assert len(results) == 400 and {r.status for r in results.values()} == {"succeeded"}
    applied = [first.apply_sim_effect(run, "x:ws.image"), second.apply_sim_effect(run, "x:ws.image")]
    assert sorted(applied) == [False, True]
    first.close()
    second.close()


def test_a_simulated_change_is_committed_with_its_steps_outcome(ledger_url):
    ledger = Ledger(ledger_url)
    run = new_run(ledger)
    step = StepRecord("a:ws.image", "L1", "a", "ws.image", "running")
    ledger.record_step(run, step)
    assert ledger.stage_sim_effect(run, "a:ws.image") is True
    assert ledger.stage_sim_effect(run, "a:ws.image") is False  # staged already: applied once
    ledger.flush()
    assert ledger.sim_effect_counts(run) == 0  # nothing without the step's outcome
    ledger.record_step(run, StepRecord("a:ws.image", "L1", "a", "ws.image", "succeeded", attempts=1, changed=True))
    assert ledger.sim_effect_applied(run, "a:ws.image")  # a verification right after sees it, committed or not
    ledger.flush()
    assert ledger.sim_effect_counts(run) == 1
    assert ledger.step_results(run)["a:ws.image"].status == "succeeded"
    other = Ledger(ledger_url)  # another process finds the change on the device: not applied again
    assert other.sim_effect_applied(run, "a:ws.image") and other.stage_sim_effect(run, "a:ws.image") is False
    assert not other.sim_effect_applied(run, "b:ws.image")
    other.close()
    ledger.close()


def test_sign_off_and_problems_are_recorded_once(ledger_url):
    ledger = Ledger(ledger_url)
    run = new_run(ledger)
    assert ledger.sign_off(run, "L1", "anne") is True
    assert ledger.sign_off(run, "L1", "bob") is False
    assert ledger.signoff(run, "L1")["signed_by"] == "anne"
    assert ledger.add_problem("p-1", run, "L1", "hardware", "screen cracked", "anne", device="ws1") is True
    assert ledger.add_problem("p-1", run, "L1", "hardware", "screen cracked", "anne", device="ws1") is False
    assert [p["text"] for p in ledger.problems(run)] == ["screen cracked"]


def test_a_whole_rehearsal_on_each_database(tmp_path, ledger_url):
    session = rehearse(copy_demo(tmp_path), ledger_url, failure_rate=0.0)
    results = session.ledger.step_results(session.run_id)
    assert len(results) == session.plan.step_count
    assert {r.status for sid, r in results.items() if sid != "hst-tc-203:tc.reassign" and
            sid != "hst-tc-203:tc.verify"} == {"succeeded"}
    assert results["hst-tc-203:tc.reassign"].message == "firmware update failed: not enough flash space"
