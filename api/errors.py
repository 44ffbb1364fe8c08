"""Refusals as `{"detail": "..."}` with the right status, never a stack trace.

- 422: a parameter or body field of the wrong type or form (FastAPI's validation),
  listed without the value that was sent (it can be a patient id);
- 400: a value of the right form that means nothing (an end before the start, a
  cursor that is not one, a QI grain that does not exist);
- 409: an operator action that does not apply now (core.operations.OperationError,
  its message as is);
- 503: the database or Orthanc does not answer, or a query ran out of time;
- 500: anything else, logged by type only (SQL parameters never reach the log:
  core.db.make_engine hides them).
"""

from __future__ import annotations

import logging

import psycopg.errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from core.operations import OperationError
from core.orthanc_client import OrthancError
from core.qi import QiError

log = logging.getLogger("api")


class BadRequest(ValueError):
    """A well-formed value that means nothing here (400); the message says which and why."""


def _json(status: int, detail: object) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return _json(422, errors)


def _database(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SQLAlchemyError)
    orig = getattr(exc, "orig", None)
    if isinstance(orig, psycopg.errors.QueryCanceled):
        return _json(503, "the query took too long and was cancelled; narrow the filters (a shorter date range)")
    if isinstance(exc, OperationalError | InterfaceError):
        log.warning("database unavailable", extra={"fields": {"error": type(orig or exc).__name__}})
        return _json(503, "the database is unavailable")
    if isinstance(exc, DBAPIError) and isinstance(orig, psycopg.errors.DataError):
        return _json(400, "a parameter has a value the database cannot use")
    log.error("database error", extra={"fields": {"error": type(orig or exc).__name__}})
    return _json(500, "internal error")


def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Anything no handler knows (called by api/access.py's middleware, so that it is not
    re-raised to the server's log with its message, which could hold a value)."""
    route = request.scope.get("route")
    log.error("unexpected error", extra={"fields": {"error": type(exc).__name__,
                                                    "route": getattr(route, "path", None)}})
    return _json(500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(BadRequest, lambda _, exc: _json(400, str(exc)))
    app.add_exception_handler(QiError, lambda _, exc: _json(400, str(exc)))
    app.add_exception_handler(OperationError, lambda _, exc: _json(409, str(exc)))
    app.add_exception_handler(OrthancError, lambda _, exc: _json(503, f"Orthanc: {str(exc)[:300]}"))
    app.add_exception_handler(SQLAlchemyError, _database)
