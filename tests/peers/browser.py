"""Real browser for the field app's tests: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here; scripts/setup.d/30-chromium.sh installs
/usr/bin/chromium. Also a helper to serve an ASGI app on a free loopback port.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True, "locale": "da-DK"}
OUTPUT = Path(__file__).resolve().parent.parent / "output"


@pytest.fixture(scope="session")
def chromium():
    """A launched Chromium (Playwright Browser); closed at the end of the session."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run scripts/setup.d/30-chromium.sh"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class AppServer:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1 and a free port."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the field app did not start within 20 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class PhoneLink:
    """The phone's network link to a server: a TCP relay on its own loopback port that can be cut.

    Chromium's emulated offline mode reaches the page and its service worker one after the other, so a
    request can still slip through right after it is switched on. Cutting the link closes every relayed
    connection and resets new ones, so while it is cut no byte reaches the server, whatever the browser
    thinks."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.up = True
        self.open: set[socket.socket] = set()
        self.closing = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> PhoneLink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self.cut()
        self.listener.close()

    def cut(self) -> None:
        with self.lock:
            self.up = False
            doomed, self.open = self.open, set()
        for sock in doomed:
            _reset(sock)

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                up = self.up
            if not up:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self.lock:
                self.open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self.lock:  # a cut between recv and send drops the data: the link is down
                    if not self.up or source not in self.open:
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open.discard(source)
                self.open.discard(sink)
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped link looks to both ends."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def gated_inventory(dest: Path) -> Path:
    """A copy of the demo inventory whose rehearsal waits for a real technician's sign-off."""
    import shutil

    demo = Path(__file__).resolve().parent.parent.parent / "inventories" / "demo"
    shutil.copytree(demo, dest)
    (dest / "zz-field-test.yaml").write_text(
        "rehearsal:\n  simulate_signoff: false\n"
        "rollout:\n  signoff_timeout: 240h   # 6 real minutes at the demo's compression: the test signs off first\n")
    return dest
