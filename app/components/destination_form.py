"""Validation of a destination form: the same rules as MODALITY_ lines in .env.

Every field is checked and every problem reported at once, so the operator fixes the
form in one go; Orthanc is only called with a value that passed.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from core.dicom_names import (
    RETRIEVE_SERVICES,
    Modality,
    check_aet,
    check_host,
    check_modality_name,
    check_port,
    check_retrieve_host,
)


def retrieve_of(entry: dict[str, Any] | None) -> list[str]:
    """The query/retrieve services Orthanc grants a modality (Orthanc's Allow* default is true)."""
    if entry is None:
        return []
    return [s for s in RETRIEVE_SERVICES if entry.get(f"Allow{s.capitalize()}", True)]


def validate(
    name: str, aet: str, host: str, port: str, retrieve: Collection[str] = (), use_tls: bool = False
) -> tuple[Modality | None, dict[str, str]]:
    """A Modality, or the error of each bad field (field name -> message).

    `retrieve` names the query/retrieve services (find, get, move) the peer may use;
    none by default, as for a MODALITY_ line without its fourth field. `use_tls` keeps
    Orthanc calling it over DICOM TLS (set by a MODALITY_ line's `tls` flag).
    """
    errors: dict[str, str] = {}
    checked: dict[str, Any] = {}
    for field, check, value in (
        ("name", check_modality_name, name.strip()), ("aet", check_aet, aet),
        ("host", check_host, host.strip()), ("port", check_port, port.strip()),
    ):
        try:
            checked[field] = check(value)
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        return None, errors
    allowed = {f"allow_{s}": s in retrieve for s in RETRIEVE_SERVICES}
    modality = Modality(checked["name"], checked["aet"], checked["host"], checked["port"], **allowed, use_tls=use_tls)
    try:
        check_retrieve_host(modality.host, modality.retrieve)
    except ValueError as exc:
        return None, {"host": str(exc)}
    return modality, {}
