"""Validation of DICOM application entity titles, hosts, ports and modality lines.

One set of rules shared by the settings loader, `make seed-modalities` and the
app's destination forms, so that a value accepted in one place is accepted in all.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

AET_MAX = 16
# \Z, not $: "$" also matches before a final newline.
_AET_RE = re.compile(r"^[A-Za-z0-9 _.\-]+\Z")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
MODALITY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\Z")


def check_aet(value: str) -> str:
    """Return the AE title or raise ValueError naming the broken rule."""
    if not value or not value.strip():
        raise ValueError("an AE title must not be empty")
    if len(value) > AET_MAX:
        raise ValueError(f"an AE title has at most {AET_MAX} characters (got {len(value)})")
    if value != value.strip():
        raise ValueError("an AE title must not start or end with a space")
    if not _AET_RE.match(value):
        raise ValueError("an AE title may only hold letters, digits, space, '_', '-' and '.'")
    return value


def check_host(value: str) -> str:
    """Return a valid IP address or DNS host name, or raise ValueError."""
    if not value:
        raise ValueError("the host must not be empty")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253 or not all(_HOST_LABEL_RE.match(p) for p in value.split(".")):
        raise ValueError(f"{value[:40]!r} is not an IP address or host name")
    return value


def check_port(value: int | str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"the port must be a whole number (got {str(value)[:20]!r})") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be between 1 and 65535 (got {port})")
    return port


def check_modality_name(value: str) -> str:
    if not MODALITY_NAME_RE.match(value or ""):
        raise ValueError(
            "a destination name holds letters, digits, '_' and '-', starts with a letter "
            "or digit, and has at most 64 characters"
        )
    return value


@dataclass(frozen=True)
class Modality:
    """A DICOM peer as Orthanc knows it: symbolic name, AE title, host and port."""

    name: str
    aet: str
    host: str
    port: int

    def orthanc_body(self) -> dict[str, object]:
        return {"AET": self.aet, "Host": self.host, "Port": self.port}


def parse_modality_line(name: str, value: str) -> Modality:
    """Parse `AET|HOST|PORT` for the modality `name`; raise ValueError on any defect."""
    check_modality_name(name)
    parts = value.split("|")
    if len(parts) != 3:
        raise ValueError(f"expected AET|HOST|PORT, got {len(parts)} field(s) in {value[:60]!r}")
    aet, host, port = (p.strip() for p in parts)
    return Modality(name=name, aet=check_aet(aet), host=check_host(host), port=check_port(port))
