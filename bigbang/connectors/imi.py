"""Transport to IGEL UMS's IMI REST API v3: one HTTP session, login, batching, TLS.

This module knows HTTP and IMI's conventions (the `/umsapi/v3/` prefix, the JSESSIONID
cookie, list bodies of API objects) but nothing about what a reassignment is; that is
`bigbang.connectors.ums`.

- One login per `ImiSession` (= per connector = per run). A 401 later means the session
  expired: exactly one thread logs in again (the others wait for it) and every request
  that got the 401 is sent once more.
- At most `max_in_flight` requests at a time (a semaphore), however many device threads
  the runner has; the connection pool is sized to match.
- `MicroBatcher`: the command, move and assign endpoints take a JSON list. Device threads
  that ask for the same call within `batch_window` seconds share one request.
- Certificates are verified (system store, or `ca_file`) unless `insecure`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from bigbang.errors import ConnectorError


@dataclass(frozen=True)
class ImiEndpoint:
    """Where UMS is and how to talk to it."""

    host: str
    port: int
    username: str
    password: str
    verify: bool | str  # True (system CAs), a CA file, or False (insecure)
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    max_in_flight: int = 8

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}/umsapi/v3/"


class ImiNotFound(ConnectorError):
    """IMI answered 404: the object (thin client, profile, directory) does not exist."""


class ImiSession:
    """A logged-in IMI session shared by every device thread of one run."""

    def __init__(self, endpoint: ImiEndpoint):
        self.endpoint = endpoint
        self.http = requests.Session()
        self.http.headers.update({"Accept": "application/json"})
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=endpoint.max_in_flight)
        self.http.mount("https://", adapter)
        self._slots = threading.BoundedSemaphore(endpoint.max_in_flight)
        self._login_lock = threading.Lock()
        self._generation = 0  # increases with each successful login
        self._logged_in = False
        self.logins = 0
        self.requests: Counter[str] = Counter()  # "METHOD path" -> count, for tests and the bench
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------ session
    def ensure_login(self) -> int:
        """Log in unless already logged in; the session generation the caller's request belongs to."""
        with self._login_lock:
            if not self._logged_in:
                self._login()
            return self._generation

    def _relogin(self, failed_generation: int) -> None:
        """Log in again after a 401, unless another thread already did since the failed request."""
        with self._login_lock:
            if self._generation == failed_generation:
                self._logged_in = False
                self.http.cookies.clear()
                self._login()

    def _login(self) -> None:
        response = self._send("POST", "login", auth=(self.endpoint.username, self.endpoint.password))
        if response.status_code == 401:
            raise ConnectorError(f"UMS {self.endpoint.host} refused the login of user {self.endpoint.username}",
                                 transient=False, hint="check connectors.ums.username and password")
        self._check(response, "POST", "login")
        if "JSESSIONID" not in self.http.cookies:  # IMI also puts the cookie in the body: "JSESSIONID=..."
            message = str(_json(response).get("message", ""))
            name, sep, value = message.partition("=")
            if not sep or name.strip() != "JSESSIONID":
                raise ConnectorError(f"UMS {self.endpoint.host} answered the login without a session cookie",
                                     transient=False)
            self.http.cookies.set("JSESSIONID", value.strip(), path="/umsapi/")
        self._logged_in = True
        self._generation += 1
        self.logins += 1

    def logout(self) -> None:
        with self._login_lock:
            if not self._logged_in:
                return
            self._logged_in = False
            try:
                self._send("POST", "logout")
            except ConnectorError:  # the session ends on the server's timeout anyway
                pass
        self.http.close()

    # ------------------------------------------------------------ requests
    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None) -> Any:
        """One IMI request; the parsed JSON answer. Raises ConnectorError (transient for network trouble)."""
        for _ in range(2):
            generation = self.ensure_login()
            response = self._send(method, path, params=params, body=body)
            if response.status_code != 401:
                self._check(response, method, path)
                return _json(response)
            self._relogin(generation)  # the session expired: log in once, send again
        raise ConnectorError(f"UMS {self.endpoint.host} keeps answering 401 to {method} {path} after a new login",
                             transient=False, hint="does the user have the IMI permission?")

    def _send(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None,
              auth: tuple[str, str] | None = None) -> requests.Response:
        with self._count_lock:
            self.requests[endpoint_name(method, path, params)] += 1
        timeout = (self.endpoint.connect_timeout, self.endpoint.request_timeout)
        with self._slots:
            try:
                # verify per request: a session-wide verify loses to REQUESTS_CA_BUNDLE in the environment
                return self.http.request(method, self.endpoint.base_url + path, params=params, json=body,
                                         auth=auth, timeout=timeout, verify=self.endpoint.verify)
            except requests.exceptions.SSLError as exc:
                raise ConnectorError(
                    f"TLS certificate of UMS {self.endpoint.host}:{self.endpoint.port} not trusted ({_short(exc)})",
                    transient=False, hint="set connectors.ums.ca_file to the CA that issued the UMS certificate"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise ConnectorError(f"cannot reach UMS {self.endpoint.host}:{self.endpoint.port} "
                                     f"({method} {path}): {_short(exc)}", transient=True) from None

    def _check(self, response: requests.Response, method: str, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = _short(response.text or response.reason or "")
        where = f"{method} {path}"
        if status == 404:
            raise ImiNotFound(f"UMS has no such object ({where}): {detail}", transient=False)
        # 5xx and 429: UMS is busy or restarting; worth another attempt
        raise ConnectorError(f"UMS answered HTTP {status} to {where}: {detail}",
                             transient=status >= 500 or status == 429)

    def request_count(self) -> int:
        with self._count_lock:
            return sum(self.requests.values())


@dataclass
class _Batch:
    items: list[Any] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: ConnectorError | None = None


class MicroBatcher:
    """Collects the items that concurrent threads send to the same list endpoint into one request.

    The first thread to ask opens a batch and waits up to `window` seconds (less if `max_items`
    arrive) for others; then it sends the batch and every thread gets the whole answer, from which
    it picks its own item's result.
    """

    def __init__(self, send: Callable[[Hashable, list[Any]], Any], *, window: float, max_items: int):
        self._send = send
        self.window = window
        self.max_items = max_items
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Batch] = {}
        self.batches = 0

    def submit(self, key: Hashable, item: Any) -> Any:
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch()
            batch.items.append(item)
            if len(batch.items) >= self.max_items:
                del self._open[key]  # full: the next item opens a new batch
                batch.full.set()
        if not leader:
            batch.done.wait()
        else:
            batch.full.wait(self.window)
            with self._lock:
                if self._open.get(key) is batch:
                    del self._open[key]
                self.batches += 1
            try:
                batch.result = self._send(key, list(batch.items))
            except ConnectorError as exc:
                batch.error = exc
            finally:
                batch.done.set()
        if batch.error is not None:  # a fresh exception per thread: tracebacks are per thread
            raise ConnectorError(batch.error.message, transient=batch.error.transient, hint=batch.error.hint)
        return batch.result


def endpoint_name(method: str, path: str, params: Mapping[str, str] | None = None) -> str:
    """`POST thinclients?command=reboot`, `GET thinclients/{id}`: one name per endpoint, for counting."""
    name = "/".join("{id}" if part.isdigit() else part for part in path.strip("/").split("/"))
    query = "&".join(f"{k}={v}" for k, v in sorted((params or {}).items()))
    return f"{method} {name}" + (f"?{query}" if query else "")


def _json(response: requests.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise ConnectorError(f"UMS answered {response.request.method} {response.url} with something that is "
                             f"not JSON: {_short(response.text)}", transient=True) from None


def _short(value: Any, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
