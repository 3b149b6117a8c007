"""Real peers for the tests (sshd, vCenter simulator, WS-Man server, RT, PostgreSQL...), one module each."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
