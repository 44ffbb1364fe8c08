"""Display helpers: times in the site's zone, ages, and tables ready for st.dataframe.

All timestamps are stored in UTC; operators read them in the configured TZ, and the
zone's name is always shown next to them so nobody has to guess.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
# (unit, its name, the next smaller unit, its name) for `age`, largest first
_AGE_UNITS = ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s"))


def local(value: datetime | None, zone: ZoneInfo, fmt: str = TS_FORMAT) -> str:
    return value.astimezone(zone).strftime(fmt) if value is not None else ""


def age(seconds: float | None) -> str:
    """A short human duration: 42 s, 3 min 12 s, 2 h 5 min, 4 d 3 h; a zero second part is left
    out (30 min, 1 h: thresholds read as set, not "1 h 0 min")."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 60:
        return f"{sign}{s} s"
    big, big_unit, small, small_unit = next(u for u in _AGE_UNITS if s >= u[0])
    rest = s % big // small
    return f"{sign}{s // big} {big_unit}" + (f" {rest} {small_unit}" if rest else "")


def short_age(seconds: float | None) -> str:
    """The duration in its largest unit only (42 s, 26 min, 2 h, 4 d), for a KPI card whose
    column is too narrow for `age` (the exact value goes in the card's help)."""
    if seconds is None:
        return "–"
    s = abs(int(round(seconds)))
    sign = "-" if seconds < 0 and s else ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{sign}{s // size} {unit}"
    return f"{sign}{s} s"


def dicom_datetime(date: str | None, time: str | None) -> str:
    """DICOM DA/TM (20261128, 034842.123) as 2026-11-28 03:48:42; anything odd is shown as is."""
    if not date:
        return "–"
    text = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date
    clock = (time or "").split(".")[0]
    if len(clock) >= 4 and clock.isdigit():
        text += f" {clock[:2]}:{clock[2:4]}" + (f":{clock[4:6]}" if len(clock) >= 6 else "")
    elif clock:
        text += f" {clock}"
    return text


def compact_json(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def table(
    rows: Sequence[dict[str, Any]],
    columns: dict[str, str],
    zone: ZoneInfo,
    *,
    json_columns: Iterable[str] = (),
) -> pd.DataFrame:
    """A DataFrame with `columns` (key -> header), datetimes rendered in `zone`.

    A column that holds times gets the zone in its header ("Created (America/Los_Angeles)")
    unless the header already names it, so that no time on a page is without its zone.
    """
    json_cols = set(json_columns)
    data: dict[str, list[Any]] = {header: [] for header in columns.values()}
    timed: set[str] = set()
    for row in rows:
        for key, header in columns.items():
            value = row.get(key)
            if isinstance(value, datetime):
                value = local(value, zone)
                timed.add(header)
            elif key in json_cols:
                value = compact_json(value)
            data[header].append(value)
    frame = pd.DataFrame(data)
    return frame.rename(columns={h: f"{h} ({zone.key})" for h in timed if zone.key not in h})
