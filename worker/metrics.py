"""Prometheus metrics of the worker, served on WORKER_HEALTH_PORT at /metrics (and through the API's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

CHANGES_PROCESSED = Counter(
    "hub_changes_processed", "Orthanc /changes entries processed", ["change_type"], registry=REGISTRY
)
CHANGES_FAILED = Counter(
    "hub_changes_skipped", "Changes skipped after repeated processing errors (see the log)", registry=REGISTRY
)
CURSOR_LAG = Gauge("hub_cursor_lag", "Orthanc's last change sequence minus the worker's cursor", registry=REGISTRY)
JOBS_BY_STATE = Gauge("hub_jobs", "Routing jobs by state", ["state"], registry=REGISTRY)
SEND_SECONDS = Histogram(
    "hub_send_duration_seconds", "Duration of one Orthanc store job, start to outcome", ["destination", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900), registry=REGISTRY,
)
AI_ROUND_TRIP = Histogram(
    "hub_ai_round_trip_seconds", "AI sent to first AI result received",
    buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200), registry=REGISTRY,
)
FAILURES = Counter("hub_send_failures", "Failed send attempts by destination", ["destination"], registry=REGISTRY)
STABILITY_RECOVERED = Counter(
    "hub_stability_recovered", "Studies routed by the stability sweep (Orthanc never announced them stable)",
    registry=REGISTRY,
)
GAPS_FILLED = Counter(
    "hub_changes_out_of_order", "Changes handled after later ones (committed late by a concurrent Orthanc node)",
    registry=REGISTRY,
)
ROUTED_JOBS = Counter("hub_jobs_queued", "Jobs queued by the rules", ["purpose"], registry=REGISTRY)
STORAGE_FREE = Gauge(
    "hub_dicom_storage_free_bytes", "Free bytes on DICOM_STORAGE (Orthanc refuses new data at 0)", registry=REGISTRY
)
STORAGE_TOTAL = Gauge("hub_dicom_storage_total_bytes", "Size of the DICOM_STORAGE filesystem", registry=REGISTRY)
# Per destination, refreshed from the database on each scrape (worker/health.py). Every
# destination that is held or has waiting jobs gets one held series per kind, 0 or 1, so
# `hub_destination_held{kind="outage"} == 1` alerts and a change of kind leaves no stale 1.
DESTINATION_HELD = Gauge(
    "hub_destination_held", "1 while the destination is on hold of this kind (outage: automatic, operator: a person)",
    ["destination", "kind"], registry=REGISTRY,
)
DESTINATION_HELD_SINCE = Gauge(
    "hub_destination_held_since_seconds", "Seconds since the destination was put on hold (0 when not held)",
    ["destination"], registry=REGISTRY,
)
DESTINATION_JOBS_WAITING = Gauge(
    "hub_destination_jobs_waiting", "Jobs for the destination that are queued, waiting to retry or being sent",
    ["destination"], registry=REGISTRY,
)
# Issue 15. A series that claims an AI_RESULT_AETS sender from an address not registered
# for that AE title is kept unrouted (core/sender_checks.py); the label is one of those AETs.
SENDER_REJECTED = Counter(
    "hub_sender_rejected", "Series claiming an AI sender AET from an unregistered address, kept unrouted",
    ["sender_aet"], registry=REGISTRY,
)
RULES_REFUSED = Gauge(
    "hub_rules_refused", "1 while the saved routing.yml is refused and the worker runs on older rules",
    registry=REGISTRY,
)
# Issue 18. Open incidents per kind (worker/alerter.py), refreshed from the database on each
# scrape (worker/health.py): every kind has a series, 0 when none is open.
INCIDENTS_OPEN = Gauge(
    "hub_incidents_open", "Open alert incidents by kind (the app's Alerts page, ./orthanc alerts)", ["kind"],
    registry=REGISTRY,
)
# Issue 18, retention (worker/retention.py, core/retention.py). The counter is this worker's
# deletions; the gauges are read from the database on each scrape (worker/health.py), so every
# worker reports the same last run and total, whichever of them (or an operator) ran it.
RETENTION_PURGED = Counter(
    "hub_retention_purged", "Studies this worker's retention deleted from Orthanc (their records stay, purged)",
    registry=REGISTRY,
)
RETENTION_STUDIES_PURGED = Gauge(
    "hub_retention_studies_purged", "Studies marked purged in the QI database (deleted from Orthanc by retention)",
    registry=REGISTRY,
)
RETENTION_LAST_RUN = Gauge(
    "hub_retention_last_run_timestamp_seconds", "Unix time of the last retention run (0: never)", registry=REGISTRY,
)
