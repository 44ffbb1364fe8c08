"""JSON encoding for jsonb parameters (datetimes and paths become strings)."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Path, set, frozenset, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonable(value: Any) -> str:
    return json.dumps(value, default=_default, sort_keys=True)
