"""Who is calling, and what they may do: bearer tokens and the app's roles.

Every path but /health needs `Authorization: Bearer <token>`. The token is checked
before anything else of the request is looked at (the route, its parameters, its
body), so without a valid token nothing answers but 401: no route, parameter or
study id can be probed. The token's role is re-read on every request, so a revoked
token is refused at its next use.

Roles are the app's (core.auth.ROLES): a viewer reads, with patient names and ids
masked as on the app's pages (app/pages/studies.py shows them from operator up); an
operator also retries, cancels, resends, holds and releases. A role too low for a
route is 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api.errors import unexpected
from api.hub import Hub
from core import auth
from core.auth import role_at_least
from core.states import Role

log = logging.getLogger("api")

OPEN_PATHS = frozenset({"/health"})
MAX_BODY_BYTES = 64 * 1024  # the largest body the API takes is a resend's or a hold's few fields
# Documents the scheme in the OpenAPI document; the check itself is `authenticate` below.
bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="An API token, created by an admin in the app (Admin > API tokens).")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="routing-hub"'}
INVALID = {"WWW-Authenticate": 'Bearer realm="routing-hub", error="invalid_token"'}


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    @property
    def sees_patient_data(self) -> bool:
        """As the app: patient names and ids from the operator role up, masked for viewers."""
        return role_at_least(self.role, Role.OPERATOR)


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _verify(hub: Hub, raw: str) -> auth.TokenCheck:
    with hub.writing(timeout_ms=5000) as conn:  # a write: last_used_at
        return auth.verify_token(conn, raw)


async def _call(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    try:
        return await call_next(request)
    except Exception as exc:  # noqa: BLE001 - the one place that turns the unforeseen into a plain 500
        return unexpected(request, exc)


async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """HTTP middleware: 401 unless the request carries a valid token (or asks for /health);
    then one log line per request: method, route, status, duration, token name (no query,
    no body: they can hold patient data)."""
    started = time.perf_counter()
    caller: Caller | None = None
    if request.url.path in OPEN_PATHS:
        response = await _call(request, call_next)
    else:
        scheme, _, raw = request.headers.get("authorization", "").partition(" ")
        raw = raw.strip()
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            response = _problem(413, f"a request body has at most {MAX_BODY_BYTES} bytes")
        elif scheme.lower() != "bearer" or not raw:
            response = _problem(401, "missing bearer token: send the header `Authorization: Bearer <token>`",
                                CHALLENGE)
        else:
            try:
                check = await run_in_threadpool(_verify, hub_of(request), raw)
            except SQLAlchemyError as exc:
                log.warning("token check failed: database unavailable", extra={"fields": {"error": type(exc).__name__}})
                check = None
            if check is None:
                response = _problem(503, "the database is unavailable: the token cannot be checked")
            elif check.token is None:
                response = _problem(401, check.problem, INVALID)
            else:
                caller = Caller(check.token.name, check.token.role)
                request.state.caller = caller
                response = await _call(request, call_next)
    route = request.scope.get("route")
    # Probes of /health come every few seconds (compose, monitoring): not worth a line each.
    log.log(logging.DEBUG if request.url.path in OPEN_PATHS else logging.INFO, "request", extra={"fields": {
        "method": request.method, "route": getattr(route, "path", None) or "(none)",
        "status": response.status_code, "ms": round((time.perf_counter() - started) * 1000, 1),
        "token": caller.name if caller else None,
    }})
    return response


def require(minimum: Role) -> Callable[..., Caller]:
    """A route dependency: the caller, when their role is at least `minimum`; else 403."""

    def dependency(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:  # only if the middleware was bypassed: refuse
            raise HTTPException(401, "missing bearer token", headers=CHALLENGE)
        if not role_at_least(caller.role, minimum):
            raise HTTPException(403, f"this needs the {minimum} role; the token {caller.name!r} has the "
                                     f"{caller.role} role")
        return caller

    dependency.__name__ = f"require_{minimum}"
    return dependency


viewer = require(Role.VIEWER)
operator = require(Role.OPERATOR)
