"""The workflow API's contract, without a database: docs/openapi.json is current, every route
but /health is behind a role, writes need the operator role, and the API's vocabularies
are core's."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from fastapi.routing import APIRoute

from api.__main__ import openapi_text
from api.app import create_app
from api.models import Grain, Group, ResendKind, StageName
from core import qi
from core.settings import PROJECT_ROOT
from core.states import SeriesKind

DOC = PROJECT_ROOT / "docs" / "openapi.json"


def _flat(routes: list[object]) -> list[object]:
    """FastAPI keeps an included router as one entry (its routes keep their own path, with /v1)."""
    found: list[object] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += _flat(list(inner.routes)) if inner is not None else [route]
    return found


def _routes() -> list[APIRoute]:
    return [r for r in _flat(list(create_app().routes)) if isinstance(r, APIRoute)]


def _roles(route: APIRoute) -> set[str]:
    return {d.call.__name__ for d in route.dependant.dependencies if d.call is not None
            and getattr(d.call, "__name__", "").startswith("require_")} | {
        name for d in route.dependant.dependencies for name in _nested(d)}


def _nested(dependant: object) -> set[str]:
    found = set()
    for sub in getattr(dependant, "dependencies", []):
        name = getattr(sub.call, "__name__", "")
        if name.startswith("require_"):
            found.add(name)
        found |= _nested(sub)
    return found


def test_the_checked_in_openapi_document_is_current() -> None:
    """After changing a route or a model: `python -m api --write-openapi docs/openapi.json`."""
    assert json.loads(DOC.read_text(encoding="utf-8")) == create_app().openapi(), (
        "docs/openapi.json is stale: run `.venv/bin/python -m api --write-openapi docs/openapi.json`")
    assert DOC.read_text(encoding="utf-8") == openapi_text()


def test_every_route_but_health_needs_a_role() -> None:
    routes = _routes()
    assert {r.path for r in routes} >= {"/health", "/metrics", "/openapi.json", "/v1/studies", "/v1/jobs"}
    for route in routes:
        roles = _roles(route)
        if route.path == "/health":
            assert roles == set(), "/health is open to probes"
        elif "POST" in route.methods:
            assert roles == {"require_operator"}, route.path
        else:
            assert roles == {"require_viewer"}, route.path
    schema = create_app().openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert ("security" in operation) == (path != "/health"), (method, path)
            if path != "/health":
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_no_interactive_docs() -> None:
    paths = {getattr(r, "path", None) for r in _flat(list(create_app().routes))}
    assert not paths & {"/docs", "/redoc", "/docs/oauth2-redirect"}


@pytest.mark.parametrize(("literal", "values"), [
    (Grain, qi.GRAINS), (Group, qi.GROUPS), (StageName, qi.STAGES),
    (ResendKind, ("all", SeriesKind.ORIGINAL, SeriesKind.AI_RESULT)),
])
def test_the_apis_vocabularies_are_cores(literal: object, values: tuple[str, ...]) -> None:
    assert list(get_args(literal)) == [str(v) for v in values]
