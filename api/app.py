"""The FastAPI application: routes, the token check, error handling, the OpenAPI document.

`create_app(settings)` is what `python -m api` serves; `create_app()` without settings
builds the same routes without touching a database (docs/openapi.json is generated from
it, and tests/unit/test_api_schema.py checks that the checked-in file is current).
The interactive docs (/docs, /redoc) are off: they load scripts from the Internet. The
OpenAPI document is served at /openapi.json, to a token like every other path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from api import errors, monitor, qi_routes, reads, writes
from api.access import Caller, authenticate, viewer
from api.hub import Hub
from api.models import Problem
from core.settings import Settings, load_settings

API_VERSION = "1.0.0"
DESCRIPTION = """\
The routing hub's workflow API: studies and their stages, routing jobs, destinations and
their holds, QI figures and reports, and the operator's actions (retry, cancel, resend,
hold, release).

Every path but `/health` needs `Authorization: Bearer <token>`, with a token an admin
creates in the app (Admin > API tokens). A viewer token reads, with patient names and ids
masked; an operator or admin token also sees them and may act. Actions are audited with
the token's name and the source `api`.
"""
DOCUMENTED_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an invalid, revoked or expired one"},
    403: {"model": Problem, "description": "the token's role is too low"},
}


def _security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def no_store(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"  # patient data must not stay in caches
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def create_app(settings: Settings | None = None, *, hub: Hub | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.hub is None:
            app.state.hub = Hub.from_settings(load_settings())
        try:
            yield
        finally:
            app.state.hub.close()

    app = FastAPI(title="Routing hub workflow API", version=API_VERSION, description=DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.hub = hub or (Hub.from_settings(settings) if settings is not None else None)
    errors.install(app)
    # Starlette runs the middleware added last first: the headers go on every answer, 401s included.
    app.middleware("http")(authenticate)
    _security_headers(app)
    app.include_router(monitor.router)
    for module in (reads, writes, qi_routes):
        app.include_router(module.router, responses=DOCUMENTED_REFUSALS)  # each has the prefix /v1

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(_: Annotated[Caller, Depends(viewer)]) -> JSONResponse:
        return JSONResponse(app.openapi())

    return app
