"""Free TCP ports on 127.0.0.1 for throwaway servers."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now and that this process has not handed out before.

    The kernel may give the same ephemeral port twice once it is released, so ports
    already handed out in this run are skipped (two servers must never collide).
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]
