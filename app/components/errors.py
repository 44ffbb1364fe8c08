"""Error texts made readable for operators: whole, on one page, without raw REST framing.

An error recorded by the worker or returned by core.orthanc_client often starts with
the REST call that failed ("Orthanc POST /modalities/PACS/echo -> HTTP 500: ..."), which
says where it came from but hides what happened. `readable_error` puts what happened
first and keeps where it came from in brackets; nothing is cut off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import streamlit as st

_ORTHANC_CALL = re.compile(r"^Orthanc (?P<method>[A-Z]+) (?P<path>\S+) -> HTTP (?P<status>\d{3})(?:: (?P<details>.*))?$",
                           re.DOTALL)


def readable_error(text: str | None) -> str:
    """The whole error, what happened first: "Failed to establish association (Orthanc: HTTP 500 on POST ...)"."""
    if not text:
        return ""
    text = text.strip()
    match = _ORTHANC_CALL.match(text)
    if match:
        details = " ".join((match["details"] or "").split()) or "no details given"
        text = f"{details} (Orthanc: HTTP {match['status']} on {match['method']} {match['path']})"
    return text


def one_line(text: str | None) -> str:
    """The readable error on one line (whitespace and line breaks collapsed), for a table cell."""
    return " ".join(readable_error(text).split())


def errors_in_full(rows: Sequence[dict[str, Any]], *, id_key: str = "id", error_key: str = "last_error",
                   label: str = "Job", title: str = "Last errors in full") -> None:
    """Each distinct error of `rows` whole, with the rows that have it (a table cell cuts long text)."""
    grouped: dict[str, list[Any]] = {}
    for row in rows:
        error = readable_error(row.get(error_key))
        if error:
            grouped.setdefault(error, []).append(row.get(id_key))
    if not grouped:
        return
    st.markdown(f"**{title}**")
    for error, ids in grouped.items():
        st.caption(f"{label}{'s' if len(ids) > 1 else ''} " + ", ".join(f"#{i}" for i in _first(ids, 20))
                   + (f" and {len(ids) - 20} more" if len(ids) > 20 else ""))
        st.code(error, language=None, wrap_lines=True)


def _first(items: Iterable[Any], n: int) -> list[Any]:
    return list(items)[:n]
