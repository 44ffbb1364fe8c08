"""The worker's HTTP surface on WORKER_HEALTH_PORT: /health (JSON) and /metrics (Prometheus).

It binds to WORKER_HEALTH_HOST (loopback natively) and exposes no PHI: only counts,
states and sequence numbers. The workflow API (api/, on ROUTING_API_PORT) proxies
both to everyone else: /health open, /metrics with a token (docs/architecture.md,
"Processes").
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text

from core import alerts, queries
from core.states import HoldKind, IncidentKind, JobState
from worker.metrics import (
    DESTINATION_HELD,
    DESTINATION_HELD_SINCE,
    DESTINATION_JOBS_WAITING,
    INCIDENTS_OPEN,
    JOBS_BY_STATE,
    REGISTRY,
    RETENTION_LAST_RUN,
    RETENTION_STUDIES_PURGED,
)

log = logging.getLogger(__name__)
_SCRAPE_LOCK = threading.Lock()


def refresh_job_gauges(engine: Engine) -> None:
    with engine.connect() as conn:
        counts: dict[str, int] = dict(conn.execute(text("SELECT state, count(*) FROM routing_jobs GROUP BY state")).all())
    for state in JobState:
        JOBS_BY_STATE.labels(state).set(counts.get(state, 0))


def refresh_incident_gauges(engine: Engine) -> None:
    """hub_incidents_open{kind}: every kind but test alerts, 0 when none is open."""
    with engine.connect() as conn:
        counts = alerts.open_counts(conn)
    for kind in IncidentKind:
        if kind is not IncidentKind.TEST:
            INCIDENTS_OPEN.labels(kind.value).set(counts.get(kind, 0))


def refresh_destination_gauges(engine: Engine) -> None:
    """Held state and waiting jobs per destination, from core.queries.destination_states.

    The labelled series are rebuilt on each scrape, so a destination that is no longer
    held and has nothing waiting disappears instead of keeping its last value.
    """
    with engine.connect() as conn:
        states = queries.destination_states(conn)
    for gauge in (DESTINATION_HELD, DESTINATION_HELD_SINCE, DESTINATION_JOBS_WAITING):
        gauge.clear()
    for name, state in states.items():
        for kind in HoldKind:
            DESTINATION_HELD.labels(name, kind.value).set(1 if state.kind is kind else 0)
        DESTINATION_HELD_SINCE.labels(name).set(max(0.0, state.held_for_s or 0.0) if state.held else 0)
        DESTINATION_JOBS_WAITING.labels(name).set(state.jobs_waiting)


def refresh_retention_gauges(engine: Engine) -> None:
    """hub_retention_studies_purged and hub_retention_last_run_timestamp_seconds (core/retention.py)."""
    with engine.connect() as conn:
        state = queries.retention_state(conn)
    RETENTION_STUDIES_PURGED.set(state["purged_total"])
    RETENTION_LAST_RUN.set(state["ran_at"].timestamp() if state["ran_at"] else 0)


def serve(host: str, port: int, engine: Engine, health: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """Start the HTTP server in a daemon thread and return it (call .shutdown() to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                body = health()
                self._send(200 if body["status"] == "ok" else 503, "application/json", json.dumps(body).encode())
            elif self.path == "/metrics":
                # One scrape at a time: the destination gauges are cleared and refilled, and a
                # concurrent scrape must not render them half-filled.
                with _SCRAPE_LOCK:
                    try:
                        refresh_job_gauges(engine)
                        refresh_destination_gauges(engine)
                        refresh_incident_gauges(engine)
                        refresh_retention_gauges(engine)
                    except Exception:  # metrics must still answer while the database is down
                        log.warning("job and destination gauges not refreshed: database unavailable")
                    metrics = generate_latest(REGISTRY)
                self._send(200, CONTENT_TYPE_LATEST, metrics)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes every few seconds would flood the log
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
