"""The test WS-Man server checked with two independent clients: pywinrm and pypsrp."""

from __future__ import annotations

import time

import pytest
import requests
import winrm
from pypsrp.exceptions import AuthenticationError as PsrpAuthenticationError
from pypsrp.exceptions import WSManFaultError as PsrpFault
from pypsrp.shell import Process, SignalCode, WinRS
from pypsrp.wsman import WSMan
from winrm.exceptions import InvalidCredentialsError, WSManFaultError
from winrm.protocol import Protocol

from tests.peers.wsman_server import wsman_http_lab, wsman_lab  # noqa: F401


def pywinrm_session(lab, host, password=None, **kw):
    return winrm.Session(lab.endpoint(host), auth=(lab.username, password or lab.password), transport="basic",
                         server_cert_validation="validate", ca_trust_path=getattr(lab, "ca_file", None) or "legacy_requests",
                         **kw)


def pypsrp_wsman(lab, host, **kw):
    https = lab.scheme == "https"
    return WSMan(host.address, port=lab.port, username=lab.username, password=kw.pop("password", lab.password),
                 ssl=https, auth="basic", cert_validation=lab.ca_file if https else False,
                 encryption="auto" if https else "never", **kw)


@pytest.fixture(scope="module")
def host(wsman_lab):
    return wsman_lab.add_host("srv-a", hostname="srv-a")


def test_pywinrm_run_cmd_exit_code_and_streams(wsman_lab, host):
    result = pywinrm_session(wsman_lab, host).run_cmd("echo hello; echo warn >&2; exit 3")
    assert (result.status_code, result.std_out, result.std_err) == (3, b"hello\n", b"warn\n")


def test_pywinrm_run_ps_gets_clixml_errors_cleaned(wsman_lab, host):
    result = pywinrm_session(wsman_lab, host).run_ps("echo \"$(cat hostname)\"; echo 'Get-Thing: not found' >&2")
    assert result.std_out == b"srv-a\n"
    assert result.std_err == b"Get-Thing: not found"
    assert host.commands_run[-1].startswith("powershell -encodedcommand ")


def test_pywinrm_wrong_password_is_rejected(wsman_lab, host):
    with pytest.raises(InvalidCredentialsError):
        pywinrm_session(wsman_lab, host, password="wrong").run_cmd("echo")


def test_pywinrm_polls_through_operation_timeouts(wsman_lab, host):
    protocol = Protocol(wsman_lab.endpoint(host), transport="basic", username=wsman_lab.username,
                        password=wsman_lab.password, ca_trust_path=wsman_lab.ca_file, operation_timeout_sec=1,
                        read_timeout_sec=5)
    shell = protocol.open_shell()
    command = protocol.run_command(shell, "sleep 2.2; echo done")
    started = time.monotonic()
    assert protocol.get_command_output(shell, command) == (b"done\n", b"", 0)
    assert time.monotonic() - started >= 2.0
    protocol.cleanup_command(shell, command)
    protocol.close_shell(shell)
    with pytest.raises(WSManFaultError) as fault:  # the shell is gone
        protocol.run_command(shell, "echo")
    assert fault.value.wsman_fault_code == 2150858843
    assert "shell was not found" in fault.value.reason


def test_pypsrp_process_exit_code_stdin_and_signal(wsman_lab, host):
    with WinRS(pypsrp_wsman(wsman_lab, host)) as shell:
        process = Process(shell, "echo", ["from", "pypsrp;", "exit", "4"])
        process.invoke()
        assert (process.rc, process.stdout, process.stderr) == (4, b"from pypsrp\n", b"")
        piped = Process(shell, "tr a-z A-Z")
        piped.begin_invoke()
        piped.send(b"upper", end=True)
        piped.end_invoke()
        assert piped.stdout == b"UPPER"
        long = Process(shell, "sleep 30")
        long.begin_invoke()
        long.signal(SignalCode.TERMINATE)
        with pytest.raises(PsrpFault):  # terminated commands are gone
            shell.receive("stdout stderr", long.id)


def test_pypsrp_operation_timeout_fault_and_polling(wsman_lab, host):
    with WinRS(pypsrp_wsman(wsman_lab, host, operation_timeout=1)) as shell:
        with pytest.raises(PsrpFault) as fault:
            process = Process(shell, "sleep 1.6; echo late")
            process.begin_invoke()
            shell.receive("stdout stderr", process.id, timeout=1)
        assert fault.value.code == 2150858793
        process.end_invoke()  # Process ignores the timeout fault and polls again
        assert (process.rc, process.stdout) == (0, b"late\n")


def test_pypsrp_wrong_password_and_untrusted_certificate(wsman_lab, host):
    with pytest.raises(PsrpAuthenticationError):
        with WinRS(pypsrp_wsman(wsman_lab, host, password="wrong")):
            pass
    untrusted = WSMan(host.address, port=wsman_lab.port, username=wsman_lab.username, password=wsman_lab.password,
                      ssl=True, auth="basic", cert_validation=True)
    with pytest.raises(requests.exceptions.SSLError):
        with WinRS(untrusted):
            pass


def test_access_denied_fault_reaches_both_clients(wsman_lab):
    denied = wsman_lab.add_host("srv-denied")
    denied.command_fault = (5, "Access is denied.")
    with pytest.raises(WSManFaultError) as fault:
        pywinrm_session(wsman_lab, denied).run_cmd("echo")
    assert fault.value.wsman_fault_code == 5 and fault.value.fault_subcode == "w:AccessDenied"
    with WinRS(pypsrp_wsman(wsman_lab, denied)) as shell:
        with pytest.raises(PsrpFault) as psrp_fault:
            Process(shell, "echo").invoke()
    assert psrp_fault.value.code == 5 and "Access is denied" in psrp_fault.value.reason


def test_plain_http_with_both_clients(wsman_http_lab):
    host = wsman_http_lab.add_host("srv-http")
    session = winrm.Session(wsman_http_lab.endpoint(host), auth=(wsman_http_lab.username, wsman_http_lab.password),
                            transport="basic")
    assert session.run_cmd("echo plain").std_out == b"plain\n"
    with WinRS(pypsrp_wsman(wsman_http_lab, host)) as shell:
        process = Process(shell, "echo plain")
        process.invoke()
        assert process.stdout == b"plain\n"


def test_powered_off_host_refuses_connections(wsman_lab):
    host = wsman_lab.add_host("srv-off")
    session = pywinrm_session(wsman_lab, host)
    assert session.run_cmd("true").status_code == 0
    wsman_lab.power_off(host)
    with pytest.raises(requests.exceptions.ConnectionError):
        pywinrm_session(wsman_lab, host).run_cmd("true")


def test_ntlm_without_message_encryption_with_both_clients(wsman_http_lab):
    host = wsman_http_lab.hosts.get("srv-ntlm") or wsman_http_lab.add_host("srv-ntlm")
    session = winrm.Session(wsman_http_lab.endpoint(host), auth=(wsman_http_lab.username, wsman_http_lab.password),
                            transport="ntlm", message_encryption="never")
    assert session.run_cmd("echo ntlm").std_out == b"ntlm\n"
    with pytest.raises(InvalidCredentialsError):
        winrm.Session(wsman_http_lab.endpoint(host), auth=(wsman_http_lab.username, "wrong"), transport="ntlm",
                      message_encryption="never").run_cmd("echo")
    for auth in ("ntlm", "negotiate"):
        wsman = WSMan(host.address, port=wsman_http_lab.port, username=wsman_http_lab.username,
                      password=wsman_http_lab.password, ssl=False, auth=auth, encryption="never")
        with WinRS(wsman) as shell:
            process = Process(shell, f"echo {auth}")
            process.invoke()
            assert process.stdout == f"{auth}\n".encode()
