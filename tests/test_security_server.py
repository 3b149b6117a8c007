"""`bigbang server` is secure by default: loopback, or API authentication from a reference; CSRF on, CORS closed.

The server listens on 0.0.0.0 in these tests, but every request goes to 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.peers import free_port
from tests.peers.prefect_server import stop_group

pytestmark = pytest.mark.engine

AUTH = "ops:correct-horse-battery-staple"


def clean_env(bb_env, tmp_path) -> dict[str, str]:
    env = dict(bb_env, PREFECT_HOME=str(tmp_path / "prefect-server-home"), PREFECT_UI_ENABLED="false")
    for key in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING", "BIGBANG_PREFECT_AUTH_FILE",
                "PREFECT_API_URL"):
        env.pop(key, None)
    return env


def request(url: str, *, auth: str | None = None, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_a_non_loopback_address_without_auth_refuses_to_start(bb_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bigbang", "server", "--host", "0.0.0.0", "--port",
                           str(free_port())], env=clean_env(bb_env, tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refusing to serve the Prefect API on 0.0.0.0 without authentication" in lines[0]


def test_an_auth_string_as_plain_text_or_weak_or_in_an_open_file_is_refused(bb_env, tmp_path):
    env = clean_env(bb_env, tmp_path)
    open_file = tmp_path / "auth-open"
    open_file.write_text(AUTH)
    open_file.chmod(0o644)
    weak = tmp_path / "auth-weak"
    weak.write_text("ops:short")
    weak.chmod(0o600)
    for args, expected in ((["--auth-file", str(open_file)], "readable by others"),
                           (["--auth-file", str(weak)], "at least 12 characters"),
                           (["--auth-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE")):
        proc = subprocess.run([sys.executable, "-m", "bigbang", "server", "--host", "0.0.0.0", "--port",
                               str(free_port()), *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and expected in proc.stderr, (args, proc.stderr)
        assert AUTH not in proc.stderr
    # no option takes the secret itself
    proc = subprocess.run([sys.executable, "-m", "bigbang", "server", "--auth-string", AUTH], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2


def test_with_an_auth_string_unauthenticated_requests_get_401(bb_env, tmp_path):
    port = free_port()
    env = clean_env(bb_env, tmp_path)
    env["BIGBANG_TEST_PREFECT_AUTH"] = AUTH
    proc = subprocess.Popen([sys.executable, "-m", "bigbang", "server", "--host", "0.0.0.0", "--port", str(port),
                             "--auth-env", "BIGBANG_TEST_PREFECT_AUTH"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if request(api + "/health")[0] == 200:  # Prefect leaves the health probe open
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""

        status, _, _ = request(api + "/admin/version")
        assert status == 401
        status, _, _ = request(api + "/admin/version", auth="ops:wrong-password-here")
        assert status == 401
        status, _, _ = request(api + "/flows/filter", method="POST", body=b"{}")
        assert status in (401, 403)  # Prefect's CSRF check answers a POST before the auth check does
        status, _, text = request(api + "/admin/version", auth=AUTH)
        assert status == 200 and text.strip('"').startswith("3.8")

        # CSRF protection is on: an authenticated POST without a CSRF token is refused
        status, _, text = request(api + "/flows/filter", method="POST", body=b"{}", auth=AUTH)
        assert status == 403, (status, text)

        # CORS answers only the UI's own origin
        preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        _, headers, _ = request(api + "/flows/filter", method="OPTIONS", headers=preflight)
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
        assert "*" not in [v for k, v in headers.items() if k.lower() == "access-control-allow-origin"]
        import socket

        own = f"http://{socket.getfqdn()}:{port}"  # the UI's origin when listening on 0.0.0.0
        _, headers, _ = request(api + "/flows/filter", method="OPTIONS", headers={**preflight, "Origin": own})
        assert {k.lower(): v for k, v in headers.items()}.get("access-control-allow-origin") == own

        # a client (the CLI, a worker) authenticates with the same reference: a file only its owner reads
        auth_file = tmp_path / "prefect-auth"
        auth_file.write_text(AUTH + "\n")
        auth_file.chmod(0o600)
        client_env = dict(env, PREFECT_API_URL=api, BIGBANG_PREFECT_AUTH_FILE=str(auth_file))
        client_env.pop("BIGBANG_TEST_PREFECT_AUTH")
        script = ("from bigbang.prefect_env import apply_defaults; apply_defaults()\n"
                  "from prefect.client.orchestration import get_client\n"
                  "with get_client(sync_client=True) as c:\n"
                  "    fid = c.create_flow_from_name('bigbang-auth-probe')\n"
                  "    print(len(c.read_flows()))\n")
        done = subprocess.run([sys.executable, "-c", script], env=client_env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert int(done.stdout.strip().splitlines()[-1]) >= 1
        status, _, text = request(api + "/flows/filter", method="POST", body=b"{}", auth=AUTH,
                                  headers={"Prefect-Csrf-Token": "x", "Prefect-Csrf-Client": "y"})
        assert status == 403
        # ... and without the reference a client gets 401
        no_auth = dict(client_env)
        no_auth.pop("BIGBANG_PREFECT_AUTH_FILE")
        done = subprocess.run([sys.executable, "-c", script], env=no_auth, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and "401" in done.stderr
    finally:
        stop_group(proc)
    output = proc.stdout.read() if proc.stdout else ""
    assert AUTH not in output
    assert "API authentication is on" in output


def test_the_server_turns_csrf_on_and_closes_cors(monkeypatch):
    from bigbang.commands.server import is_loopback, server_env, ui_origin

    monkeypatch.delenv("PREFECT_SERVER_CORS_ALLOWED_ORIGINS", raising=False)
    env = server_env(None, None, auth=AUTH, origin=ui_origin("127.0.0.1", 4200))
    assert env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] == "http://127.0.0.1:4200"
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    assert [h for h in ("127.0.0.1", "::1", "localhost", "127.1.2.3", "0.0.0.0", "10.0.0.1", "db.example")
            if is_loopback(h)] == ["127.0.0.1", "::1", "localhost", "127.1.2.3"]
    assert json.dumps(env)  # plain strings only
    assert os.environ.get("PREFECT_SERVER_API_AUTH_STRING") != AUTH
