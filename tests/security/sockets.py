"""Listening TCP sockets from /proc/net/tcp{,6}: where a port is bound, without psutil."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

LISTEN = "0A"


def _address(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6 is four little-endian 32-bit words.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening_addresses(port: int) -> set[str]:
    """Every local address on which something listens on TCP `port` ('0.0.0.0' = all)."""
    found: set[str] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            hex_addr, hex_port = local.split(":")
            if state == LISTEN and int(hex_port, 16) == port:
                found.add(_address(hex_addr, family))
    return found
