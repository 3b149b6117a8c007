"""Wake-on-LAN: the magic packet (6 x 0xFF, then the MAC 16 times) over UDP broadcast."""

from __future__ import annotations

import socket

from bigbang.inventory.model import normalise_mac


def magic_packet(mac: str) -> bytes:
    digits = bytes.fromhex(normalise_mac(mac).replace(":", ""))
    return b"\xff" * 6 + digits * 16


def send_magic_packet(mac: str, broadcast: str = "255.255.255.255", port: int = 9, *, count: int = 3) -> None:
    """Send `count` packets (UDP is lossy; a NIC wakes on the first one it sees). Raises OSError."""
    packet = magic_packet(mac)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(count):
            sock.sendto(packet, (broadcast, port))
