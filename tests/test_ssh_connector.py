"""The ssh connector against real OpenSSH sshd hosts (tests/peers/sshd.py)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from bigbang.connectors.base import Action, ConnectorContext
from bigbang.connectors.ssh import SshSettings, create
from bigbang.errors import ConfigError
from tests.peers import sshd
from tests.peers.sshd import new_keypair, thin_client_params

thin_client_lab = sshd.thin_client_lab  # the lab fixture (a name the tests' arguments shadow, not an unused import)

CONTEXT = ConnectorContext(run_id="test", inventory=None, resolve_secret=lambda ref: "")


def connector(lab, **overrides):
    return create(SshSettings(**lab.ssh_settings(**overrides)), CONTEXT)


def act(conn, host, kind, attempt=1, **params):
    return conn.run(Action(f"{host.name}:{kind}", kind, host.name, attempt, thin_client_params(host, **params)))


def test_reassign_writes_profile_reboots_and_verifies(thin_client_lab):
    lab = thin_client_lab
    hosts = lab.add_hosts(4, prefix="re")
    conn = connector(lab)
    try:
        outcomes = {}
        threads = [threading.Thread(target=lambda h=h: outcomes.__setitem__(h.name, act(conn, h, "tc.reassign")))
                   for h in hosts]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for host in hosts:
            outcome = outcomes[host.name]
            assert outcome.ok, outcome.message
            assert outcome.changed
            assert outcome.facts["substeps"] == ["profile written", "profile applied", "rebooted"]
            assert host.boots == 1
            assert host.running_hostname == f"hst-001-{host.name}"
            assert host.read("etc/thinclient/firmware.version") == "12.6.1"
            profile = host.read("var/lib/thinclient/active.conf")
            assert "storefront_url = https://storefront.example.dk/Citrix/Store" in profile
            assert "location = HST-001" in profile and "keyboard = da" in profile
            json.dumps(dict(outcome.facts))  # facts go to the ledger as JSON

            verified = act(conn, host, "tc.verify")
            assert verified.ok, verified.message
            assert verified.facts["found"]["hostname"] == f"hst-001-{host.name}"
            assert verified.facts["expected"]["profile"] == "igel-citrix-2026"
            assert verified.facts["mismatches"] == []

        again = act(conn, hosts[0], "tc.reassign", attempt=1)
        assert again.ok and not again.changed and hosts[0].boots == 1  # nothing differs: no second reboot
    finally:
        conn.close()


def test_verify_reports_expected_and_found_when_the_device_differs(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="vf")[0]
    conn = connector(thin_client_lab)
    try:
        outcome = act(conn, host, "tc.verify")
        assert not outcome.ok and not outcome.transient
        assert outcome.facts["expected"]["hostname"] == f"hst-001-{host.name}"
        assert outcome.facts["found"]["hostname"] == host.name
        assert any(m.startswith("hostname: expected") for m in outcome.facts["mismatches"])
        assert "hostname" in outcome.message
    finally:
        conn.close()


def test_resume_after_partial_work_only_reboots(thin_client_lab):
    """A crash after the profile was written and applied: the retry does not write again, only reboots."""
    host = thin_client_lab.add_hosts(1, prefix="rs")[0]
    conn = connector(thin_client_lab)
    try:
        params = thin_client_params(host)
        expected, profile = conn.expected(params)
        import base64
        variables = conn._variables(params, profile=profile, profile_sha256=expected["profile_sha256"],
                                    profile_b64=base64.b64encode(profile.encode()).decode())
        conn._step(host.address, "tc_write_profile.sh.j2", variables)
        conn._step(host.address, "tc_apply.sh.j2", variables)
        written_at = (host.root / "etc/thinclient/profile.conf").stat().st_mtime_ns

        outcome = act(conn, host, "tc.reassign", attempt=2)
        assert outcome.ok, outcome.message
        assert outcome.facts["substeps"] == ["rebooted"]
        assert (host.root / "etc/thinclient/profile.conf").stat().st_mtime_ns == written_at
        assert host.running_hostname == params["hostname"]
    finally:
        conn.close()


def test_host_dropping_mid_command_is_transient_and_the_retry_succeeds(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="dr")[0]
    host.arm_drop_mid_command()
    conn = connector(thin_client_lab)
    try:
        first = act(conn, host, "tc.reassign")
        assert not first.ok and first.transient
        assert "dropped" in first.message or "lost" in first.message
        deadline = time.monotonic() + 10
        second = act(conn, host, "tc.reassign", attempt=2)
        while not second.ok and second.transient and time.monotonic() < deadline:  # the host is still booting
            time.sleep(0.2)
            second = act(conn, host, "tc.reassign", attempt=3)
        assert second.ok, second.message
        assert host.running_hostname == f"hst-001-{host.name}"
    finally:
        conn.close()


def test_host_that_never_comes_back_fails_after_the_reboot_timeout(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="nr", never_returns=True)[0]
    conn = connector(thin_client_lab, reboot_timeout=2.5)
    try:
        started = time.monotonic()
        outcome = act(conn, host, "tc.reassign")
        assert 2.0 < time.monotonic() - started < 10
        assert not outcome.ok and not outcome.transient
        assert "did not come back within 2.5 s" in outcome.message
    finally:
        conn.close()


def test_unknown_host_key_is_refused_by_default(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="uk", known=False)[0]
    conn = connector(thin_client_lab)
    try:
        outcome = act(conn, host, "tc.verify")
        assert not outcome.ok and not outcome.transient
        assert "unknown host key" in outcome.message and "SHA256:" in outcome.message
        assert host.boots == 0 and host.read("var/lib/thinclient/active.conf") is None
    finally:
        conn.close()


def test_trust_on_first_use_records_the_fingerprint(thin_client_lab, tmp_path):
    lab = thin_client_lab
    host = lab.add_hosts(1, prefix="tf", known=False)[0]
    known_hosts = tmp_path / "known_hosts"
    conn = connector(lab, known_hosts=str(known_hosts), trust_on_first_use=True)
    try:
        outcome = act(conn, host, "tc.verify")
        assert outcome.facts["found"]["hostname"] == host.name  # connected (verify fails: not reassigned)
        line = known_hosts.read_text().strip()
        assert line == f"[{host.address}]:{lab.port} {host.public_key}"
    finally:
        conn.close()
    # the recorded key is now required: a fresh connector without TOFU accepts it
    strict = connector(lab, known_hosts=str(known_hosts))
    try:
        assert act(strict, host, "tc.verify").facts["found"]["hostname"] == host.name
    finally:
        strict.close()


def test_changed_host_key_is_refused_as_a_mismatch(thin_client_lab, tmp_path):
    lab = thin_client_lab
    host = lab.add_hosts(1, prefix="mm", known=False)[0]
    _, other = new_keypair()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{host.address}]:{lab.port} {other}\n")
    conn = connector(lab, known_hosts=str(known_hosts), trust_on_first_use=True)  # TOFU never overrides a mismatch
    try:
        outcome = act(conn, host, "tc.verify")
        assert not outcome.ok and not outcome.transient
        assert "HOST KEY MISMATCH" in outcome.message
        assert known_hosts.read_text().count("\n") == 1
    finally:
        conn.close()


def test_wrong_client_key_is_refused(thin_client_lab, tmp_path):
    host = thin_client_lab.add_hosts(1, prefix="wk")[0]
    private, _ = new_keypair()
    key = tmp_path / "other_key"
    key.write_bytes(private)
    conn = connector(thin_client_lab, key_file=str(key))
    try:
        outcome = act(conn, host, "tc.verify")
        assert not outcome.ok and not outcome.transient
        assert "refused the key for user bbpeer" in outcome.message
    finally:
        conn.close()


def test_unreachable_host_is_transient(thin_client_lab):
    conn = connector(thin_client_lab, connect_timeout=1)
    try:
        outcome = conn.run(Action("x:tc.verify", "tc.verify", "x", 1, {"address": "127.0.250.250",
                                                                         "hostname": "x", "target_profile": "p",
                                                                         "location": "L"}))
        assert not outcome.ok and outcome.transient
        assert "cannot connect to 127.0.250.250" in outcome.message
    finally:
        conn.close()


def test_failing_command_reports_exit_code_and_stderr_tail(thin_client_lab, tmp_path):
    host = thin_client_lab.add_hosts(1, prefix="fc")[0]
    (tmp_path / "tc_apply.sh.j2").write_text("echo 'flash: not enough space for {{ firmware }}' >&2\nexit 7\n")
    conn = connector(thin_client_lab, commands_dir=str(tmp_path))
    try:
        outcome = act(conn, host, "tc.reassign")
        assert not outcome.ok and not outcome.transient
        assert outcome.message.startswith(f"tc_apply exited 7 on {host.address}")
        assert "flash: not enough space for 12.6.1" in outcome.message
        assert outcome.facts["command"]["exit_code"] == 7
        assert outcome.facts["command"]["stderr_tail"] == "flash: not enough space for 12.6.1"
        assert outcome.facts["substeps"] == ["profile written"]
        result = conn.execute(host.address, "echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert result.summary()["stderr_tail"] == "err"
    finally:
        conn.close()


def test_one_connection_per_host_with_nodelay_and_bounded_concurrency(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="cc")[0]
    conn = connector(thin_client_lab, max_parallel=2)
    try:
        conn.execute(host.address, "true")
        transport = conn.ssh._transports[host.address]
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        started = time.monotonic()
        threads = [threading.Thread(target=conn.execute, args=(host.address, "sleep 0.4")) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        elapsed = time.monotonic() - started
        assert elapsed >= 1.2  # 6 commands, 2 at a time, 0.4 s each
        assert conn.ssh._transports[host.address] is transport  # all of them over the one connection
    finally:
        conn.close()


def test_missing_key_file_and_known_hosts_are_clear_configuration_errors(thin_client_lab, tmp_path):
    with pytest.raises(ConfigError, match="key_file .* does not exist"):
        connector(thin_client_lab, key_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="known_hosts file .* does not exist"):
        connector(thin_client_lab, known_hosts=str(tmp_path / "none"))


def test_key_from_a_real_ssh_agent(thin_client_lab, tmp_path, monkeypatch):
    import subprocess

    host = thin_client_lab.add_hosts(1, prefix="ag")[0]
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(ConfigError, match="SSH agent offers no keys"):
        connector(thin_client_lab, key_file=None)
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {"SSH_AUTH_SOCK": str(socket_path), "PATH": "/usr/bin:/bin"}
        subprocess.run(["ssh-add", str(thin_client_lab.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        conn = connector(thin_client_lab, key_file=None)
        try:
            outcome = act(conn, host, "tc.verify")
            assert outcome.facts["found"]["hostname"] == host.name  # logged in with the agent's key
        finally:
            conn.close()
    finally:
        agent.terminate()
        agent.wait()


def test_passphrase_protected_key_by_reference(thin_client_lab, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization

    from bigbang.secrets import resolve

    host = thin_client_lab.add_hosts(1, prefix="pp")[0]
    key = serialization.load_ssh_private_key(thin_client_lab.client_key.read_bytes(), password=None)
    protected = tmp_path / "protected_key"
    protected.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                            serialization.BestAvailableEncryption(b"correct horse")))
    settings = SshSettings(**thin_client_lab.ssh_settings(key_file=str(protected),
                                                          key_passphrase={"env": "BB_TEST_KEY_PASSPHRASE"}))
    context = ConnectorContext(run_id="test", inventory=None, resolve_secret=resolve)
    monkeypatch.setenv("BB_TEST_KEY_PASSPHRASE", "wrong")
    with pytest.raises(ConfigError, match="cannot load SSH key_file"):
        create(settings, context)
    monkeypatch.setenv("BB_TEST_KEY_PASSPHRASE", "correct horse")
    conn = create(settings, context)
    try:
        assert act(conn, host, "tc.verify").facts["found"]["hostname"] == host.name
    finally:
        conn.close()


def test_reassign_changes_in_one_session_and_reconnects_once_after_the_reboot(thin_client_lab):
    """What differs runs in one session; the reboot wait waits for the connection to end instead of polling a
    device that is still up: one connection before the reboot, one after, and four sessions in all."""
    host = thin_client_lab.add_hosts(1, prefix="os")[0]
    conn = connector(thin_client_lab)
    connected, sessions = [], []
    real_connect, real_run = conn.ssh._connect, conn.ssh._run

    def counting_connect(address):
        transport = real_connect(address)
        connected.append(address)
        return transport

    def counting_run(address, command, name, timeout, pipeline):
        result = real_run(address, command, name, timeout, pipeline)
        sessions.append(name)
        return result

    conn.ssh._connect, conn.ssh._run = counting_connect, counting_run
    try:
        outcome = act(conn, host, "tc.reassign")
        assert outcome.ok, outcome.message
        assert outcome.facts["substeps"] == ["profile written", "profile applied", "rebooted"]
        assert host.boots == 1
        assert sessions == ["tc_state", "tc_write_profile+tc_apply+tc_reboot", "tc_state"]
        assert len(connected) == 2
        assert act(conn, host, "tc.verify").ok
        assert len(connected) == 2  # the verification reuses the connection made after the reboot
    finally:
        conn.close()


def test_run_scripts_stops_at_the_first_failure_and_reports_each_as_it_finishes(thin_client_lab):
    host = thin_client_lab.add_hosts(1, prefix="rp")[0]
    conn = connector(thin_client_lab)
    heard = []
    try:
        results = conn.ssh.run_scripts(host.address, [
            ("one", "echo one=1\nexit 0\necho never=1"),  # exit ends its own subshell only
            ("two", "echo '__bigbang_done_0123456789abcdef 1 0'\necho two=2\n# a last line that is a comment"),
            ("three", "set -e\necho three=3\nfalse\necho never=3\n"),
            ("four", "echo four=4 > /dev/stderr\n"),
        ], on_done=heard.append)
        assert [r.name for r in results] == ["one", "two", "three"] == [r.name for r in heard]
        assert [r.exit_code for r in results] == [0, 0, 1]
        assert results[0].facts == {"one": "1"}
        assert results[1].facts == {"two": "2"}  # a marker with another nonce is only output
        assert results[2].facts == {"three": "3"}
        assert not results[2].ok and "never" not in results[2].stdout
    finally:
        conn.close()


def test_a_host_that_goes_away_right_after_the_last_script_finished_is_done(thin_client_lab):
    """A reboot a moment after the last script can cut the session before its exit status arrives: every
    script reported its success, so the session counts as done (not as a transient failure to retry)."""
    host = thin_client_lab.add_hosts(1, prefix="gw")[0]
    conn = connector(thin_client_lab)
    try:  # the background job keeps the session's output open, then kills the session's sshd process
        results = conn.ssh.run_scripts(host.address, [("one", "echo one=1"),
                                                      ("two", "echo two=2\n(sleep 0.5; kill -9 $PPID) &\n")])
        assert [(r.name, r.exit_code) for r in results] == [("one", 0), ("two", 0)]
        assert results[1].facts == {"two": "2"}
        assert host.address not in conn.ssh._transports  # the dropped connection is not kept
    finally:
        conn.close()
