"""The closed vocabularies of the core tables: job states, purposes, event types, kinds.

Each enum mirrors a CHECK constraint of the schema (tests/integration/test_states_schema.py
compares them with the live database), so Python and SQL cannot drift apart. They are
StrEnums: a member is its text, so it binds as a SQL parameter and compares equal to the
value read back from a row.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """routing_jobs.state. queued/failed wait, sending is with Orthanc, the rest are final."""

    QUEUED = "queued"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


# What an operator may do to a job in each state (core/operations.py enforces, the app offers).
RETRYABLE: frozenset[JobState] = frozenset({JobState.FAILED, JobState.DEAD, JobState.CANCELLED})
CANCELLABLE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.FAILED, JobState.DEAD})


class Purpose(StrEnum):
    """routing_jobs.purpose: a send to the AI node, or a delivery to a clinical destination."""

    AI = "ai"
    DELIVERY = "delivery"


class Payload(StrEnum):
    """routing_jobs.payload: which series of the study a job carries."""

    STUDY = "study"
    AI_RESULTS = "ai_results"
    MATCHED = "matched"


class SeriesKind(StrEnum):
    """series.kind: from a modality, an AI result from the AI node, or refused by sender checks."""

    ORIGINAL = "original"
    AI_RESULT = "ai_result"
    REJECTED = "rejected"


class LinkedBy(StrEnum):
    """series.linked_by: how an AI result series found its original study."""

    STUDY_UID = "study_uid"
    ACCESSION = "accession"
    UNMATCHED = "unmatched"


class StudyStatus(StrEnum):
    """studies.status, derived by recorder.refresh_study_status from the study's jobs."""

    RECEIVED = "received"
    UNROUTED = "unrouted"
    AI_PENDING = "ai_pending"
    AI_OVERDUE = "ai_overdue"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class EventType(StrEnum):
    """events.type: every step of a study's timeline."""

    RECEIVED = "received"
    STABLE = "stable"
    RULE_MATCHED = "rule_matched"
    UNROUTED = "unrouted"
    AI_SENT = "ai_sent"
    AI_RESULT_RECEIVED = "ai_result_received"
    AI_RESULT_STABLE = "ai_result_stable"
    AI_RESULT_UNMATCHED = "ai_result_unmatched"
    AI_OVERDUE = "ai_overdue"
    DELIVERY_QUEUED = "delivery_queued"
    DELIVERY_STARTED = "delivery_started"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    DELIVERY_DEAD = "delivery_dead"
    MANUAL_RETRY = "manual_retry"
    RESEND = "resend"
    CANCELLED = "cancelled"
    SENDER_REJECTED = "sender_rejected"
    PURGED = "purged"  # retention deleted the study from Orthanc (worker/retention.py); its records stay


class HoldKind(StrEnum):
    """destination_holds.kind: who put a destination on hold, and so who lifts it.

    OPERATOR: a person (app or `./orthanc hold`); only a person releases it.
    OUTAGE: the worker, when the destination stopped answering C-ECHO; the worker
    probes it and releases it when it answers again.
    """

    OPERATOR = "operator"
    OUTAGE = "outage"


class AuditSource(StrEnum):
    """audit_log.source: which surface made the change."""

    UI = "ui"
    CLI = "cli"
    WORKER = "worker"
    SETUP = "setup"
    API = "api"  # the workflow API on ROUTING_API_PORT
    VIEWER = "viewer"  # the OHIF gateway on OHIF_PORT


class Role(StrEnum):
    """users.role, in increasing order of what it grants."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class IncidentKind(StrEnum):
    """incidents.kind: what the alerter watches for; one open incident per kind and key."""

    JOB_DEAD = "job_dead"
    AI_OVERDUE = "ai_overdue"
    DESTINATION_OUTAGE = "destination_outage"
    DISK_LOW = "disk_low"
    NO_LIVE_WORKER = "no_live_worker"
    ORTHANC_UNREACHABLE = "orthanc_unreachable"
    DATABASE_UNREACHABLE = "database_unreachable"
    RULES_REFUSED = "rules_refused"
    SENDER_REJECTED = "sender_rejected"
    TEST = "test"


class AlertChannel(StrEnum):
    """alert_deliveries.channel."""

    WEBHOOK = "webhook"
    EMAIL = "email"


class AlertMessage(StrEnum):
    """alert_deliveries.message: which message about an incident was sent."""

    OPEN = "open"
    REPEAT = "repeat"
    RESOLVE = "resolve"
    TEST = "test"
