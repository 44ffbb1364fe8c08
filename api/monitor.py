"""/health (open) and /metrics (a token), proxied from the worker's own server on WORKER_HEALTH_PORT.

The worker keeps serving both itself (worker/health.py), on loopback: the numbers live
in its process (cursor, heartbeat, send histograms). The API passes each answer on as
it is, status code included, so a probe of ROUTING_API_PORT/health (make status, the
compose healthchecks, load balancers) reads the worker's document unchanged. When the
worker does not answer, /health is a 503 in the same shape with status "down".
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api.access import Caller, hub_of, viewer
from api.models import Problem

router = APIRouter(tags=["monitoring"])


@router.get("/health", summary="The worker's health (no token needed)",
            description="Orthanc, database, cursor lag, heartbeat, rules error, free space on DICOM_STORAGE. "
                        "HTTP 200 when ok, 503 when degraded or down; `problems` says why.",
            responses={200: {"description": "ok"}, 503: {"description": "degraded, or the worker is down"}})
def health(request: Request) -> Response:
    hub = hub_of(request)
    try:
        answer = hub.worker.get("/health")
        if answer.headers.get("content-type", "").startswith("application/json"):
            return Response(answer.content, status_code=answer.status_code, media_type="application/json")
        problem = f"the worker's health server answered HTTP {answer.status_code} without a health document"
    except httpx.HTTPError as exc:
        problem = f"the worker does not answer on its health port ({type(exc).__name__})"
    body: dict[str, Any] = {"status": "down", "problems": [problem], "orthanc": None, "database": None}
    return JSONResponse(body, status_code=503)


@router.get("/metrics", summary="The worker's Prometheus metrics (a token of any role)",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       401: {"model": Problem, "description": "no token, or an invalid, revoked or expired one"},
                       403: {"model": Problem, "description": "the token's role is too low"},
                       503: {"description": "the worker does not answer"}})
def metrics(request: Request, caller: Annotated[Caller, Depends(viewer)]) -> Response:
    hub = hub_of(request)
    try:
        answer = hub.worker.get("/metrics")
    except httpx.HTTPError as exc:
        return Response(f"the worker does not answer on its health port ({type(exc).__name__})\n",
                        status_code=503, media_type="text/plain")
    return Response(answer.content, status_code=answer.status_code,
                    media_type=answer.headers.get("content-type", "text/plain"))
