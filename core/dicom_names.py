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


# The DICOM services a peer may ask of Orthanc beyond echo and store, by the word that
# enables them in a MODALITY_ line (`AET|HOST|PORT|find,move`; `qr` is all three).
RETRIEVE_SERVICES = ("find", "get", "move")
RETRIEVE_WORDS = {"find": ("find",), "get": ("get",), "move": ("move",), "qr": RETRIEVE_SERVICES}
# The word of the same field that makes Orthanc call this peer over DICOM TLS
# (`AET|HOST|PORT|tls`, `AET|HOST|PORT|qr,tls`): Orthanc's UseDicomTls.
TLS_WORD = "tls"


@dataclass(frozen=True)
class Modality:
    """A DICOM peer as Orthanc knows it: symbolic name, AE title, host, port and what it may ask.

    Every peer (a destination, the AI node) may echo Orthanc and store to it. Query and
    retrieve (C-FIND, C-GET, C-MOVE) read studies back out of the hub, so each is off
    unless enabled: with DicomCheckModalityHost, Orthanc then grants it only to a caller
    with this AE title *and* this host (docs in README.md, "Security").
    """

    name: str
    aet: str
    host: str
    port: int
    allow_find: bool = False
    allow_get: bool = False
    allow_move: bool = False
    # Orthanc sends to and echoes this peer over DICOM TLS, with the hub's certificate,
    # checking the peer's against the trusted CA (README.md, "DICOM TLS and HTTPS").
    use_tls: bool = False

    @property
    def retrieve(self) -> tuple[str, ...]:
        """The query/retrieve services enabled, in RETRIEVE_SERVICES order (empty: none)."""
        return tuple(s for s in RETRIEVE_SERVICES if getattr(self, f"allow_{s}"))

    def spec(self) -> str:
        """The MODALITY_ line value that parses back to this modality (name aside)."""
        base = f"{self.aet}|{self.host}|{self.port}"
        flags = (*self.retrieve, TLS_WORD) if self.use_tls else self.retrieve
        return f"{base}|{','.join(flags)}" if flags else base

    def orthanc_body(self) -> dict[str, object]:
        """PUT /modalities/{name} body. Every permission is explicit: Orthanc's default is all allowed."""
        return {
            "AET": self.aet, "Host": self.host, "Port": self.port,
            "AllowEcho": True, "AllowStore": True,
            "AllowFind": self.allow_find, "AllowGet": self.allow_get, "AllowMove": self.allow_move,
            "AllowFindWorklist": False, "AllowStorageCommitment": False,
            "UseDicomTls": self.use_tls,
        }


def parse_retrieve(value: str, *, tls: bool = False) -> dict[str, bool]:
    """`find,get,move` or `qr` (any case, comma-separated) as allow_* keyword arguments.

    With `tls`, the word `tls` is accepted too and given as use_tls.
    """
    enabled: set[str] = set()
    use_tls = False
    for word in (w.strip().lower() for w in value.split(",")):
        if not word:
            continue
        if tls and word == TLS_WORD:
            use_tls = True
            continue
        if word not in RETRIEVE_WORDS:
            also = ", and tls for DICOM TLS" if tls else ""
            raise ValueError(f"expected AET|HOST|PORT|SERVICES, SERVICES being find, get, move or qr "
                             f"(comma-separated{also}); got {word[:20]!r}")
        enabled.update(RETRIEVE_WORDS[word])
    allowed = {f"allow_{s}": s in enabled for s in RETRIEVE_SERVICES}
    return {**allowed, "use_tls": use_tls} if tls else allowed


def check_retrieve_host(host: str, retrieve: tuple[str, ...] | list[str]) -> str:
    """Query/retrieve needs the host as an IP address: Orthanc compares the caller's with it literally.

    With DicomCheckModalityHost, Orthanc 1.10.1 refuses a C-FIND from 127.0.0.1 for a
    modality registered as `localhost` ("Its IP address should be localhost").
    """
    if retrieve:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"query/retrieve ({', '.join(retrieve)}) needs the host as an IP address, not "
                             f"{host[:40]!r}: Orthanc compares the caller's address with it literally") from None
    return host


def parse_modality_line(name: str, value: str) -> Modality:
    """Parse `AET|HOST|PORT[|SERVICES]` for the modality `name`; raise ValueError on any defect.

    SERVICES enables query/retrieve from that peer (`find`, `get`, `move`, or `qr` for
    all three); without it the peer may only echo and store, as every older line means.
    The word `tls` in the same field makes Orthanc reach the peer over DICOM TLS.
    """
    check_modality_name(name)
    parts = value.split("|")
    if len(parts) not in (3, 4):
        raise ValueError(f"expected AET|HOST|PORT or AET|HOST|PORT|SERVICES, got {len(parts)} field(s) "
                         f"in {value[:60]!r}")
    aet, host, port = (p.strip() for p in parts[:3])
    allowed = parse_retrieve(parts[3], tls=True) if len(parts) == 4 else {}
    modality = Modality(name=name, aet=check_aet(aet), host=check_host(host), port=check_port(port), **allowed)
    check_retrieve_host(modality.host, modality.retrieve)
    return modality
