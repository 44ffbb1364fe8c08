"""Orthanc access for pages: a short-timeout client for health and echo, and probes.

The shared client in app.context waits up to 10 s; a health card must answer faster
than that when Orthanc hangs, so health checks use their own 3 s client.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from app.context import get_orthanc, get_settings
from core.orthanc_client import OrthancClient, OrthancError


@st.cache_resource
def health_client() -> OrthancClient:
    return OrthancClient.from_settings(get_settings(), timeout=3.0)


@dataclass(frozen=True)
class OrthancHealth:
    ok: bool
    latency_ms: float
    version: str | None = None
    error: str | None = None
    statistics: dict[str, Any] | None = None


def orthanc_health() -> OrthancHealth:
    """GET /system (and /statistics) now; any failure is reported, not raised."""
    client = health_client()
    start = time.perf_counter()
    try:
        system = client.system()
        latency = (time.perf_counter() - start) * 1000
        try:
            stats = client.statistics()
        except OrthancError:
            stats = None
        return OrthancHealth(True, latency, system.get("Version"), None, stats)
    except OrthancError as exc:
        return OrthancHealth(False, (time.perf_counter() - start) * 1000, None, str(exc)[:300])


def modalities() -> dict[str, dict[str, Any]]:
    """Orthanc's modalities, freshly read (raises OrthancError when Orthanc is down)."""
    return get_orthanc().modalities()


@st.cache_data(ttl=30, show_spinner=False)
def plugins() -> list[str]:
    try:
        return list(health_client().get("/plugins"))
    except OrthancError:
        return []


@st.cache_data(ttl=30, show_spinner=False)
def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at host:port (e.g. the OHIF server)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
