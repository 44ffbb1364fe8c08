"""The workflow REST API on ROUTING_API_PORT: `python -m api` (uvicorn), supervisord program `api`.

Read endpoints (studies, timelines, jobs, destinations, QI, reports) and operator
actions (retry, cancel, resend, hold, release) over HTTP, for hospital systems and
scripts, with bearer tokens an admin creates in the app. It reads through
core/queries.py, core/qi.py and core/reports.py and changes things only through
core/operations.py, so it shows what the app shows and records what the app records.
It also serves the worker's /health (open) and /metrics (token) on the same port, by
proxying the worker's own server on WORKER_HEALTH_PORT (docs/architecture.md,
"Processes"; docs/api.md).
"""
