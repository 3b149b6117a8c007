"""Real browser for the field app's tests: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here; scripts/setup.d/30-chromium.sh installs
/usr/bin/chromium. Also a helper to serve an ASGI app on a free loopback port.
"""

from __future__ import annotations

import socket
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

    def __enter__(self) -> "AppServer":
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


def gated_inventory(dest: Path) -> Path:
    """A copy of the demo inventory whose rehearsal waits for a real technician's sign-off."""
    import shutil

    demo = Path(__file__).resolve().parent.parent.parent / "inventories" / "demo"
    shutil.copytree(demo, dest)
    (dest / "zz-field-test.yaml").write_text(
        "rehearsal:\n  simulate_signoff: false\n"
        "rollout:\n  signoff_timeout: 240h   # 6 real minutes at the demo's compression: the test signs off first\n")
    return dest
