"""Parameters shared by the routes, with their limits, and the checks FastAPI cannot express.

Text parameters refuse control characters (PostgreSQL refuses a NUL in text, and none
belongs in an accession number or an AE title) and have a length limit; ids are
positive bigints; days lie between MIN_DAY and MAX_DAY (a later day would overflow the
day-to-instant arithmetic); page sizes are capped. So a hostile value is a 422 or a
400 that says what is wrong, never a 500.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from typing import Annotated

from fastapi import Path, Query

from api.errors import BadRequest
from core.queries import Cursor

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"  # a destination (Orthanc modality) name, core.dicom_names
BIGINT_MAX = 2**63 - 1
MIN_DAY = date(1900, 1, 1)
MAX_DAY = date(2999, 12, 31)
MAX_LIST = 50  # values of one multi-valued filter

StudyId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the study's number (`id`)")]
JobId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the routing job's id")]
DestinationName = Annotated[str, Path(max_length=64, pattern=NAME, description="the destination's name in Orthanc")]


def text_query(description: str, max_length: int = 64) -> object:
    return Query(max_length=max_length, pattern=NO_CONTROL, description=description)


def check_day(value: date | None, name: str) -> date | None:
    if value is not None and not MIN_DAY <= value <= MAX_DAY:
        raise BadRequest(f"{name} must lie between {MIN_DAY} and {MAX_DAY}")
    return value


def check_values(values: list[str] | None, name: str) -> tuple[str, ...]:
    """A multi-valued filter (`?modality=CR&modality=CT`)."""
    values = [v.strip() for v in values or [] if v.strip()]
    if len(values) > MAX_LIST:
        raise BadRequest(f"{name}: at most {MAX_LIST} values")
    for value in values:
        if len(value) > 64 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise BadRequest(f"{name}: each value has at most 64 characters and no control characters")
    return tuple(values)


def encode_cursor(cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    raw = f"{cursor.at.isoformat()}|{cursor.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(value: str | None) -> Cursor | None:
    """The keyset position a previous page returned as `next_cursor`."""
    if not value:
        return None
    invalid = BadRequest("invalid cursor: pass the next_cursor of the previous page unchanged")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        at_text, _, id_text = raw.partition("|")
        at, number = datetime.fromisoformat(at_text), int(id_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if at.tzinfo is None or not 1 <= number <= BIGINT_MAX or not MIN_DAY <= at.date() <= MAX_DAY:
        raise invalid
    return Cursor(at, number)
