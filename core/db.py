"""Database access: engine creation, migrations, and the one Core table object in use.

The migrations in db/migrations are the source of truth for the schema, db/sql for the
QI views and SQL functions (core/schema_sql.py). `app_users` mirrors its table for
core/auth.py's queries (tests/integration/test_recorder_operations.py checks it against
the migrated database); other modules write their SQL as text.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Column, Engine, Integer, MetaData, Table, Text, create_engine
from sqlalchemy.dialects.postgresql import TIMESTAMP

from core.settings import PROJECT_ROOT, Settings

metadata = MetaData()
TZ = TIMESTAMP(timezone=True)

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
