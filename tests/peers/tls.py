"""TLS for the test servers written here (WS-Man, XenAPI, IMI), as a real server does it: each client's
handshake in its own request thread, not in the accept loop.

A listening socket wrapped with `do_handshake_on_connect=True` (ssl's default) makes `accept()` run every
handshake in turn: one client on a lossy link, or a worker killed mid-handshake, then holds up every other
client's connect, and on a loaded machine those time out (a live-weekend run saw "connect timeout=10"
three times from a location's worker to the deployment server)."""

from __future__ import annotations

import socket
import ssl
from typing import Any

HANDSHAKE_TIMEOUT = 30.0


def tls_listener(context: ssl.SSLContext, listener: socket.socket) -> ssl.SSLSocket:
    """The server's listening socket under TLS; the handshakes are `HandshakeInRequestThread`'s."""
    return context.wrap_socket(listener, server_side=True, do_handshake_on_connect=False)


class HandshakeInRequestThread:
    """A socketserver mix-in (before ThreadingMixIn or a Threading*Server in the bases): the handshake of
    each accepted TLS connection runs in its request thread, and the listen backlog holds a burst of
    workers connecting at once (socketserver's default is 5)."""

    request_queue_size = 128

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            timeout = request.gettimeout()
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                request.do_handshake()
            except OSError:  # ssl.SSLError too: a client that rejects the certificate or went away
                return
            request.settimeout(timeout)
        super().finish_request(request, client_address)  # type: ignore[misc]
