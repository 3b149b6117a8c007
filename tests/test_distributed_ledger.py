"""Several processes writing one PostgreSQL ledger at once lose and duplicate nothing.

Each writer process stands for a worker: it records the same steps as the others
(running, then a final status), in its own order, and applies the same simulated
device changes. The ledger must end with one row per step, a succeeded step never
turned back into anything else, and each change applied by exactly one writer.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from sqlalchemy import create_engine, text

from bigbang.store.ledger import Ledger, StepRecord
from tests.peers.postgres import postgres  # noqa: F401 - fixture

RUN = "run-concurrent"
STEPS = [f"ws-{n:04d}:ws.image" for n in range(400)]
WRITERS = 4


def final_status(step_id: str, writer: int) -> str:
    """Writers disagree on purpose: writer 0 reports every fourth step failed."""
    return "failed" if writer == 0 and int(step_id[3:7]) % 4 == 0 else "succeeded"


def write_as_worker(url: str, writer: int) -> list[str]:
    ledger = Ledger(url)
    order = STEPS[:]
    random.Random(writer).shuffle(order)
    applied = []
    for step_id in order:
        base = dict(step_id=step_id, scope="LOC-1", target=step_id.split(":")[0], kind="ws.image")
        ledger.record_step(RUN, StepRecord(status="running", **base))
        if ledger.apply_sim_effect(RUN, step_id):
            applied.append(step_id)
        ledger.record_step(RUN, StepRecord(status=final_status(step_id, writer), attempts=1, **base))
        # A stale writer that still believes the step is running comes last.
        ledger.record_step(RUN, StepRecord(status="running", **base))
    ledger.close()
    return applied


def test_concurrent_writers_never_lose_or_duplicate_a_step(postgres):  # noqa: F811
    url = postgres.create_database()
    Ledger(url).create_run(RUN, rollout="concurrency", inventory="-", inventory_digest="-", plan_digest="-",
                           mode="rehearsal", options={}, clock="simulated", plan={}, inventory_data={})
    with ProcessPoolExecutor(WRITERS, mp_context=get_context("spawn")) as pool:
        applied = list(pool.map(write_as_worker, [url] * WRITERS, range(WRITERS)))

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT step_id, status FROM steps WHERE run_id = :r"), {"r": RUN}).all()
        effects = conn.execute(text("SELECT step_id, count(*) FROM sim_effects WHERE run_id = :r GROUP BY step_id"),
                               {"r": RUN}).all()
    engine.dispose()

    assert sorted(step for step, _ in rows) == STEPS
    # At least one writer saw every step succeed, and nothing later undid that.
    assert {status for _, status in rows} == {"succeeded"}
    assert sorted(step for step, _ in effects) == STEPS and {n for _, n in effects} == {1}
    claimed = [step for steps in applied for step in steps]
    assert sorted(claimed) == STEPS  # each change applied by exactly one writer
