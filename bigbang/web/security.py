"""Response headers and transport checks for the field app (and the defect pages it serves).

The pages use no JavaScript and no third-party resources, so the policy allows only the
app's own origin: no framing (clickjacking), no MIME sniffing, no referrer leaving the site
(paths carry location ids). Inline `<style>` and `style=` attributes are used by the layout;
scripts must come from the app itself (`script-src 'self'`), never inline.
"""

from __future__ import annotations

import ipaddress

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; worker-src 'self'; manifest-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "geolocation=(), microphone=(), payment=()",
}
HSTS = "max-age=31536000"


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (HSTS too when served over HTTPS)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                if https:
                    extra.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_warning(host: str, tls: bool) -> str | None:
    """The warning to print when the app would serve passwords and session cookies unencrypted beyond this host."""
    if tls or is_loopback(host):
        return None
    return (f"WARNING: the field app listens on {host} over plain HTTP: passwords and session cookies cross the "
            "network unencrypted. Give --tls-cert and --tls-key, or listen on 127.0.0.1 behind an HTTPS proxy "
            "(--trust-proxy ADDRESS).")
