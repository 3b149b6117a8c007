"""The XenAPI test pool held against a client that is not bigbang's: xen-bridge (PyPI `xen-bridge`).

If the test pool only pleased our own connector it would prove little; an independent client,
generated from the XenAPI reference, must be able to log in, clone, follow a task and read the
errors XenAPI defines.
"""

from __future__ import annotations

import ssl
import time

import pytest
import xenbridge

from tests.peers.xenapi_server import PASSWORD, USER, xapi  # noqa: F401


def connect(pool, address: str | None = None, password: str = PASSWORD) -> xenbridge.XenConnection:
    context = ssl.create_default_context(cafile=pool.ca_file)
    return xenbridge.XenConnection(f"https://{address or pool.master_address}:{pool.port}/", USER, password,
                                   context=context)


def test_login_clone_and_read_back(xapi):
    conn = connect(xapi)
    try:
        template = conn.VM.get_by_name_label("tpl-rhel9")[0]
        assert template.is_a_template is True
        clone = template.clone("indep-sync01")
        assert clone.name_label == "indep-sync01" and clone.is_a_template is True  # a template's clone is one
        record = clone.get_record()
        assert record["VCPUs_max"] == "2" and len(record["VBDs"]) == 1  # int64 travels as a string
        assert xapi.records("VM")[clone.ref]["name_label"] == "indep-sync01"
    finally:
        conn.Session.logout()


def test_an_async_clone_is_a_task_that_finishes(xapi):
    conn = connect(xapi)
    try:
        template = conn.VM.get_by_name_label("tpl-win2022")[0]
        task = xenbridge.Task(conn, conn.call("Async.VM.clone", template.ref, "indep-async01"))
        assert task.status.value in ("pending", "success")  # finishes after the pool's task_delay
        deadline = time.monotonic() + 5
        while task.status.value == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert task.status.value == "success"
        result = task.result
        assert result.startswith("<value>OpaqueRef:") and result.endswith("</value>")
        ref = result[len("<value>"):-len("</value>")]
        assert xenbridge.VM(conn, ref).name_label == "indep-async01"
        assert task.finished.year >= 2024  # a XenAPI dateTime
        failed = xenbridge.Task(conn, conn.call("Async.VM.start", template.ref, False, False))
        while failed.status.value == "pending":
            time.sleep(0.02)
        assert failed.status.value == "failure" and failed.error_info == ["VM_IS_TEMPLATE", template.ref]
    finally:
        conn.Session.logout()


def test_errors_are_xenapi_error_descriptions(xapi):
    conn = connect(xapi)
    with pytest.raises(xenbridge.XenError) as invalid:
        xenbridge.VM(conn, "OpaqueRef:no-such-vm").get_record()
    assert invalid.value.error_code == "HANDLE_INVALID" and invalid.value.error_args == ["VM", "OpaqueRef:no-such-vm"]
    with pytest.raises(xenbridge.XenError) as unknown:
        conn.call("VM.no_such_call")
    assert unknown.value.error_code == "MESSAGE_METHOD_UNKNOWN"
    conn.Session.logout()
    with pytest.raises(xenbridge.XenError) as gone:
        conn.VM.get_all()
    assert gone.value.error_code == "SESSION_INVALID"


def test_logins_the_pool_refuses(xapi):
    with pytest.raises(xenbridge.XenError) as slave:
        connect(xapi, xapi.member_address)
    assert slave.value.error_code == "HOST_IS_SLAVE" and slave.value.error_args == [xapi.master_address]
    with pytest.raises(xenbridge.XenError) as wrong:
        connect(xapi, password="nope")
    assert wrong.value.error_code == "SESSION_AUTHENTICATION_FAILED"
    with pytest.raises(ssl.SSLCertVerificationError):
        xenbridge.XenConnection(f"https://{xapi.master_address}:{xapi.port}/", USER, PASSWORD)
