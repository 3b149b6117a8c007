"""One XenAPI session per run: verified TLS, login on the pool master, polled tasks, logout.

The official SDK (`XenAPI`) logs in and out and supplies the wire format; calls go through
`XenClient.call`, which every thread may use at once (each thread has its own HTTP connection,
all share one session). Logging in to a pool member answers HOST_IS_SLAVE with the master's
address: the client follows it. A session that expired (SESSION_INVALID) is renewed once. Every
connection, certificate and login problem becomes a `XenError` an ops lead can act on.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import XenAPI

from bigbang.errors import BigBangError

API_VERSION = "2.20"  # what bigbang speaks; xapi accepts any version string at login
ORIGINATOR = "bigbang"
MAX_REDIRECTS = 3
NULL_REF = "OpaqueRef:NULL"


class XenError(Exception):
    """A XenAPI problem, explained. `transient` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool = False, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.code = code


class TaskTimeout(XenError):
    pass


# Failures where waiting and trying again may help (a busy host, a lock held by another task).
TRANSIENT_CODES = frozenset({"OTHER_OPERATION_IN_PROGRESS", "HOST_OFFLINE", "HOST_NOT_LIVE", "TOO_BUSY",
                             "SR_BACKEND_FAILURE_46", "VDI_IN_USE", "INTERNAL_ERROR"})


def failure_text(details: Any) -> str:
    """XenAPI's ErrorDescription as `CODE: arg, arg`."""
    parts = [str(p) for p in (details or ["unknown error"])]
    return parts[0] + (f": {', '.join(p for p in parts[1:] if p)}" if any(parts[1:]) else "")


def failure_code(exc: BaseException) -> str | None:
    details = getattr(exc, "details", None)
    return str(details[0]) if details else None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 443
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/"


class _Transport(xmlrpc.client.SafeTransport):
    """HTTPS with our TLS context, a socket timeout, and a request counter."""

    def __init__(self, context: ssl.SSLContext, timeout: float, count: Callable[[], None]):
        super().__init__(context=context)
        self._timeout = timeout
        self._count = count

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        conn = super().make_connection(host)
        conn.timeout = self._timeout
        return conn

    def request(self, host: Any, handler: Any, request_body: Any, verbose: bool = False) -> Any:
        self._count()
        return super().request(host, handler, request_body, verbose)


_VALUE = re.compile(r"^\s*<value>(.*)</value>\s*$", re.S)


def task_result(raw: str) -> str:
    """A task's result is XML-RPC text, e.g. `<value>OpaqueRef:…</value>`; the value inside."""
    match = _VALUE.match(raw or "")
    return match.group(1) if match else (raw or "")


class XenClient:
    """A logged-in XenAPI session on the pool master, shared by all threads of one run."""

    def __init__(self, endpoint: Endpoint, credentials: Callable[[], tuple[str, str]], *,
                 poll_interval: float = 2.0):
        self.endpoint = endpoint  # the address given; `master` is where the session lives
        self.master = endpoint
        self._credentials = credentials
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._local = threading.local()
        self._session_ref: str | None = None
        self._login_proxy: Any = None
        self._generation = 0
        self._failure: tuple[float, XenError] | None = None
        self._calls = 0
        self._calls_lock = threading.Lock()
        self.logins = 0
        self.redirects = 0

    # ------------------------------------------------------------ connecting
    @property
    def calls(self) -> int:
        """XML-RPC requests sent so far (login, logout and task polls included)."""
        return self._calls

    def _count(self) -> None:
        with self._calls_lock:
            self._calls += 1

    def _ssl_context(self) -> ssl.SSLContext:
        ep = self.endpoint
        if ep.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=ep.ca_file) if ep.ca_file else ssl.create_default_context()

    def _new_proxy(self, endpoint: Endpoint) -> Any:
        transport = _Transport(self._ssl_context(), endpoint.connect_timeout, self._count)
        return XenAPI.Session(endpoint.url, transport=transport)

    def _proxy(self, generation: int) -> Any:
        """This thread's connection to the master (a new one after a redirect or re-login)."""
        local = self._local
        if getattr(local, "generation", None) != generation:
            local.proxy = self._new_proxy(self.master)
            local.generation = generation
        return local.proxy

    def _login(self) -> None:
        user, password = self._credentials()
        target = self.master
        for _hop in range(MAX_REDIRECTS + 1):
            proxy = self._new_proxy(target)
            try:
                proxy.login_with_password(user, password, API_VERSION, ORIGINATOR)
            except XenAPI.Failure as exc:
                if failure_code(exc) == "HOST_IS_SLAVE" and len(exc.details) > 1:
                    # Only the pool master takes logins; the member names it.
                    target = replace(target, host=str(exc.details[1]))
                    self.redirects += 1
                    continue
                raise
            self.logins += 1
            self.master = target
            self._login_proxy = proxy
            self._session_ref = proxy.handle
            self._generation += 1
            return
        raise XenError(f"XenAPI {self.endpoint.where}: more than {MAX_REDIRECTS} pool-master redirects "
                       f"(last: {target.where}); is the pool electing a new master?", transient=True)

    def _explain(self, exc: BaseException) -> XenError:
        where = self.master.where
        if isinstance(exc, XenError):
            return exc
        if isinstance(exc, BigBangError):  # e.g. the password's environment variable is not set
            return XenError(str(exc), transient=False)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return XenError(f"XenAPI {where}: certificate not trusted ({exc.verify_message or exc}); set "
                            "connectors.xen.ca_file to the CA (or the host's own certificate) file", transient=False)
        if isinstance(exc, XenAPI.Failure):
            code = failure_code(exc)
            if code == "SESSION_AUTHENTICATION_FAILED":
                user = "?"
                try:
                    user = self._credentials()[0]
                except Exception:  # noqa: BLE001 - only for the message
                    pass
                return XenError(f"XenAPI {where} rejected the login of user '{user}' (wrong user name or "
                                "password)", transient=False, code=code)
            return XenError(f"XenAPI {where}: {failure_text(exc.details)}", transient=code in TRANSIENT_CODES,
                            code=code)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return XenError(f"XenAPI {where} did not answer within {self.master.connect_timeout:g} s",
                            transient=True)
        if isinstance(exc, ssl.SSLError):
            return XenError(f"XenAPI {where}: TLS failed: {exc}", transient=True)
        if isinstance(exc, (ConnectionError, OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)):
            return XenError(f"cannot reach XenAPI {where}: {exc}", transient=True)
        if isinstance(exc, xmlrpc.client.Fault):
            return XenError(f"XenAPI {where}: {exc.faultString}", transient=False)
        return XenError(f"XenAPI {where}: {exc.__class__.__name__}: {exc}", transient=False)

    def _ensure(self) -> tuple[str, int]:
        with self._lock:
            if self._session_ref is not None:
                return self._session_ref, self._generation
            if self._failure is not None:
                since, error = self._failure
                # A wrong password or certificate stays wrong: never hammer the login (account lock-out).
                if not error.transient or time.monotonic() - since < 5.0:
                    raise error
            try:
                self._login()
            except Exception as exc:  # noqa: BLE001 - every way a login fails becomes a message
                error = self._explain(exc)
                self._failure = (time.monotonic(), error)
                raise error from None
            self._failure = None
            assert self._session_ref is not None
            return self._session_ref, self._generation

    def _expired(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._session_ref = None  # the next _ensure logs in again

    def call(self, method: str, *args: Any) -> Any:
        """`method(session, *args)` on the master, e.g. call("VM.get_record", ref); raises XenAPI.Failure."""
        for attempt in (1, 2):
            ref, generation = self._ensure()
            proxy = self._proxy(generation)
            try:
                # The SDK's dispatcher would log in again per thread; send on the shared session instead.
                response = getattr(proxy, method)(ref, *args)
            except Exception as exc:  # noqa: BLE001
                raise self._explain(exc) from None
            if not isinstance(response, dict) or "Status" not in response:
                raise XenError(f"XenAPI {self.master.where}: {method} answered without a Status", transient=True)
            if response["Status"] == "Success":
                return response.get("Value")
            details = response.get("ErrorDescription") or ["unknown error"]
            if details[0] == "SESSION_INVALID" and attempt == 1:
                self._expired(generation)
                continue
            raise XenAPI.Failure(details)
        raise XenError(f"XenAPI {self.master.where} ended the session again right after login", transient=True)

    def check(self, method: str, *args: Any, what: str) -> Any:
        """`call`, with a XenAPI failure explained as a XenError naming `what`."""
        try:
            return self.call(method, *args)
        except XenAPI.Failure as exc:
            code = failure_code(exc)
            raise XenError(f"{what}: XenAPI refused: {failure_text(exc.details)}",
                           transient=code in TRANSIENT_CODES, code=code) from None

    def close(self) -> None:
        """Log out (always: xapi keeps a bounded number of sessions per user)."""
        with self._lock:
            proxy, self._login_proxy = self._login_proxy, None
            self._session_ref = None
            self._generation += 1
        if proxy is not None:
            try:
                proxy.xenapi.session.logout()
            except Exception:  # noqa: BLE001 - the session or host may be gone already
                pass

    # ------------------------------------------------------------ tasks
    def run_task(self, method: str, *args: Any, timeout: float, what: str) -> str:
        """Start `Async.<method>`, poll its task until it ends, and return its result (a ref or '')."""
        task = self.check(f"Async.{method}", *args, what=what)
        try:
            return self.wait_task(task, timeout, what)
        finally:
            try:
                self.call("task.destroy", task)
            except Exception:  # noqa: BLE001 - a finished task is removed by xapi eventually anyway
                pass

    def wait_task(self, task: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        delay = min(0.05, self.poll_interval)
        while True:
            record = self.check("task.get_record", task, what=what)
            status = record.get("status")
            if status == "success":
                return task_result(record.get("result") or "")
            if status in ("failure", "cancelled"):
                info = record.get("error_info") or [status.upper()]
                code = str(info[0])
                raise XenError(f"{what}: XenAPI task failed: {failure_text(info)}",
                               transient=code in TRANSIENT_CODES, code=code)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    self.call("task.cancel", task)
                except Exception:  # noqa: BLE001 - not every task can be cancelled
                    pass
                raise TaskTimeout(f"{what}: XenAPI task did not finish within {timeout:g} s", transient=True)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_interval)  # quick first polls, then every poll_interval
