"""The one poller of flow-run states the waiting location tasks share (flows/dispatch.py: FlowRunStates).

Against the real Prefect server the distributed tests exercise it end to end (tests/test_distributed.py: a
killed worker's flow run seen Crashed and dispatched again). Here, its own promises with a client that
counts requests: one request per round for any number of waiting runs (in pages), every waiter gets its
run's state, a failing server is retried and then reported."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import pytest

from flows import dispatch


class _State:
    def __init__(self, name: str):
        self.name = name


class _Server:
    def __init__(self):
        self.states: dict[uuid.UUID, _State] = {}
        self.requests: list[int] = []
        self.failing = False
        self.lock = threading.Lock()

    @contextmanager
    def client(self, sync_client=True):
        yield self

    def read_flow_runs(self, *, flow_run_filter, limit):
        if self.failing:
            raise ConnectionError("server restarting")
        ids = flow_run_filter.id.any_
        assert limit == len(ids)
        with self.lock:
            self.requests.append(len(ids))
        return [type("FlowRun", (), {"id": i, "state": self.states[i]})() for i in ids if i in self.states]


@pytest.fixture
def server(monkeypatch):
    fake = _Server()
    monkeypatch.setattr(dispatch, "get_client", fake.client)
    monkeypatch.setenv("BIGBANG_DISPATCH_POLL_SECONDS", "0.05")
    return fake


def test_many_waiting_runs_are_read_in_one_paged_request_per_round(server):
    states = dispatch.FlowRunStates()
    ids = [uuid.uuid4() for _ in range(450)]
    for i, flow_run_id in enumerate(ids):
        server.states[flow_run_id] = _State(f"state-{i}")
    seen = {i: states.watch(i) for i in ids}
    got = {}
    for flow_run_id in ids:
        _, got[flow_run_id] = states.next_state(flow_run_id, seen[flow_run_id], timeout=10)
    assert {i: s.name for i, s in got.items()} == {i: server.states[i].name for i in ids}
    # pages of at most BATCH ids, the whole set each round (450: three requests), never one request per run
    with server.lock:
        requests, rounds = list(server.requests), states._round
    assert max(requests) == dispatch.FlowRunStates.BATCH
    assert len(requests) <= 3 * (rounds + 1)
    for flow_run_id in ids:
        states.forget(flow_run_id)


def test_a_state_change_reaches_the_waiter_in_a_later_round(server):
    states = dispatch.FlowRunStates()
    flow_run_id = uuid.uuid4()
    server.states[flow_run_id] = _State("Pending")
    seen, state = states.next_state(flow_run_id, states.watch(flow_run_id), timeout=10)
    assert state.name == "Pending"
    server.states[flow_run_id] = _State("Completed")
    while state.name != "Completed":
        seen, state = states.next_state(flow_run_id, seen, timeout=10)
    states.forget(flow_run_id)


def test_a_failing_server_is_retried_then_reported_to_the_waiters(server, monkeypatch):
    states = dispatch.FlowRunStates()
    flow_run_id = uuid.uuid4()
    server.states[flow_run_id] = _State("Running")
    seen, state = states.next_state(flow_run_id, states.watch(flow_run_id), timeout=10)
    server.failing = True
    seen, state = states.next_state(flow_run_id, seen, timeout=10)  # a failed round keeps the last state
    assert state.name == "Running"
    monkeypatch.setattr(dispatch.FlowRunStates, "FAILING_FOR", 0.2)
    with pytest.raises(ConnectionError, match="restarting"):
        for _ in range(100):
            seen, state = states.next_state(flow_run_id, seen, timeout=10)
    server.failing = False  # the server is back: after the round under way, states come again
    for _ in range(100):
        try:
            seen, state = states.next_state(flow_run_id, states.watch(flow_run_id), timeout=10)
            break
        except ConnectionError:
            continue
    assert state.name == "Running" and states._error is None
    states.forget(flow_run_id)
