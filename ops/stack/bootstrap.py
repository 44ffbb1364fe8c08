"""Everything PostgreSQL must hold before Orthanc, the worker and the app start.

Idempotent by design, so every `make run` calls it: it creates the cluster when
POSTGRES_STORAGE is empty, brings the roles, passwords and databases in line with
`.env` (a password changed in `.env` is applied here), runs the migrations and
creates the first app admin when there is none. The compose stack's one-shot `init`
service runs the same code.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

import psycopg

from core.auth import ensure_admin
from core.db import engine_for, migrate
from core.settings import Settings
from ops import pgcluster

log = logging.getLogger(__name__)


class BootstrapError(RuntimeError):
    """The database could not be prepared; the message says what to check."""


@dataclass(frozen=True)
class BootstrapResult:
    admin_created: bool


def superuser_password(settings: Settings) -> str:
    """The cluster superuser's password, kept mode 600 in STATE_DIR (never in .env)."""
    return pgcluster.superuser_password_file(settings.state_dir)


def init_cluster(settings: Settings) -> bool:
    """Create the cluster in POSTGRES_STORAGE unless there is one; True when created."""
    settings.postgres_storage.parent.mkdir(parents=True, exist_ok=True)
    return pgcluster.init_cluster(
        settings.postgres_storage, settings.postgres_port, settings.bind_address,
        superuser_password=superuser_password(settings),
    )


def _reset_superuser_password(settings: Settings, password: str) -> bool:
    """Re-set the superuser password over the local socket (peer authentication as the
    `postgres` OS user). Used when STATE_DIR was removed but the cluster was kept, so
    the password file no longer matches. Only possible as root."""
    socket_dir = pgcluster._socket_dir(settings.postgres_storage)  # the same rule as the cluster itself uses
    if pgcluster.service_user() is None or not socket_dir:
        return False
    statement = f"ALTER ROLE {pgcluster.SUPERUSER} PASSWORD '{pgcluster.scram_verifier(password)}';\n"
    proc = subprocess.run(
        ["runuser", "-u", pgcluster.SERVICE_USER, "--", str(pgcluster.PG_BIN / "psql"), "-X", "-q",
         "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", str(settings.postgres_port), "-d", "postgres"],
        input=statement, capture_output=True, text=True, timeout=30, check=False,
    )
    return proc.returncode == 0


def bootstrap_databases(settings: Settings, password: str | None = None) -> BootstrapResult:
    """Roles, databases, migrations and the first admin, on a running PostgreSQL."""
    password = password or superuser_password(settings)
    try:
        pgcluster.ensure_roles_and_databases(settings, superuser_password=password)
    except psycopg.OperationalError as exc:
        if "password authentication failed" not in str(exc) or not _reset_superuser_password(settings, password):
            raise BootstrapError(
                f"cannot log in to PostgreSQL at {settings.postgres_host}:{settings.postgres_port} as the "
                f"superuser: {str(exc).strip().splitlines()[0]}\n"
                f"The cluster in {settings.postgres_storage} may have been created with another password than "
                f"{settings.state_dir / 'postgres-superuser.secret'}."
            ) from None
        log.warning("superuser password re-set from STATE_DIR over the local socket")
        pgcluster.ensure_roles_and_databases(settings, superuser_password=password)
    migrate(settings.pg_url())
    engine = engine_for(settings)
    try:
        with engine.begin() as conn:
            created = ensure_admin(conn, settings)
    finally:
        engine.dispose()
    return BootstrapResult(admin_created=created)
