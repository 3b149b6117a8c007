"""The simulated connector stands in for each live connector with that connector's own times and failures."""

from __future__ import annotations

from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.simulated import FAILURES_BY_CONNECTOR, SimulatedConnector
from bigbang.inventory.model import Rehearsal
from bigbang.plan import build_plan
from tests.helpers import copy_demo


def _connector(**settings) -> SimulatedConnector:
    context = ConnectorContext(run_id="r", inventory=None, resolve_secret=str, options={})
    return SimulatedConnector(Rehearsal.model_validate(settings), context)


def _action(kind: str, live: str, attempt: int = 1) -> Action:
    return Action(f"dev-{live}:{kind}", kind, f"dev-{live}", attempt, {"live_connector": live})


def test_each_live_connector_has_its_own_durations_and_failure_modes():
    sim = _connector(seed=3)
    assert 0.8 * 240 <= sim.duration(_action("tc.reassign", "ums")) <= 1.2 * 240
    assert 0.8 * 420 <= sim.duration(_action("tc.reassign", "ssh")) <= 1.2 * 420
    failing = _connector(seed=3, failure_rate=1.0)
    assert failing.failure(_action("tc.reassign", "ums")) in FAILURES_BY_CONNECTOR[("tc.reassign", "ums")]
    assert failing.failure(_action("srv.provision", "xen")) in FAILURES_BY_CONNECTOR[("srv.provision", "xen")]
    assert failing.failure(_action("tc.reassign", "ssh")) not in FAILURES_BY_CONNECTOR[("tc.reassign", "ums")]


def test_the_inventory_can_set_a_step_per_connector(tmp_path):
    sim = _connector(steps={"tc.reassign": {"duration": 100, "jitter": 0},
                            "tc.reassign@ums": {"duration": 50, "jitter": 0}})
    assert sim.duration(_action("tc.reassign", "ums")) == 50
    assert sim.duration(_action("tc.reassign", "ssh")) == 100


def test_a_rehearsal_plan_keeps_the_connector_each_step_stands_for(tmp_path):
    from bigbang.inventory import load_inventory

    plan = build_plan(load_inventory(copy_demo(tmp_path)), "rehearsal")
    stands_for = {s.params.get("live_connector") for s in plan.steps() if s.connector == "simulated"
                  and s.kind.startswith(("srv.", "tc.", "ws."))}
    assert {"vsphere", "xen", "winrm", "ssh", "ums"} <= stands_for
    assert all(s.connector == "simulated" for s in plan.steps() if s.kind.startswith(("srv.", "tc.", "ws.")))
