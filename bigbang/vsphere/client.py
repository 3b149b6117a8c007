"""One vCenter session per run: verified TLS, login, re-login when the session expires, waits.

Every call to vCenter goes through `VcenterClient.call`, which logs in on first use, logs in
again once when vCenter answers NotAuthenticated (the session expired or an admin ended it),
and turns connection, certificate and login problems into `VcenterError` with a message an ops
lead can act on. Waits (tasks, guest IPs) block in the property collector's WaitForUpdatesEx,
never in a polling loop.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from bigbang.errors import BigBangError

WAIT_SLICE = 30  # seconds one WaitForUpdatesEx may block; the HTTP timeout must exceed it


class VcenterError(Exception):
    """A vCenter problem, explained. `transient` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient


class CertificateMismatch(ssl.SSLError):
    """The server's certificate is not the pinned one."""


class WaitTimeout(Exception):
    def __init__(self, values: dict[str, Any]):
        super().__init__("timed out")
        self.values = values


def normalise_thumbprint(value: str) -> str:
    digits = value.replace(":", "").replace(" ", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a SHA-256 thumbprint: {value!r} (64 hex digits, colons allowed)")
    return digits


def _pinned_connection(expected: str):
    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        """Checks the pinned SHA-256 thumbprint on every new connection, before any byte is sent."""

        def connect(self) -> None:
            super().connect()
            der = self.sock.getpeercert(binary_form=True)
            actual = hashlib.sha256(der or b"").hexdigest()
            if actual != expected:
                self.close()
                raise CertificateMismatch(f"certificate SHA-256 is {actual}, pinned {expected}")

    return PinnedHTTPSConnection


def fault_text(fault: Any) -> str:
    """A vSphere fault as `Kind: message`."""
    if fault is None:
        return "unknown error"
    kind = type(fault).__name__.rsplit(".", 1)[-1]
    parts = []
    for attr in ("msg", "reason", "localizedMessage", "file", "name"):
        value = getattr(fault, attr, None)
        if value and not str(value).startswith("*types.") and value not in parts:
            parts.append(str(value))
    for msg in getattr(fault, "faultMessage", None) or []:
        if getattr(msg, "message", None):
            parts.append(msg.message)
    return f"{kind}: {'; '.join(parts)}" if parts else kind


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 443
    ca_bundle: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    connect_timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class VcenterClient:
    """A logged-in vCenter session shared by all threads of one run."""

    def __init__(self, endpoint: Endpoint, credentials: Callable[[], tuple[str, str]], *, pool_size: int = 16):
        self.endpoint = endpoint
        self._credentials = credentials
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._si: Any = None
        self._content: Any = None
        self._generation = 0
        self._failure: tuple[float, VcenterError] | None = None
        self._collectors: dict[int, queue.SimpleQueue] = {}
        self._calls = 0
        self._calls_lock = threading.Lock()
        self.logins = 0

    # ------------------------------------------------------------ connecting
    @property
    def calls(self) -> int:
        """SOAP requests sent to vCenter so far (login and waits included)."""
        return self._calls

    def _ssl_context(self) -> ssl.SSLContext:
        ep = self.endpoint
        if ep.insecure or ep.thumbprint:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pinned thumbprint is checked on every connection instead
            return ctx
        return ssl.create_default_context(cafile=ep.ca_bundle) if ep.ca_bundle else ssl.create_default_context()

    def _probe(self) -> None:
        """TLS handshake with a timeout (pyVim's version discovery has none), checking the certificate."""
        ep = self.endpoint
        ctx = self._ssl_context()
        with socket.create_connection((ep.host, ep.port), timeout=ep.connect_timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=ep.host) as tls:
                if ep.thumbprint and not ep.insecure:
                    expected = normalise_thumbprint(ep.thumbprint)
                    actual = hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
                    if actual != expected:
                        raise CertificateMismatch(f"certificate SHA-256 is {actual}, pinned {expected}")

    def _open(self) -> None:
        from pyVim.connect import SmartStubAdapter

        ep = self.endpoint
        ctx = self._ssl_context()
        stub = SmartStubAdapter(host=ep.host, port=ep.port, sslContext=ctx, poolSize=self._pool_size,
                                httpConnectionTimeout=max(ep.connect_timeout, WAIT_SLICE + 15))
        if ep.thumbprint and not ep.insecure:
            stub.scheme = _pinned_connection(normalise_thumbprint(ep.thumbprint))
        invoke = stub.InvokeMethod

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._calls_lock:
                self._calls += 1
            return invoke(*args, **kwargs)

        stub.InvokeMethod = counted
        si = vim.ServiceInstance("ServiceInstance", stub)
        content = si.RetrieveContent()
        user, password = self._credentials()
        content.sessionManager.Login(user, password)  # type: ignore[union-attr,call-arg]  # pyvmomi stubs: locale is optional
        self.logins += 1
        self._si, self._content = si, content
        self._generation += 1

    def _explain(self, exc: BaseException) -> VcenterError:
        where = self.endpoint.where
        if isinstance(exc, VcenterError):
            return exc
        if isinstance(exc, BigBangError):  # e.g. the password's environment variable is not set
            return VcenterError(str(exc), transient=False)
        if isinstance(exc, CertificateMismatch):
            return VcenterError(f"vCenter {where} presented another certificate than the pinned one ({exc}); "
                                "not connecting. If vCenter's certificate was renewed, update connectors.vsphere."
                                "thumbprint", transient=False)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return VcenterError(f"vCenter {where}: certificate not trusted ({exc.verify_message or exc}); set "
                                "connectors.vsphere.ca_bundle to the CA file or pin its thumbprint", transient=False)
        if isinstance(exc, vim.fault.InvalidLogin):
            user = "?"
            try:
                user = self._credentials()[0]
            except Exception:  # noqa: BLE001 - only for the message
                pass
            return VcenterError(f"vCenter {where} rejected the login of user '{user}' (wrong user name or password)",
                                transient=False)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return VcenterError(f"vCenter {where} did not answer within {self.endpoint.connect_timeout:g} s",
                                transient=True)
        if isinstance(exc, (ConnectionError, OSError, http.client.HTTPException)):
            return VcenterError(f"cannot reach vCenter {where}: {exc}", transient=True)
        if isinstance(exc, vmodl.MethodFault):
            return VcenterError(f"vCenter {where}: {fault_text(exc)}", transient=False)
        if "is down or is not a VIM server" in str(exc):
            return VcenterError(f"cannot reach vCenter {where}: no vSphere API answers there", transient=True)
        return VcenterError(f"vCenter {where}: {exc.__class__.__name__}: {exc}", transient=False)

    def _ensure(self) -> tuple[Any, int]:
        with self._lock:
            if self._content is not None:
                return self._content, self._generation
            if self._failure is not None:
                since, error = self._failure
                # Wrong credentials or certificate stay wrong: never hammer the login (account lock-out).
                if not error.transient or time.monotonic() - since < 5.0:
                    raise error
            try:
                self._probe()
                self._open()
            except Exception as exc:  # noqa: BLE001 - every way a connection fails becomes a message
                error = self._explain(exc)
                self._failure = (time.monotonic(), error)
                raise error from None
            self._failure = None
            return self._content, self._generation

    def _relogin(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._content is None:
                return  # another thread has logged in again already
            user, password = self._credentials()
            try:
                self._content.sessionManager.Login(user, password)
            except Exception as exc:  # noqa: BLE001
                self._content = None
                raise self._explain(exc) from None
            self.logins += 1
            self._generation += 1

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(content)`, logged in; logs in again once if the session expired."""
        for attempt in (1, 2):
            content, generation = self._ensure()
            try:
                return fn(content)
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise VcenterError(f"vCenter {self.endpoint.where} ended the session again right after login",
                                       transient=True) from None
                self._relogin(generation)
            except VcenterError:
                raise
            except vmodl.MethodFault:
                raise
            except Exception as exc:  # noqa: BLE001
                raise self._explain(exc) from None
        raise AssertionError("unreachable")

    @property
    def session_key(self) -> str | None:
        content = self._content
        if content is None:
            return None
        session = content.sessionManager.currentSession
        return session.key if session else None

    def close(self) -> None:
        with self._lock:
            content, self._content = self._content, None
        if content is not None:
            try:
                content.sessionManager.Logout()
            except Exception:  # noqa: BLE001 - the session may be gone already
                pass

    # ------------------------------------------------------------ reading
    def retrieve(self, objects: Iterable[Any], props: list[str], *, kind: type | None = None) -> dict[Any, dict]:
        """Properties of the given objects: {object: {path: value}} in one round trip (plus paging)."""
        objects = list(objects)
        if not objects:
            return {}

        def run(content: Any) -> dict[Any, dict]:
            pc = content.propertyCollector
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=o, skip=False) for o in objects],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind or type(objects[0]), pathSet=props)],
            )
            return _collect(pc, spec)

        return self.call(run)

    def list_objects(self, kind: type, props: list[str], root: Any = None) -> dict[Any, dict]:
        """Every object of `kind` under `root` (the whole inventory by default) with `props`."""

        def run(content: Any) -> dict[Any, dict]:
            view = content.viewManager.CreateContainerView(root or content.rootFolder, [kind], True)
            try:
                traversal = vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)
                spec = vmodl.query.PropertyCollector.FilterSpec(
                    objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
                    propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=props)],
                )
                return _collect(content.propertyCollector, spec)
            finally:
                view.Destroy()

        return self.call(run)

    # ------------------------------------------------------------ waiting
    def _collector(self, content: Any, generation: int) -> Any:
        pool = self._collectors.setdefault(generation, queue.SimpleQueue())
        try:
            return pool.get_nowait()
        except queue.Empty:
            return content.propertyCollector.CreatePropertyCollector()

    def wait_for(self, obj: Any, props: list[str], done: Callable[[dict], bool], timeout: float) -> dict:
        """Block until `done(values)` holds for `obj`'s properties, or raise WaitTimeout after `timeout` s."""
        deadline = time.monotonic() + timeout
        values = self.retrieve([obj], props).get(obj, {})
        if done(values):
            return values

        def run(content: Any, generation: int) -> dict:
            collector = self._collector(content, generation)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=props)],
            )
            filter_ = collector.CreateFilter(spec, partialUpdates=False)
            try:
                version = ""
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeout(values)
                    options = vmodl.query.PropertyCollector.WaitOptions(
                        maxWaitSeconds=max(1, min(WAIT_SLICE, math.ceil(remaining))))
                    update = collector.WaitForUpdatesEx(version, options)
                    if update is None:
                        continue
                    version = update.version
                    for filter_set in update.filterSet or []:
                        for object_set in filter_set.objectSet or []:
                            for change in object_set.changeSet or []:
                                values[change.name] = None if change.op == "remove" else change.val
                    if done(values):
                        return values
            finally:
                try:
                    filter_.DestroyPropertyFilter()
                except Exception:  # noqa: BLE001 - the session may have ended; the collector goes with it
                    pass
                self._collectors.setdefault(generation, queue.SimpleQueue()).put(collector)

        for attempt in (1, 2):
            content, generation = self._ensure()
            try:
                return run(content, generation)
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise VcenterError("vCenter ended the session again right after login", transient=True) from None
                self._relogin(generation)
            except (WaitTimeout, VcenterError, vmodl.MethodFault):
                raise
            except Exception as exc:  # noqa: BLE001
                raise self._explain(exc) from None
        raise AssertionError("unreachable")

    def wait_task(self, task: Any, timeout: float, what: str) -> Any:
        """The task's result; VcenterError when it fails or outlasts `timeout`."""
        terminal = ("success", "error")
        try:
            values = self.wait_for(task, ["info.state", "info.error", "info.result"],
                                   lambda v: v.get("info.state") in terminal, timeout)
        except WaitTimeout:
            try:
                self.call(lambda _c: task.CancelTask())
            except Exception:  # noqa: BLE001 - not every task can be cancelled
                pass
            raise VcenterError(f"{what}: vCenter task did not finish within {timeout:g} s", transient=True) from None
        if values.get("info.state") == "error":
            raise VcenterError(f"{what}: vCenter task failed: {fault_text(values.get('info.error'))}", transient=True)
        return values.get("info.result")

    def run_task(self, start: Callable[[Any], Any], timeout: float, what: str) -> Any:
        """Start a task with `start(content)` and wait for its result."""
        try:
            task = self.call(start)
        except vmodl.MethodFault as fault:
            raise VcenterError(f"{what}: vCenter refused: {fault_text(fault)}", transient=False) from None
        return self.wait_task(task, timeout, what)


def _collect(pc: Any, spec: Any) -> dict[Any, dict]:
    out: dict[Any, dict] = {}
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        for obj in result.objects or []:
            out[obj.obj] = {p.name: p.val for p in obj.propSet or []}
        if not result.token:
            break
        result = pc.ContinueRetrievePropertiesEx(result.token)
    return out
