"""Alembic environment: the URL comes from `core.db.migrate()` or the hub's settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.settings import load_settings

url = context.config.attributes.get("url") or load_settings().pg_url()
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
