"""One contract every connector satisfies: the simulated one, ssh (real sshd) and winrm (test WS-Man server).

The runner relies on exactly this: `run` returns an Outcome and never raises for a device's
failure, facts are JSON values, a finished step run again changes nothing, verify steps report
the facts defect tracking reads, and `close` is safe to call twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from bigbang.connectors import CONNECTORS, Connector
from bigbang.connectors.base import Action, ConnectorContext, Outcome
from bigbang.inventory.model import Rehearsal
from bigbang.store.ledger import Ledger
from bigbang.secrets import resolve
from tests.peers.sshd import thin_client_lab, thin_client_params  # noqa: F401
from tests.peers.wsman_server import COMMANDS_DIR, workstation_params, wsman_lab  # noqa: F401

VERIFY_FACTS = {"tc.verify": {"profile": "target_profile", "hostname": "hostname", "firmware": "firmware"},
                "ws.verify": {"image_version": "image_version", "hostname": "hostname", "domain": "domain"}}


@dataclass
class Subject:
    connector: Connector
    name: str
    device_runs: list[tuple[str, list[str], dict[str, Any]]]  # (target, step kinds in order, params)
    failing: Action  # an attempt that must fail for a device reason


def _simulated(request, tmp_path) -> Subject:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    request.addfinalizer(ledger.close)
    settings = Rehearsal(compression=1e9, inject=[{"target": "broken-tc", "message": "SSH connection refused"}])
    context = ConnectorContext(run_id="contract", inventory=None, resolve_secret=resolve, state=ledger,
                               options={"zero_duration": True})
    conn = CONNECTORS["simulated"].create(settings, context)
    tc = {"location": "HST-001", "target_profile": "igel-citrix-2026", "hostname": "hst-001-tc-01",
          "firmware": "12.6.1"}
    ws = {"location": "HST-001", "image_version": "10.0.26100.2314", "hostname": "hst-ws-1", "domain": "ad.example.dk"}
    return Subject(conn, "simulated", [("tc-1", ["tc.reassign", "tc.verify"], tc),
                                       ("ws-1", ["ws.prestage", "ws.image", "ws.verify"], ws)],
                   Action("broken-tc:tc.reassign", "tc.reassign", "broken-tc", 1, tc))


def _ssh(request, tmp_path) -> Subject:
    lab = request.getfixturevalue("thin_client_lab")
    host = lab.add_hosts(1, prefix="ct")[0]
    conn = CONNECTORS["ssh"].create(CONNECTORS["ssh"].settings_model(**lab.ssh_settings()),
                                    ConnectorContext(run_id="contract", inventory=None, resolve_secret=resolve))
    params = thin_client_params(host)
    return Subject(conn, "ssh", [(host.name, ["tc.reassign", "tc.verify"], params)],
                   Action("gone:tc.reassign", "tc.reassign", "gone", 1, {**params, "address": "127.0.251.251"}))


def _winrm(request, tmp_path) -> Subject:
    lab = request.getfixturevalue("wsman_lab")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("BB_CONTRACT_WINRM_PASSWORD", lab.password)
    server = lab.hosts.get("mdt-contract") or lab.add_host("mdt-contract")
    host = lab.add_host(f"ct-{len(lab.hosts)}", mac=f"00:1a:2b:99:00:{len(lab.hosts):02x}", powered=False,
                        packages="Microsoft 365 Apps 2411|Citrix Workspace 2409")
    settings = CONNECTORS["winrm"].settings_model(
        username=lab.username, password={"env": "BB_CONTRACT_WINRM_PASSWORD"}, transport="basic", port=lab.port,
        ca_bundle=lab.ca_file, deployment_server=server.address, operation_timeout=5, read_timeout=10,
        image_poll=0.1, image_timeout=8, wol_port=lab.wol_port, commands_dir=str(COMMANDS_DIR))
    conn = CONNECTORS["winrm"].create(settings, ConnectorContext(run_id="contract", inventory=None,
                                                                 resolve_secret=resolve))
    params = workstation_params(host)
    return Subject(conn, "winrm", [(host.name, ["ws.prestage", "ws.image", "ws.verify"], params)],
                   Action("gone:ws.verify", "ws.verify", "gone", 1, {**params, "address": "127.0.251.252"}))


SUBJECTS: dict[str, Callable[..., Subject]] = {"simulated": _simulated, "ssh": _ssh, "winrm": _winrm}


@pytest.fixture(params=sorted(SUBJECTS))
def subject(request, tmp_path):
    made = SUBJECTS[request.param](request, tmp_path)
    yield made
    made.connector.close()


def _run(subject: Subject, target: str, kind: str, params: dict, attempt: int = 1) -> Outcome:
    outcome = subject.connector.run(Action(f"{target}:{kind}", kind, target, attempt, params))
    assert isinstance(outcome, Outcome)
    json.dumps(dict(outcome.facts))
    return outcome


def test_is_a_registered_connector(subject):
    assert isinstance(subject.connector, Connector)
    assert subject.connector.name == subject.name
    kinds = {k for _, steps, _ in subject.device_runs for k in steps}
    assert kinds <= CONNECTORS[subject.name].step_kinds


def test_runs_each_device_through_its_steps_and_then_changes_nothing(subject):
    for target, kinds, params in subject.device_runs:
        for kind in kinds:
            outcome = _run(subject, target, kind, params)
            assert outcome.ok, f"{subject.name} {kind}: {outcome.message}"
            assert outcome.message
        for kind in kinds:
            again = _run(subject, target, kind, params, attempt=1)
            assert again.ok and not again.changed, f"{subject.name} {kind} ran again: {again.message}"


def test_verify_reports_what_defect_tracking_reads(subject):
    for target, kinds, params in subject.device_runs:
        for kind in kinds:
            outcome = _run(subject, target, kind, params)
        facts = VERIFY_FACTS[kinds[-1]]
        for fact, param in facts.items():
            assert str(outcome.facts[fact]).lower() == str(params[param]).lower(), (subject.name, fact)


def test_a_failing_device_is_an_outcome_not_an_exception(subject):
    outcome = _run(subject, subject.failing.target, subject.failing.kind, dict(subject.failing.params))
    assert not outcome.ok
    assert outcome.transient  # unreachable or refused: worth the runner's retry
    assert outcome.message


def test_close_twice_is_safe(subject):
    subject.connector.close()
    subject.connector.close()
