"""DICOM identity is AE title plus network origin: the check behind "this series is an AI result".

Any device on the network can call Orthanc with the AE title MERCURE; it cannot choose
the address its packets come from (on a routed network: README.md, "Security"). Orthanc
records both for every instance (`RemoteAET` and `RemoteIP` metadata). So a series
counts as an AI result only when its sender AET is in AI_RESULT_AETS **and** its
RemoteIP is an address of the host registered in Orthanc for a modality with that AE
title. Anything else is kept unrouted and flagged by the worker (worker/ingest.py):
series kind `rejected`, a `sender_rejected` event, an audit entry, the
`hub_sender_rejected` metric, and a line on the app's Overview such as
"3 instances from MERCURE at 10.1.2.3, expected 10.1.2.9".
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from core.orthanc_client import OrthancClient
from core.states import EventType

AUDIT_ACTION = "dicom.sender_rejected"
RESOLVE_TTL_S = 60.0  # host names are resolved at most once a minute (DNS may be slow or down)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(value: str) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 as IPv4), or None when `value` is not one."""
    try:
        ip = ipaddress.ip_address(value.strip().split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Origin:
    """The verdict on one sender: its AET and address, the registered hosts, and why."""

    aet: str | None
    remote_ip: str | None
    expected: tuple[str, ...]
    ok: bool
    reason: str

    def detail(self) -> dict[str, Any]:
        """The event and audit payload (identifiers and addresses only, never patient data)."""
        return {"sender": self.aet, "remote_ip": self.remote_ip, "expected": list(self.expected),
                "reason": self.reason}


def describe(instances: int, aet: str | None, remote_ip: str | None, expected: list[str] | tuple[str, ...]) -> str:
    """ "3 instances from MERCURE at 10.1.2.3, expected 10.1.2.9" (the issue's wording)."""
    count = f"{instances} instance{'' if instances == 1 else 's'}"
    where = ", expected " + " or ".join(expected) if expected else f", and no modality is registered with AET {aet}"
    return f"{count} from {aet or '?'} at {remote_ip or 'an unrecorded address'}{where}"


class AiSenders:
    """AI_RESULT_AETS and the check of their origin against Orthanc's registered modalities.

    Orthanc's modality list is read once per series that claims an AI sender (not per
    instance), so an edit in the app or by `make seed-modalities` counts at once.
    """

    def __init__(
        self, aets: frozenset[str], orthanc: OrthancClient,
        resolve: Callable[[str], set[str]] | None = None, ttl_s: float = RESOLVE_TTL_S,
    ) -> None:
        self.aets = aets
        self.orthanc = orthanc
        self._resolve = resolve or _resolve_host
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, frozenset[IPAddress]]] = {}
        self._lock = threading.Lock()

    def claims(self, aet: str | None) -> bool:
        """True when `aet` is one the AI node sends its results with."""
        return (aet or "") in self.aets

    def check(self, aet: str | None, remote_ip: str | None) -> Origin:
        """Whether a series sent by `aet` from `remote_ip` really comes from that modality's host."""
        hosts = tuple(sorted({
            str(entry.get("Host")) for entry in self.orthanc.modalities().values()
            if entry.get("AET") == aet and entry.get("Host")
        }))
        if not hosts:
            return Origin(aet, remote_ip, hosts, False, "no modality registered with this AE title")
        ip = _address(remote_ip or "")
        if ip is None:
            return Origin(aet, remote_ip, hosts, False, "Orthanc recorded no sender address")
        for host in hosts:
            if ip in self._addresses(host):
                return Origin(aet, remote_ip, hosts, True, f"address of {host}")
        return Origin(aet, remote_ip, hosts, False, "sender address is not the registered host")

    def _addresses(self, host: str) -> frozenset[IPAddress]:
        literal = _address(host)
        if literal is not None:
            return frozenset({literal})
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(host)
            if cached and now - cached[0] < self._ttl_s:
                return cached[1]
        try:
            found = frozenset(ip for ip in (_address(a) for a in self._resolve(host)) if ip is not None)
        except OSError:
            found = frozenset()  # unresolvable: nothing matches; retried after the TTL
        with self._lock:
            self._cache[host] = (now, found)
        return found


def _resolve_host(host: str) -> set[str]:
    return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}


def rejected_senders(conn: Connection, since: datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Senders refused as AI results since `since`, grouped by AET, address and expected hosts.

    Each row has `aet`, `remote_ip`, `expected`, `series`, `instances` (the series'
    current counts, so instances that kept coming are included), `last_at` and `text`.
    Served by events_type_at_idx.
    """
    rows = conn.execute(
        text(
            """
            SELECT e.detail->>'sender' AS aet, e.detail->>'remote_ip' AS remote_ip,
                   e.detail->'expected' AS expected, count(DISTINCT e.series_id) AS series,
                   coalesce(sum(s.instance_count), 0) AS instances, max(e.at) AS last_at
            FROM events e LEFT JOIN series s ON s.id = e.series_id
            WHERE e.type = :type AND e.at >= :since
            GROUP BY 1, 2, 3 ORDER BY max(e.at) DESC LIMIT :limit
            """
        ),
        {"type": EventType.SENDER_REJECTED, "since": since, "limit": limit},
    ).mappings().all()
    out = []
    for row in rows:
        item = dict(row)
        item["expected"] = list(item["expected"] or [])
        item["instances"] = int(item["instances"])
        item["text"] = describe(item["instances"], item["aet"], item["remote_ip"], item["expected"])
        out.append(item)
    return out
