"""Validation of the setup wizard's answers, one function per kind of answer.

Each returns the normalised value or raises ValueError with a sentence the wizard
prints before asking again. They reuse core.dicom_names and the settings' rules so
that the wizard never accepts a value that `load_settings` would later reject.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.dicom_names import Modality, check_aet, check_port, parse_modality_line
from ops import pgcluster

PORT_KEYS: tuple[tuple[str, str], ...] = (
    ("DICOM_PORT", "Orthanc DICOM port (C-STORE, C-ECHO)"),
    ("ORTHANC_WEB_PORT", "Orthanc web/REST port"),
    ("OPERATOR_UI_PORT", "operations app port"),
    ("OHIF_PORT", "viewer port"),
    ("POSTGRES_PORT", "PostgreSQL port"),
    ("ROUTING_API_PORT", "workflow API port (/v1, /health, /metrics)"),
    ("GRAFANA_PORT", "Grafana port (optional extra)"),
)


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def storage_path(value: str, *, other: str | None = None) -> str:
    """An absolute path that exists as a writable directory or can be created."""
    if not value.startswith("/"):
        raise ValueError("give an absolute path (starting with /)")
    path = Path(value)
    if other and Path(other).resolve() == path.resolve():
        raise ValueError("the DICOM storage and the PostgreSQL data must be different directories")
    if other and (Path(other).resolve() in path.resolve().parents or path.resolve() in Path(other).resolve().parents):
        raise ValueError("the DICOM storage and the PostgreSQL data must not be inside one another")
    probe = _nearest_existing(path)
    if not probe.is_dir():
        raise ValueError(f"{probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{probe} is not writable by {pwd.getpwuid(os.geteuid()).pw_name}")
    return str(path)


def postgres_path(value: str, *, dicom_storage: str) -> str:
    """Like storage_path, and the directory must be empty or already hold a PostgreSQL cluster."""
    checked = storage_path(value, other=dicom_storage)
    path = Path(checked)
    if path.is_dir() and any(path.iterdir()) and not pgcluster.is_initialised(path):
        raise ValueError(f"{path} is not empty and holds no PostgreSQL cluster: choose an empty directory")
    return checked


def service_user_can_reach(path: Path) -> str | None:
    """Why the PostgreSQL service user could not traverse to `path`'s parent, or None."""
    user = pgcluster.service_user()
    if user is None:
        return None
    parent = _nearest_existing(path.parent)
    proc = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(parent)], check=False)
    if proc.returncode != 0:
        return f"the {user} user cannot reach {parent}: make every parent directory traversable (chmod o+x)"
    return None


def aet(value: str) -> str:
    return check_aet(value)


def port(value: str, *, taken: dict[int, str], key: str) -> int:
    """A valid port not used by another of the hub's services."""
    number = check_port(value)
    if number in taken and taken[number] != key:
        raise ValueError(f"port {number} is already used by {taken[number]}")
    return number


def port_in_use(number: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:number (a warning only: it may be this hub)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, number)) == 0


def time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Paris or America/Los_Angeles") from None
    return value


def username(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", value):
        raise ValueError("use 1 to 64 letters, digits, '_', '.' or '-'")
    return value


def password(value: str) -> str:
    if len(value) < 12:
        raise ValueError("a password needs at least 12 characters")
    if any(c in value for c in "\n\r"):
        raise ValueError("a password cannot contain a line break")
    return value


def destination(value: str) -> Modality:
    """`NAME=AET|HOST|PORT` as typed in the wizard."""
    if "=" not in value:
        raise ValueError("type NAME=AET|HOST|PORT, for example PACS=PACS|127.0.0.1|11112")
    name, _, spec = value.partition("=")
    name = name.strip().upper()
    return parse_modality_line(name, spec.strip())
