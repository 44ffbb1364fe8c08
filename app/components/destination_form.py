"""Validation of a destination form: the same rules as MODALITY_ lines in .env.

Every field is checked and every problem reported at once, so the operator fixes the
form in one go; Orthanc is only called with a value that passed.
"""

from __future__ import annotations

from typing import Any

from hub.dicom_names import Modality, check_aet, check_host, check_modality_name, check_port


def validate(name: str, aet: str, host: str, port: str) -> tuple[Modality | None, dict[str, str]]:
    """A Modality, or the error of each bad field (field name -> message)."""
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
    return Modality(checked["name"], checked["aet"], checked["host"], checked["port"]), {}
