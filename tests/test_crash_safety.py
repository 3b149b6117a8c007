"""Exactly once, under every fault: leases with fencing, intents, kills, resumes and broken ledgers.

The rehearsals here play the demo inventory on the simulated connector, whose `sim_effects` rows are the
devices' changes: a change applied twice would need a second row, which the table cannot hold, so the
tests count rows against the steps that changed something and check that every change is recorded as
made by exactly one step outcome (`changed=True`) - a step redone after its change was applied would
either be missing from that count or claim it twice.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bigbang.errors import LeaseHeld, LeaseLost
from bigbang.runner import Runner, changes_device
from bigbang.session import RunOptions, RunSession, frozen_run
from bigbang.status import LocationStatus, RunStatus, StepStatus
from bigbang.store.ledger import SERVERS_SCOPE, Ledger, StepRecord
from tests.helpers import ROOT, copy_demo, finish, rehearse
from tests.peers.postgres import postgres  # noqa: F401 - fixture

COMPRESSION = 8000  # the demo's ~23,000 simulated seconds in ~3 s

# Runs one rehearsal (start, or resume if the run exists) in a child process, without the Prefect engine.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bigbang.errors import UserError
    from bigbang.session import RunOptions, RunSession
    from bigbang.store.ledger import Ledger
    from tests.helpers import finish
    inventory, url, run_id, compression, go = sys.argv[1:6]
    while go != "-" and not Path(go).exists():
        time.sleep(0.005)
    try:
        if Ledger(url).get_run(run_id) is None:
            session = RunSession.start(inventory, RunOptions(compression=float(compression)), ledger_url=url,
                                       run_id=run_id)
        else:
            session = RunSession.resume(run_id, ledger_url=url, compression=float(compression))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print("EXECUTING", flush=True)
    finish(session)
    session.finish()
    session.close()
    print("DONE", flush=True)
""")


def child(inventory: Path, url: str, run_id: str, go: str = "-", compression: float = COMPRESSION) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(inventory), url, run_id, str(compression), go],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigbang", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def changing_steps(ledger: Ledger, run_id: str) -> list[StepRecord]:
    """Succeeded steps that change a device on the simulated connector (sign-offs are the technician's)."""
    session = RunSession.attach(run_id, ledger.url)
    planned = {s.id: s for s in session.plan.steps()}
    return [r for r in ledger.step_results(run_id).values()
            if r.status == StepStatus.SUCCEEDED and changes_device(planned[r.step_id])
            and r.kind != "loc.signoff"]


def assert_each_change_once(ledger: Ledger, run_id: str) -> None:
    changing = changing_steps(ledger, run_id)
    assert changing, "the demo has changing steps"
    assert ledger.sim_effect_counts(run_id) == len(changing)
    assert sum(r.changed for r in changing) == len(changing) - sum(
        "applied before the interruption" in r.message for r in changing)
    assert ledger.open_intents(run_id) == {}


def snapshot(url: str) -> tuple[dict, dict]:
    """Finished steps and final locations, as the ledger holds them now."""
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"steps", "locations"} <= tables:  # killed before the ledger had made its tables: nothing yet
            return {}, {}
        steps = {row[0]: row[1:] for row in db.execute(
            "SELECT step_id, status, attempts, changed, message, started_at, finished_at, clock_start, clock_end "
            "FROM steps WHERE status IN ('succeeded', 'failed')")}
        final = (LocationStatus.SUCCEEDED, LocationStatus.COMPLETED_WITH_FAILURES, LocationStatus.HALTED)
        locations = {row[0]: row[1:] for row in db.execute(
            "SELECT location_id, status, reason, devices_failed, started_at, finished_at, clock_start, clock_end "
            f"FROM locations WHERE status IN ({', '.join('?' * len(final))})", [str(s) for s in final])}
    finally:
        db.close()
    return steps, locations


def assert_prefix(before: tuple[dict, dict], after: tuple[dict, dict], when: str) -> None:
    for kind, old, new in (("step", before[0], after[0]), ("location", before[1], after[1])):
        for key, record in old.items():
            assert new.get(key) == record, f"{when}: finished {kind} {key} changed: {record} -> {new.get(key)}"


# ---------------------------------------------------------------- two executors


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_resumes_at_once_one_executes(tmp_path, database, request):
    inventory = copy_demo(tmp_path)
    url = (request.getfixturevalue("postgres").create_database() if database == "postgresql"
           else f"sqlite:///{tmp_path}/ledger.db")
    session = RunSession.start(inventory, RunOptions(compression=COMPRESSION), ledger_url=url)
    session.close()  # created, nothing run: as after a crash right at the start
    go = tmp_path / "go"
    children = [child(inventory, url, session.run_id, str(go)) for _ in range(2)]
    time.sleep(2.0)  # both imported and waiting
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in children]

    executed = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(executed) == 1 and len(refused) == 1, results
    assert "DONE" in executed[0][1]
    code, out, err = refused[0]
    assert code == 1 and "EXECUTING" not in out
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"run {session.run_id} is being executed by " in line and line.endswith("; wait or stop it")
    ledger = Ledger(url)
    assert ledger.get_run(session.run_id)["status"] == RunStatus.COMPLETED
    assert_each_change_once(ledger, session.run_id)


def test_a_resume_while_the_run_executes_is_refused_in_one_line(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    session = RunSession.start(inventory, RunOptions(), ledger_url=url)  # this process holds the lease
    result = cli("run", "--resume", session.run_id, "--ledger", url, "--quiet")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: run {session.run_id} is being executed by {session.ledger.worker} since "
        + result.stderr.split(" since ")[1].strip()]
    assert result.stderr.strip().endswith("; wait or stop it")
    assert Ledger(url).get_run(session.run_id)["status"] == RunStatus.RUNNING  # the refused resume wrote nothing
    session.close()


def test_a_stale_writer_is_refused_and_an_expired_lease_taken_over(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/ledger.db"
    first, second = Ledger(url), Ledger(url)
    second.worker = "elsewhere:1"  # another host: its process cannot be looked up, only its lease expire
    first.create_run("run-x", rollout="r", inventory="-", mode="rehearsal", options={}, clock="simulated",
                     plan={}, inventory_data={}, plan_digest="-", inventory_digest="-")
    old = first.acquire_lease("run-x", ttl=0.5)
    with pytest.raises(LeaseHeld, match="run run-x is being executed by .* since .*; wait or stop it"):
        second.acquire_lease("run-x")
    first._stop_renewing.set()  # the holder stalls: no more renewals
    first._renewer.join()
    time.sleep(0.6)
    new = second.acquire_lease("run-x")
    assert new.token == old.token + 1
    assert [e["kind"] for e in first.events("run-x")][-1] == "lease.taken_over"

    base = dict(scope="servers", target="srv", kind="srv.provision", attempts=1)
    first.record_step("run-x", StepRecord(step_id="srv:srv.provision", status=StepStatus.FAILED, **base))
    with pytest.raises(LeaseLost, match="taken over by elsewhere:1"):
        first.flush()
    with pytest.raises(LeaseLost):
        first.record_intent("run-x", "srv:srv.snapshot", "servers", 1)
    assert first.step_results("run-x") == {} and first.open_intents("run-x") == {}
    second.record_step("run-x", StepRecord(step_id="srv:srv.provision", status=StepStatus.SUCCEEDED, **base))
    second.flush()
    assert second.step_results("run-x")["srv:srv.provision"].status == StepStatus.SUCCEEDED
    second.release_lease("run-x")
    assert first.acquire_lease("run-x").token == new.token + 1  # released: free at once


def dask_worker_session(url: str, run_id: str, worker: str) -> RunSession:
    """The session `RunSession.attach` makes in a Dask worker's process (tasks/rollout.py): its own ledger,
    no lease of the run (the weekend flow's process holds that)."""
    ledger = Ledger(url)
    ledger.worker = worker
    run = frozen_run(ledger, run_id)
    return RunSession(run.inventory, run.plan, ledger, run_id, RunOptions.from_dict(run.row["options"]),
                      plan_version=run.plan_version, clock_kind=run.row["clock"], clock_origin=run.row["clock_origin"])


def test_with_dask_a_second_executor_of_the_prechecks_or_a_server_wave_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGBANG_LEASE_SECONDS", "0.5")
    url = f"sqlite:///{tmp_path}/ledger.db"
    flow = RunSession.start(copy_demo(tmp_path), RunOptions(zero_duration=True), ledger_url=url)
    run_id = flow.run_id  # the weekend flow's process holds the run's lease; the tasks run on Dask workers
    first, second = dask_worker_session(url, run_id, "dask-a:1"), dask_worker_session(url, run_id, "dask-b:2")

    assert not Runner(first).run_prechecks().failed
    lease = flow.ledger.lease(run_id, SERVERS_SCOPE)
    assert lease is not None and (lease.owner, lease.token) == (None, 1)  # held while they ran, then released

    first.ledger.acquire_lease(run_id, SERVERS_SCOPE)  # the first executor of wave 1 is at work...
    with pytest.raises(LeaseHeld, match=f"servers of run {run_id} is being executed by dask-a:1"):
        Runner(second).run_wave(0)  # ... so a second one (a retried task) waits, then gives up
    wave = [step for srv in flow.plan.servers if srv.wave == 0 for step in srv.steps]
    assert not set(flow.ledger.step_results(run_id)) & {step.id for step in wave}  # it wrote nothing

    first.ledger._stop_renewing.set()  # the first executor stalls past its lease
    first.ledger._renewer.join()
    time.sleep(0.6)
    assert not Runner(second).run_wave(0).failed  # the second takes the lease over and does the wave
    step = wave[0]
    stale = StepRecord(step_id=step.id, scope="servers", target=step.target, kind=step.kind,
                       status=StepStatus.FAILED, attempts=1, message="the stalled executor woke up")
    first.ledger.record_step(run_id, stale)
    with pytest.raises(LeaseLost, match=rf"servers of run {run_id} was taken over \(lease token 3"):
        first.ledger.flush()
    with pytest.raises(LeaseLost):
        first.ledger.record_intent(run_id, step.id, "servers", 2)
    assert flow.ledger.step_results(run_id)[step.id].status == StepStatus.SUCCEEDED  # the second's outcome
    assert flow.ledger.lease(run_id, SERVERS_SCOPE).token == 3
    flow.close()


def test_a_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = Ledger(url)
    holder.worker = f"{holder.worker.rpartition(':')[0]}:{dead.stdout.strip()}"
    holder.acquire_lease("run-y", ttl=3600)
    assert Ledger(url).acquire_lease("run-y").token == 2


# ---------------------------------------------------------------- kills


def test_twenty_sigkills_and_resumes_do_every_step_once(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    run_id = "run-killed-twenty-times"
    rng = random.Random(20261127)
    snapshots = []
    killed = 0
    for n in range(20):
        proc = child(inventory, url, run_id)
        time.sleep(rng.uniform(0.9, 3.5))  # ~1 s to start, ~3 s of playback
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        out, err = proc.communicate()
        assert "Traceback" not in err, err
        if Path(url.removeprefix("sqlite:///")).exists():
            snapshots.append((n, snapshot(url)))
    assert killed >= 10  # most moments fell inside a run
    proc = child(inventory, url, run_id)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "DONE" in out, err

    ledger = Ledger(url)
    assert ledger.get_run(run_id)["status"] == RunStatus.COMPLETED
    assert_each_change_once(ledger, run_id)
    final = snapshot(url)
    plan_steps = {s.id for s in RunSession.attach(run_id, url).plan.steps()}
    assert set(ledger.step_results(run_id)) == plan_steps  # every step recorded, once (one row each)
    for n, before in snapshots:
        assert_prefix(before, final, f"after kill {n + 1}")


def test_a_killed_bigbang_run_resumes_without_redoing_a_change(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"BIGBANG_REPORTS": str(tmp_path / "reports")}
    run_id = "run-kill-cli"
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "run", str(inventory), "--compression", "3000",
                             "--quiet", "--ledger", url, "--run-id", run_id], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                done = Ledger(url).progress(run_id).get(("servers", "srv.provision", "succeeded"), 0)
            except Exception:  # noqa: BLE001 - not created yet
                done = 0
            if done:
                break
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Prefect server child
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = snapshot(url)
    result = cli("run", "--resume", run_id, "--ledger", url, "--quiet", "--compression", "max", env=env)
    assert result.returncode == 1, result.stdout + result.stderr  # 1: the demo fails one device on purpose
    assert "hst-tc-203" in result.stdout
    ledger = Ledger(url)
    assert ledger.get_run(run_id)["status"] == RunStatus.COMPLETED
    assert_each_change_once(ledger, run_id)
    assert_prefix(before, snapshot(url), "after the kill")


def test_sigterm_and_a_second_ctrl_c_end_interrupted_in_one_line(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    run_id = "run-interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "run", str(inventory), "--compression", "2000",
                             "--quiet", "--ledger", url, "--run-id", run_id], cwd=ROOT,
                            env={**os.environ, "BIGBANG_REPORTS": str(tmp_path / "reports")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _steps_done(url, run_id):
            time.sleep(0.3)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # a second one while the first is handled
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    # the first signal is handled, whichever gets there first (Prefect forwards a SIGTERM during the flow)
    assert re.fullmatch(r"Interrupted \((SIGTERM|SIGINT)\)\. Every finished step is recorded; continue with: "
                        rf"bigbang run --resume {run_id}", lines[-1]), lines[-1]
    assert Ledger(url).get_run(run_id)["status"] == RunStatus.INTERRUPTED
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []  # Prefect's ephemeral server is gone too


def _steps_done(url: str, run_id: str) -> bool:
    try:
        return sum(n for (_, _, status), n in Ledger(url).progress(run_id).items() if status == "succeeded") > 5
    except Exception:  # noqa: BLE001 - the run is not created yet
        return False


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_change_applied_before_a_crash_is_found_on_the_device_not_redone(tmp_path, monkeypatch):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    session = rehearse(inventory, url)
    session.close()
    run_id, loc = session.run_id, session.plan.locations[0]
    device = loc.devices[0]
    image = next(s for s in device.steps if changes_device(s))
    later = [s.id for s in device.steps[device.steps.index(image) + 1:]] + [loc.signoff.id, loc.verify.id]
    effects = session.ledger.sim_effect_counts(run_id)
    # The state a kill leaves between the device's change and its outcome: the intent, the change, a
    # step still "running", nothing after it.
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    with db:
        db.execute("UPDATE steps SET status = 'running', finished_at = NULL, clock_end = NULL "
                   "WHERE run_id = ? AND step_id = ?", (run_id, image.id))
        db.execute(f"DELETE FROM steps WHERE run_id = ? AND step_id IN ({', '.join('?' * len(later))})",
                   (run_id, *later))
        db.execute("DELETE FROM signoffs WHERE run_id = ?", (run_id,))
        db.execute("UPDATE locations SET status = 'running' WHERE run_id = ? AND location_id = ?", (run_id, loc.id))
        opened = db.execute("UPDATE intents SET settled_at = NULL, outcome = NULL WHERE run_id = ? AND step_id = ?",
                            (run_id, image.id))
        assert opened.rowcount == 1  # the run recorded the intent and settled it
    db.close()
    from bigbang.connectors.simulated import SimulatedConnector

    ran: list[str] = []
    original = SimulatedConnector.run
    monkeypatch.setattr(SimulatedConnector, "run", lambda self, action: ran.append(action.step_id) or original(
        self, action))
    resumed = RunSession.resume(run_id, ledger_url=url)
    finish(resumed)
    resumed.finish()
    resumed.close()
    record = resumed.ledger.step_results(run_id, step_ids=[image.id])[image.id]
    assert record.status == StepStatus.SUCCEEDED and record.changed is False
    assert "applied before the interruption" in record.message
    assert image.id not in ran  # the device was asked, the step not run again
    assert set(later) - {loc.verify.id} <= set(ran)  # what came after it ran
    assert resumed.ledger.sim_effect_counts(run_id) == effects
    assert resumed.ledger.open_intents(run_id) == {}


# ---------------------------------------------------------------- a resume of a finished run

def test_a_device_s_intents_come_before_its_first_change_and_a_crash_before_a_later_step_runs_it_once(
        tmp_path, monkeypatch):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    committed: list[tuple[str, list[str]]] = []
    original_intents = Ledger.record_intents

    def spy(self, run_id, scope, attempts):  # noqa: ANN001 - what was committed when
        attempts = list(attempts)
        committed.append(("intents", [step_id for step_id, _ in attempts]))
        return original_intents(self, run_id, scope, attempts)

    from bigbang.connectors.simulated import SimulatedConnector

    ran: list[str] = []
    original_run = SimulatedConnector.run

    def run(self, action):  # noqa: ANN001
        ran.append(action.step_id)
        committed.append(("run", [action.step_id]))
        return original_run(self, action)

    monkeypatch.setattr(Ledger, "record_intents", spy)
    monkeypatch.setattr(SimulatedConnector, "run", run)
    session = rehearse(inventory, url)
    session.close()
    run_id, loc = session.run_id, session.plan.locations[0]
    device = loc.devices[0]
    first, second = [s for s in device.steps if changes_device(s)][:2]
    # one commit holds both intents, and it comes before the device's first change
    together = next(i for i, (what, ids) in enumerate(committed) if what == "intents" and first.id in ids)
    assert second.id in committed[together][1]
    assert together < committed.index(("run", [first.id]))
    effects = session.ledger.sim_effect_counts(run_id)
    # The state a kill leaves after the first change's outcome, before the second step started: its intent
    # open (committed with the first's), no record of it or of anything after it, its change not made.
    later = [s.id for s in device.steps[device.steps.index(second):]] + [loc.signoff.id, loc.verify.id]
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    with db:
        db.execute(f"DELETE FROM steps WHERE run_id = ? AND step_id IN ({', '.join('?' * len(later))})",
                   (run_id, *later))
        db.execute("DELETE FROM sim_effects WHERE run_id = ? AND step_id = ?", (run_id, second.id))
        db.execute("DELETE FROM signoffs WHERE run_id = ?", (run_id,))
        db.execute("UPDATE locations SET status = 'running' WHERE run_id = ? AND location_id = ?", (run_id, loc.id))
        opened = db.execute("UPDATE intents SET settled_at = NULL, outcome = NULL WHERE run_id = ? AND step_id = ?",
                            (run_id, second.id))
        assert opened.rowcount == 1
    db.close()
    ran.clear()
    resumed = RunSession.resume(run_id, ledger_url=url)
    assert resumed.ledger.open_intents(run_id) == {second.id: 1}
    finish(resumed)
    resumed.finish()
    resumed.close()
    record = resumed.ledger.step_results(run_id, step_ids=[second.id])[second.id]
    assert record.status == StepStatus.SUCCEEDED and record.changed is True  # the device was asked: not made
    assert ran.count(second.id) == 1 and first.id not in ran
    assert resumed.ledger.sim_effect_counts(run_id) == effects  # the change made once, again
    assert resumed.ledger.open_intents(run_id) == {}



def test_resuming_a_completed_run_rewrites_nothing(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    session = rehearse(inventory, url)
    session.finish()
    session.close()
    ledger = Ledger(url)
    # every final step and location, with every time, and the run's end
    before = (ledger.step_results(session.run_id), ledger.location_results(session.run_id))
    finished_at = ledger.get_run(session.run_id)["finished_at"]
    assert {r.status for r in before[0].values()} >= {StepStatus.SUCCEEDED, StepStatus.SKIPPED}

    resumed = RunSession.resume(session.run_id, ledger_url=url)
    finish(resumed)
    assert resumed.finish() == RunStatus.COMPLETED
    resumed.close()
    assert ledger.step_results(session.run_id) == before[0]
    assert ledger.location_results(session.run_id) == before[1]
    assert ledger.get_run(session.run_id)["finished_at"] == finished_at


# ---------------------------------------------------------------- broken ledgers


def test_broken_ledgers_are_one_line_each(tmp_path):
    inventory = copy_demo(tmp_path)
    good = tmp_path / "good.db"
    session = rehearse(inventory, f"sqlite:///{good}")
    session.close()
    session.ledger.close()  # the last connection checkpoints the WAL into the file
    content = good.read_bytes()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(content[: len(content) // 3])
    page = int.from_bytes(content[16:18], "big")
    corrupted = tmp_path / "corrupted.db"  # every page but the first overwritten
    corrupted.write_bytes(content[:page] + random.Random(2).randbytes(len(content) - page))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(random.Random(1).randbytes(8192))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        f"sqlite:///{truncated}": "the ledger file is truncated",
        f"sqlite:///{corrupted}": "corrupted",
        f"sqlite:///{garbage}": "not an SQLite database",
        "postgresql://bigbang@127.0.0.1:1/bigbang": "cannot be reached",
        f"sqlite:///{a_file}/ledger.db": "is a file, not a directory",
    }
    for url, meaning in cases.items():
        for args in (("run", "--resume", session.run_id, "--quiet"), ("runs",)):
            result = cli(*args, "--ledger", url)
            lines = result.stderr.strip().splitlines()
            # `run` (README, exit codes): 3 when the ledger cannot be used, 2 when its URL is wrong; others: 1
            expected = (2, 3) if args[0] == "run" else (1,)
            assert result.returncode in expected and len(lines) == 1, (url, args, result.stderr)
            assert lines[0].startswith("error: ") and meaning in lines[0], (url, lines)
    assert Ledger(f"sqlite:///{good}").get_run(session.run_id) is not None


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_recorded(tmp_path):
    inventory = copy_demo(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    session = RunSession.start(inventory, RunOptions(zero_duration=True), ledger_url=url)
    RunSession.attach(session.run_id, url)
    runner_steps_before = len(session.ledger.step_results(session.run_id))
    session.ledger.flush()
    pages = sqlite3.connect(url.removeprefix("sqlite:///")).execute("PRAGMA page_count").fetchone()[0]

    from sqlalchemy import event

    @event.listens_for(session.ledger.engine, "connect")
    def _small_disk(dbapi_conn, _record):  # noqa: ANN001 - SQLite's "database or disk is full" at this size
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 2}")

    session.ledger.engine.dispose()  # new connections get the limit
    from bigbang.errors import LedgerError

    with pytest.raises(LedgerError, match="the ledger's disk is full: free space and resume"):
        finish(session)
    effects = session.ledger.sim_effect_counts(session.run_id)
    # no change was made whose intent and outcome could not be recorded beyond the first that hit the limit
    assert effects <= len(session.ledger.open_intents(session.run_id)) + len(
        [r for r in session.ledger.step_results(session.run_id).values() if r.changed])
    assert len(session.ledger.step_results(session.run_id)) >= runner_steps_before
    assert session.ledger.get_run(session.run_id) is not None
