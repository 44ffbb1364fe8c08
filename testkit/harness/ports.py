"""Free TCP ports on 127.0.0.1 for throwaway servers (shared with the demo's peers)."""

from __future__ import annotations

from testkit.dicom_peers import free_port

__all__ = ["free_port", "free_ports"]


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]
