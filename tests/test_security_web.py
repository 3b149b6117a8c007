"""Field-app sessions are server-side (revocable, absolute and idle timeouts), every response carries the
security headers, and `bigbang serve` speaks TLS, warns about plain HTTP and trusts proxy headers only when told."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
import urllib.request

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bigbang.session import RunOptions, RunSession
from bigbang.store.field import FieldStore
from bigbang.store.schema import field_sessions
from bigbang.web.app import create_app
from bigbang.web.auth import COOKIE
from tests.peers import free_port
from tests.peers.browser import gated_inventory
from tests.peers.prefect_server import stop_group

LOCATION = "HST-014"


@pytest.fixture
def field(tmp_path):
    inventory = gated_inventory(tmp_path / "inventory")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    session = RunSession.start(inventory, RunOptions(mode="rehearsal", zero_duration=True), ledger_url=ledger_url)
    yield inventory, ledger_url, session
    session.close()


def _token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, username: str = "sni") -> str:
    token = _token(client.get("/login").text)
    r = client.post("/login", data={"username": username, "password": f"demo-{username}", "csrf_token": token,
                                    "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies[COOKIE]


def test_a_signed_out_cookie_no_longer_works(field):
    inventory, ledger_url, session = field
    app = create_app(inventory, ledger_url, session.run_id)
    client = TestClient(app, raise_server_exceptions=False)
    cookie = sign_in(client)
    assert client.get("/", follow_redirects=False).status_code == 200
    token = _token(client.get(f"/l/{LOCATION}").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303

    stolen = TestClient(app, raise_server_exceptions=False)
    stolen.cookies.set(COOKIE, cookie)
    r = stolen.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # the cookie names a random token; the database holds only its hash, marked revoked
    with session.ledger.engine.connect() as conn:
        rows = conn.execute(select(field_sessions)).mappings().all()
    assert len(rows) == 1 and rows[0]["uid"] == "sni" and rows[0]["revoked_at"] is not None
    assert all(rows[0]["id"] not in v for v in (cookie,))


def test_a_forged_signed_in_cookie_without_a_stored_session_is_refused(field):
    inventory, ledger_url, session = field
    app = create_app(inventory, ledger_url, session.run_id, secret="s" * 32)
    from itsdangerous import URLSafeTimedSerializer

    forged = URLSafeTimedSerializer("s" * 32, salt="bigbang-field-session").dumps(
        {"uid": "sni", "csrf": "x", "iat": time.time(), "lang": None})
    client = TestClient(app, raise_server_exceptions=False)
    client.cookies.set(COOKIE, forged)
    assert client.get("/", follow_redirects=False).status_code == 303  # even with the server's own key


def test_idle_and_absolute_timeouts_and_no_endless_resigning(field):
    inventory, ledger_url, session = field
    idle = create_app(inventory, ledger_url, session.run_id, idle_minutes=1.5 / 60)
    client = TestClient(idle, raise_server_exceptions=False)
    sign_in(client)
    for _ in range(2):  # activity keeps an idle-limited session alive ...
        time.sleep(0.8)
        assert client.get("/", follow_redirects=False).status_code == 200
    time.sleep(1.8)  # ... and a pause longer than the idle limit ends it
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]

    absolute = create_app(inventory, ledger_url, session.run_id, session_hours=3 / 3600)
    client = TestClient(absolute, raise_server_exceptions=False)
    sign_in(client)
    assert client.get("/", follow_redirects=False).status_code == 200
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # switching language (which once re-signed the cookie) extends nothing
        client.get("/lang/da?next=/", follow_redirects=False)
        client.get("/lang/en?next=/", follow_redirects=False)
        time.sleep(0.3)
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")  # signed out: sign in again


@pytest.mark.parametrize("path", ["/login", "/", "/healthz", "/no-such-page", "/l/HST-014"])
def test_every_response_carries_the_security_headers(field, path):
    inventory, ledger_url, session = field
    client = TestClient(create_app(inventory, ledger_url, session.run_id), raise_server_exceptions=False)
    sign_in(client)
    r = client.get(path, follow_redirects=False)
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in r.headers  # plain HTTP here


def self_signed(cert, key) -> None:
    """A certificate for 127.0.0.1 (cryptography comes with paramiko)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def _wait(url: str, proc, context=None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2, context=context)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"not up: {proc.poll()}")


def test_serve_over_tls_trusts_proxy_headers_only_when_told(field, tmp_path, bb_env):
    inventory, ledger_url, session = field
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key)
    results = {}
    for mode in ("trusted", "untrusted", "plain"):
        port = free_port()
        args = [sys.executable, "-m", "bigbang", "serve", str(inventory), "--run", session.run_id, "--ledger",
                ledger_url, "--host", "0.0.0.0", "--port", str(port)]
        if mode != "plain":
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        if mode == "trusted":
            args += ["--trust-proxy", "127.0.0.1"]
        proc = subprocess.Popen(args, env=bb_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        scheme = "http" if mode == "plain" else "https"
        base = f"{scheme}://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(cert))
        try:
            _wait(base + "/healthz", proc, context if scheme == "https" else None)
            with httpx.Client(base_url=base, verify=context if scheme == "https" else True) as client:
                r = client.get("/login")
                if scheme == "https":
                    assert r.headers["strict-transport-security"].startswith("max-age=")
                    assert "secure" in r.headers["set-cookie"].lower()
                token = _token(r.text)
                r = client.post("/login", data={"username": "sni", "password": "demo-sni", "csrf_token": token,
                                                "next": "/"}, headers={"X-Forwarded-For": "203.0.113.9"})
                page = client.get(f"/l/{LOCATION}").text
                key_ = re.search(r'name="request_key" value="([^"]+)"', page).group(1)
                r = client.post(f"/l/{LOCATION}/check", data={
                    "csrf_token": _token(page), "request_key": key_, "item": "location.arrive", "action": "check"},
                    headers={"X-Forwarded-For": "203.0.113.9"})
                assert r.status_code in (200, 303), r.text
        finally:
            stop_group(proc)
        results[mode] = proc.stdout.read() if proc.stdout else ""
    sources = [a["source"] for a in FieldStore(session.ledger).audit(session.run_id, LOCATION)]
    assert len(sources) == 3
    assert sources[0].startswith("web 203.0.113.9")  # behind the trusted proxy: the client's address
    assert sources[1].startswith("web 127.0.0.1") and sources[2].startswith("web 127.0.0.1")
    assert "WARNING" in results["plain"] and "plain HTTP" in results["plain"]
    assert "WARNING" not in results["trusted"] and "WARNING" not in results["untrusted"]
