"""Report exports: one row per study (columns: docs/qi.md, "Exports") and a daily summary, CSV or XLSX.

Both read the QI views through core.qi, so an export shows exactly the numbers of the
pages and of Grafana. The per-study export streams: rows come from a server-side
cursor a batch at a time and go straight to the file (csv.writer, or xlsxwriter in
constant_memory mode), so memory stays flat whatever the date range.

Formats: timestamps are ISO 8601 with the offset of the configured TZ, to the
millisecond (e.g. 2026-03-08T03:05:50.000-07:00); durations are seconds rounded to
the millisecond; lists (destinations, rules) are joined with ";". Patient names and
ids are never selected.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import pandas as pd
import xlsxwriter
from sqlalchemy import Connection

from core import qi
from core.qi import QiFilter

FORMATS: tuple[str, ...] = ("csv", "xlsx")
LIST_SEPARATOR = ";"
SUMMARY_SHEET = "daily summary"
STUDY_SHEET = "studies"


@dataclass(frozen=True)
class ExportResult:
    rows: int
    columns: tuple[str, ...]


def format_value(value: Any, zone: ZoneInfo) -> str | float | int | None:
    """One cell: ISO timestamps in `zone`, rounded seconds, joined lists, plain scalars."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(zone).isoformat(timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list | tuple):
        return LIST_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def format_rows(rows: Iterable[dict[str, Any]], columns: tuple[str, ...], zone: ZoneInfo) -> Iterator[list[Any]]:
    for row in rows:
        yield [format_value(row.get(column), zone) for column in columns]


def csv_chunks(columns: tuple[str, ...], rows: Iterable[list[Any]], *, batch: int = 1000) -> Iterator[str]:
    """The CSV text (header plus rows; empty cells for NULL), `batch` rows at a time.

    The one CSV writer of the exports: write_csv writes it to a file, the workflow API
    streams it as an HTTP response (api/qi_routes.py).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for count, row in enumerate(rows, start=1):
        writer.writerow(["" if v is None else v for v in row])
        if count % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_csv(out: IO[str], columns: tuple[str, ...], rows: Iterable[list[Any]]) -> int:
    """Header plus rows; empty cells for NULL. Returns the number of data rows."""
    count = 0

    def counted() -> Iterator[list[Any]]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    for chunk in csv_chunks(columns, counted()):
        out.write(chunk)
    return count


def write_xlsx(target: str | Path | IO[bytes], sheet: str, columns: tuple[str, ...],
               rows: Iterable[list[Any]]) -> int:
    """One sheet written row by row (constant_memory: each row is flushed to disk)."""
    workbook = xlsxwriter.Workbook(target, {"constant_memory": True, "strings_to_numbers": False,
                                            "strings_to_formulas": False, "strings_to_urls": False})
    try:
        worksheet = workbook.add_worksheet(sheet)
        bold = workbook.add_format({"bold": True})
        worksheet.write_row(0, 0, columns, bold)
        worksheet.freeze_panes(1, 0)
        count = 0
        for count, row in enumerate(rows, start=1):
            worksheet.write_row(count, 0, row)
        return count
    finally:
        workbook.close()


def _write(fmt: str, output: Path | IO[bytes], sheet: str, columns: tuple[str, ...],
           rows: Iterable[list[Any]]) -> int:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use csv or xlsx")
    if fmt == "xlsx":
        return write_xlsx(output, sheet, columns, rows)
    if isinstance(output, Path):
        with output.open("w", encoding="utf-8", newline="") as handle:
            return write_csv(handle, columns, rows)
    wrapper = io.TextIOWrapper(output, encoding="utf-8", newline="", write_through=True)
    try:
        return write_csv(wrapper, columns, rows)
    finally:
        wrapper.detach()


def export_studies(conn: Connection, flt: QiFilter, zone: ZoneInfo, fmt: str,
                   output: Path | IO[bytes], *, batch: int = 5000) -> ExportResult:
    """The per-study export (qi.STUDY_COLUMNS) of studies first received in the filter's days."""
    rows = format_rows(qi.iter_studies(conn, flt, zone, batch=batch), qi.STUDY_COLUMNS, zone)
    return ExportResult(_write(fmt, output, STUDY_SHEET, qi.STUDY_COLUMNS, rows), qi.STUDY_COLUMNS)


def export_summary(conn: Connection, flt: QiFilter, zone: ZoneInfo, fmt: str,
                   output: Path | IO[bytes]) -> ExportResult:
    """One row per local day (qi_daily_summary): small, so it is read at once."""
    frame = qi.daily_summary(conn, flt, zone)
    columns = tuple(frame.columns)
    records = (dict(zip(columns, values, strict=True)) for values in frame.itertuples(index=False, name=None))
    rows = format_rows((_plain(r) for r in records), columns, zone)
    return ExportResult(_write(fmt, output, SUMMARY_SHEET, columns, rows), columns)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """pandas NaN/NA and numpy scalars back to None and Python numbers."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if not isinstance(value, list | tuple) and pd.isna(value):
            out[key] = None
        elif isinstance(value, pd.Timestamp):
            out[key] = value.to_pydatetime()
        elif hasattr(value, "item") and not isinstance(value, datetime | date):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def export_bytes(conn: Connection, flt: QiFilter, zone: ZoneInfo, fmt: str, *, summary: bool) -> bytes:
    """An export in memory, for the app's download buttons (bounded by the page's date range)."""
    buffer = io.BytesIO()
    if summary:
        export_summary(conn, flt, zone, fmt, buffer)
    else:
        export_studies(conn, flt, zone, fmt, buffer)
    return buffer.getvalue()


def frame_bytes(frame: Any, fmt: str, zone: ZoneInfo, sheet: str = "data") -> bytes:
    """A chart's DataFrame as CSV or XLSX bytes, formatted like the exports."""
    columns = tuple(str(c) for c in frame.columns)
    records = (dict(zip(columns, values, strict=True)) for values in frame.itertuples(index=False, name=None))
    rows = format_rows((_plain(r) for r in records), columns, zone)
    buffer = io.BytesIO()
    _write(fmt, buffer, sheet[:31], columns, rows)
    return buffer.getvalue()
