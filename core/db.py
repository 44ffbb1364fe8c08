"""Database access: engine creation, migrations, and the Core table objects.

The migrations in db/migrations are the source of truth for the schema; the Table
objects here mirror them for queries (tests check they match the migrated database).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from core.settings import PROJECT_ROOT, Settings

metadata = MetaData()
TZ = TIMESTAMP(timezone=True)

studies = Table(
    "studies", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("study_uid", Text, nullable=False, unique=True),
    Column("orthanc_id", Text, unique=True),
    Column("patient_id", Text),
    Column("patient_name", Text),
    Column("accession_number", Text),
    Column("modalities", Text),
    Column("description", Text),
    Column("study_date", Text),
    Column("study_time", Text),
    Column("source_aet", Text),
    Column("first_received_at", TZ),
    Column("last_received_at", TZ),
    Column("stable_at", TZ),
    Column("last_stable_at", TZ),
    Column("status", Text, nullable=False),
    Column("orphan_ai_result", Boolean, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

series = Table(
    "series", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("series_uid", Text, nullable=False, unique=True),
    Column("orthanc_id", Text, unique=True),
    Column("study_id", BigInteger, nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("linked_by", Text),
    Column("sender_aet", Text),
    Column("modality", Text),
    Column("description", Text),
    Column("series_number", Text),
    Column("instance_count", Integer, nullable=False),
    Column("first_received_at", TZ),
    Column("last_received_at", TZ),
    Column("stable_at", TZ),
    Column("routed_at", TZ),
    Column("routed_instances", Integer),
    Column("created_at", TZ, nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("study_id", BigInteger, nullable=False),
    Column("series_id", BigInteger),
    Column("job_id", BigInteger),
    Column("type", Text, nullable=False),
    Column("at", TZ, nullable=False),
    Column("destination", Text),
    Column("detail", JSONB, nullable=False),
)

routing_jobs = Table(
    "routing_jobs", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("study_id", BigInteger, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("rule_name", Text),
    Column("payload", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TZ, nullable=False),
    Column("orthanc_job_id", Text),
    Column("claimed_by", Text),
    Column("last_error", Text),
    Column("last_error_code", Integer),
    Column("instances_sent", Integer),
    Column("created_at", TZ, nullable=False),
    Column("started_at", TZ),
    Column("finished_at", TZ),
    Column("updated_at", TZ, nullable=False),
    Column("send_intent_at", TZ),
)

job_series = Table(
    "job_series", metadata,
    Column("job_id", BigInteger, primary_key=True),
    Column("series_id", BigInteger, primary_key=True),
    Column("destination", Text, nullable=False),
    Column("is_resend", Boolean, nullable=False),
)

destination_holds = Table(
    "destination_holds", metadata,
    Column("destination", Text, primary_key=True),
    Column("held_at", TZ, nullable=False),
    Column("held_by", Text, nullable=False),
    Column("reason", Text),
    Column("kind", Text, nullable=False),
    Column("probe_failures", Integer, nullable=False),
    Column("last_probe_at", TZ),
    Column("next_probe_at", TZ),
    Column("last_error", Text),
)

worker_state = Table(
    "worker_state", metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

worker_heartbeats = Table(
    "worker_heartbeats", metadata,
    Column("worker_id", Text, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", TZ, nullable=False),
    Column("heartbeat_at", TZ, nullable=False),
    Column("owns_cursor", Boolean, nullable=False),
    Column("orthanc_ok", Boolean),
    Column("cursor_lag", BigInteger),
    Column("info", JSONB, nullable=False),
    Column("lock_key", Integer),
)

config_status = Table(
    "config_status", metadata,
    Column("name", Text, primary_key=True),
    Column("loaded_at", TZ),
    Column("checksum", Text),
    Column("error", Text),
    Column("error_at", TZ),
    Column("content", JSONB),
    Column("error_checksum", Text),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("at", TZ, nullable=False),
    Column("actor", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("before", JSONB),
    Column("after", JSONB),
)

app_users = Table(
    "app_users", metadata,
    Column("username", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("failed_logins", Integer, nullable=False),
    Column("locked_until", TZ),
    Column("last_login_at", TZ),
    Column("created_at", TZ, nullable=False),
)


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine that survives a restarted PostgreSQL (pre-ping) and never puts query
    parameters, which can hold patient data, into exception messages and logs."""
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)


def engine_for(settings: Settings, **kwargs: object) -> Engine:
    return make_engine(settings.pg_url(), **kwargs)


def alembic_config(url: str) -> Config:
    config = Config(str(Path(PROJECT_ROOT) / "alembic.ini"))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent)."""
    command.upgrade(alembic_config(url), revision)
