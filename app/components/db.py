"""Database transactions for pages: read-only reads with a time limit, audited writes.

A page never builds its own engine (app.context caches one per process). Reads run
in a READ ONLY transaction with a statement timeout, so a runaway filter cannot
hold the UI or change anything; writes go through core/operations.py or core/auth.py
inside `writing()`, which commits or rolls back as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from app.context import get_engine
from core.orthanc_client import OrthancError
from core.queries import limit_statement_time

log = logging.getLogger("hub.app")


@contextmanager
def reading(timeout_ms: int = 8000) -> Iterator[Connection]:
    with get_engine().connect() as conn, conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        limit_statement_time(conn, timeout_ms)
        yield conn


@contextmanager
def writing(timeout_ms: int = 15000) -> Iterator[Connection]:
    with get_engine().begin() as conn:
        limit_statement_time(conn, timeout_ms)
        yield conn


def describe(exc: BaseException) -> str:
    """A one-line, PHI-free description of a failure, fit for the page and the log.

    SQLAlchemy's own message embeds the SQL parameters (which can be a patient id
    typed into a filter), so only the driver's first line is kept.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        if "statement timeout" in first:
            return "the query took too long and was cancelled; narrow the filters (for example a date range)"
        return f"{type(exc.orig).__name__}: {first[:300]}"
    if isinstance(exc, SQLAlchemyError):
        return type(exc).__name__
    if isinstance(exc, OrthancError):
        return str(exc)[:400]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def show_error(what: str, exc: BaseException) -> None:
    """Tell the operator plainly that something failed, and log it without PHI."""
    message = describe(exc)
    log.warning("%s failed: %s", what, message)
    if isinstance(exc, OperationalError) and "statement timeout" not in message:
        st.error(f"{what}: the database is unavailable ({message}).")
    else:
        st.error(f"{what}: {message}")
