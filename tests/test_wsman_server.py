"""The test WS-Man server checked with independent clients: pywinrm, pypsrp (both on pyspnego for NTLM) and Go's
masterzen/winrm with Azure/go-ntlmssp (tests/peers/winrm_go, built by scripts/setup.d/21-winrm-go.sh), which
shares no code with them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

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


# ---------------------------------------------------------------- MaxEnvelopeSize, NTLM domains, SOAP faults

BIG = 2_000_000  # bytes of output: far more than one 150 KB envelope holds
BIG_COMMAND = f"head -c {BIG} /dev/zero | tr '\\0' x"
ROOT = Path(__file__).resolve().parent.parent


def go_client(*args: str) -> dict:
    """Run the Go WinRM client (built here when missing, like the simulator)."""
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.d" / "21-winrm-go.sh")], check=True, capture_output=True,
                   timeout=600)
    binary = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bigbang" / "winrm-go" / "winrm-go"
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_receive_honours_max_envelope_size_for_pywinrm(wsman_lab):
    host = wsman_lab.add_host("srv-big")
    started = time.monotonic()
    result = pywinrm_session(wsman_lab, host).run_cmd(BIG_COMMAND)
    print(f"pywinrm: {BIG} bytes in {len(host.receive_sizes)} Receive responses, {time.monotonic() - started:.2f} s")
    assert result.status_code == 0 and result.std_out == b"x" * BIG
    assert len(host.receive_sizes) >= BIG * 4 // 3 // 153600  # split over many responses, as Windows does
    assert {limit for _, limit in host.receive_sizes} == {153600}  # pywinrm's MaxEnvelopeSize
    assert max(size for size, _ in host.receive_sizes) <= 153600


def test_receive_honours_max_envelope_size_for_the_go_client(wsman_lab):
    host = wsman_lab.add_host("srv-big-go")
    started = time.monotonic()
    out = go_client("-host", host.address, "-port", str(wsman_lab.port), "-https", "-cacert", wsman_lab.ca_file,
                    "-user", wsman_lab.username, "-password", wsman_lab.password, "-envelope", "51200",
                    "-command", BIG_COMMAND)
    print(f"go winrm: {BIG} bytes in {len(host.receive_sizes)} Receive responses, {time.monotonic() - started:.2f} s")
    assert "error" not in out, out
    assert out["exit"] == 0 and out["stdout_bytes"] == BIG
    assert out["stdout_sha256"] == hashlib.sha256(b"x" * BIG).hexdigest()
    assert {limit for _, limit in host.receive_sizes} == {51200}
    assert max(size for size, _ in host.receive_sizes) <= 51200 and len(host.receive_sizes) >= 50


def test_ntlm_accepts_the_target_name_domain_from_an_independent_client(wsman_http_lab):
    host = wsman_http_lab.hosts.get("srv-ntlm") or wsman_http_lab.add_host("srv-ntlm")
    common = ["-host", host.address, "-port", str(wsman_http_lab.port), "-ntlm", "-command", "echo go-ntlm; exit 7"]
    # A bare user name: go-ntlmssp sends the challenge's TargetName as the domain, as Windows clients do.
    out = go_client(*common, "-user", wsman_http_lab.username, "-password", wsman_http_lab.password)
    assert "error" not in out, out
    assert out["exit"] == 7 and out["stdout_bytes"] == len(b"go-ntlm\n")
    wrong = go_client(*common, "-user", wsman_http_lab.username, "-password", "wrong")
    assert "401" in wrong.get("error", "") or "invalid" in wrong.get("error", "").lower(), wrong
    # and the empty domain (pyspnego's clients with a bare user name) still works
    session = winrm.Session(wsman_http_lab.endpoint(host), auth=(wsman_http_lab.username, wsman_http_lab.password),
                            transport="ntlm", message_encryption="never")
    assert session.run_cmd("echo empty-domain").std_out == b"empty-domain\n"


def _soap_fault(response) -> dict:
    ns = {"s": "http://www.w3.org/2003/05/soap-envelope", "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
          "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"}
    root = ET.fromstring(response.content)
    fault = root.find("s:Body/s:Fault", ns)
    detail = fault.find("s:Detail/f:WSManFault", ns)
    return {"status": response.status_code, "type": response.headers["Content-Type"],
            "action": root.findtext("s:Header/a:Action", namespaces=ns),
            "code": fault.findtext("s:Code/s:Value", namespaces=ns),
            "subcode": fault.findtext("s:Code/s:Subcode/s:Value", namespaces=ns),
            "reason": fault.findtext("s:Reason/s:Text", namespaces=ns),
            "wsman_code": detail.get("Code"), "machine": detail.get("Machine")}


def test_faults_are_soap_faults_even_for_broken_requests(wsman_http_lab):
    host = wsman_http_lab.hosts.get("srv-faults") or wsman_http_lab.add_host("srv-faults")
    url = wsman_http_lab.endpoint(host)
    auth = (wsman_http_lab.username, wsman_http_lab.password)
    headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    malformed = _soap_fault(requests.post(url, data=b"<s:Envelope", auth=auth, headers=headers, timeout=10))
    assert malformed["status"] == 500 and malformed["type"].startswith("application/soap+xml")
    assert (malformed["code"], malformed["subcode"], malformed["wsman_code"]) == \
        ("s:Sender", "w:SchemaValidationError", "2150858817")
    assert malformed["action"] == "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
    envelope = ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header><a:Action>urn:nothing'
                '</a:Action><a:MessageID>uuid:1</a:MessageID></s:Header><s:Body/></s:Envelope>')
    unknown = _soap_fault(requests.post(url, data=envelope, auth=auth, headers=headers, timeout=10))
    assert unknown["subcode"] == "a:ActionNotSupported" and "urn:nothing" in unknown["reason"]
    assert unknown["action"] == "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"
    send = envelope.replace("urn:nothing", "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send")
    broken = _soap_fault(requests.post(url, data=send, auth=auth, headers=headers, timeout=10))
    assert broken["status"] == 500 and broken["code"] in ("s:Sender", "s:Receiver") and broken["machine"] == "srv-faults"


def test_a_client_that_never_finishes_its_handshake_holds_up_no_one(wsman_lab, host):
    """Each TLS handshake runs in its request thread: a client stalled mid-handshake (a lossy link, a killed
    worker) does not keep the next one from connecting."""
    import socket

    stalled = [socket.create_connection((host.address, wsman_lab.port), timeout=5) for _ in range(3)]
    try:
        stalled[0].sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
        started = time.monotonic()
        result = pywinrm_session(wsman_lab, host, operation_timeout_sec=4, read_timeout_sec=6).run_cmd("echo ok")
        assert (result.status_code, result.std_out) == (0, b"ok\n")
        assert time.monotonic() - started < 4.0
    finally:
        for sock in stalled:
            sock.close()
