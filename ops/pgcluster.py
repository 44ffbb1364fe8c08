"""A PostgreSQL 15 cluster for the hub, managed without Docker or systemd.

Used by the native stack (supervisord runs `postgres_argv()` in the foreground) and
by the test harness (throwaway clusters on free ports). `initdb` and `postgres`
refuse to run as root, so when we are root every command runs as the `postgres`
OS user and the data directory is handed to that user.

Authentication: local (Unix socket) connections use `peer`, TCP connections use
`scram-sha-256` for every role. Passwords are sent to the server as SCRAM verifiers
computed here, so no plain password reaches PostgreSQL's statement log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from core.settings import Settings
from ops import datadirs

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
GRAFANA_ROLE = "grafana_ro"
# Unix socket paths are limited to 107 bytes; beyond that the socket goes nowhere.
_MAX_SOCKET_DIR = 80


class PgClusterError(RuntimeError):
    """A PostgreSQL command failed; the message carries its output."""


def service_user() -> str | None:
    """The OS user PostgreSQL must run as: `postgres` when we are root, else None (us)."""
    return SERVICE_USER if os.geteuid() == 0 else None


def _as_service_user(argv: list[str]) -> list[str]:
    user = service_user()
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _run(argv: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(
        _as_service_user(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise PgClusterError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stdout}{proc.stderr}".strip())
    return proc.stdout


def _give_to_service_user(path: Path) -> None:
    """chown `path` (recursively) to the service user when we are root."""
    user = service_user()
    if not user:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _check_reachable(datadir: Path) -> None:
    """Fail early and clearly when the service user cannot reach the data directory."""
    user = service_user()
    if not user:
        return
    proc = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(datadir)], check=False)
    if proc.returncode != 0:
        raise PgClusterError(
            f"the {user} user cannot write {datadir}: every parent directory must be "
            "traversable (chmod o+x) by that user"
        )


def is_initialised(datadir: Path) -> bool:
    return (datadir / "PG_VERSION").is_file()


def init_cluster(
    datadir: Path,
    port: int,
    bind_address: str = "127.0.0.1",
    superuser_password: str | None = None,
    *,
    superuser: str = SUPERUSER,
) -> bool:
    """Create a cluster in `datadir` unless one is there; return True when created.

    `port` and `bind_address` are written into postgresql.conf so that a plain
    `pg_ctl start` serves the right address; `start()` and `postgres_argv()` also pass
    them on the command line, so changing `.env` needs no re-init.
    """
    datadir = Path(datadir).resolve()
    if is_initialised(datadir):
        return False
    if superuser_password is None:
        raise PgClusterError("a superuser password is needed to create a cluster")
    datadir.mkdir(parents=True, exist_ok=True)
    if any(entry.name != datadirs.MARKER for entry in datadir.iterdir()):
        raise PgClusterError(f"{datadir} is not empty and holds no PostgreSQL cluster")
    (datadir / datadirs.MARKER).unlink(missing_ok=True)  # initdb wants it empty; written again below
    datadir.chmod(0o700)
    _give_to_service_user(datadir)
    _check_reachable(datadir)
    # initdb wants an empty data directory, so the password file lives in a private
    # temporary directory that the service user can read.
    pwdir = Path(tempfile.mkdtemp(prefix="hub-initdb-"))
    try:
        pwfile = pwdir / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(superuser_password + "\n")
        _give_to_service_user(pwdir)
        _run([
            str(PG_BIN / "initdb"), "-D", str(datadir), "--username", superuser,
            "--pwfile", str(pwfile), "--auth-local=peer", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C.UTF-8",
        ])
    finally:
        shutil.rmtree(pwdir, ignore_errors=True)
    conf = datadir / "postgresql.conf"
    with conf.open("a", encoding="utf-8") as handle:
        handle.write(
            "\n# --- routing hub (ops/pgcluster.py)\n"
            f"listen_addresses = '{bind_address}'\n"
            f"port = {int(port)}\n"
            f"unix_socket_directories = '{_socket_dir(datadir)}'\n"
            "password_encryption = 'scram-sha-256'\n"
        )
    # The hub created this cluster, so `make uninstall` may remove it (ops/datadirs.py).
    datadirs.mark(datadir, "POSTGRES_STORAGE")
    return True


def _socket_dir(datadir: Path) -> str:
    """The data directory itself (private to the service user), when short enough."""
    return str(datadir) if len(str(datadir)) <= _MAX_SOCKET_DIR else ""


def postgres_argv(datadir: Path, port: int, bind_address: str = "127.0.0.1") -> list[str]:
    """Foreground server command line, to run as `service_user()` (supervisord `user=`)."""
    datadir = Path(datadir).resolve()
    return [
        str(PG_BIN / "postgres"), "-D", str(datadir), "-p", str(int(port)),
        "-c", f"listen_addresses={bind_address}",
        "-c", f"unix_socket_directories={_socket_dir(datadir)}",
        # Log lines in UTC, labelled, like the other services' (core/logs.py, ops/logredact.py).
        "-c", "log_timezone=UTC",
    ]


def start(
    datadir: Path, port: int, logfile: Path, bind_address: str = "127.0.0.1", timeout: float = 60
) -> None:
    """Start the cluster in the background with pg_ctl and wait until it accepts connections."""
    datadir = Path(datadir).resolve()
    logfile = Path(logfile).resolve()
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.touch(exist_ok=True)
    _give_to_service_user(logfile)
    options = (f"-p {int(port)} -c listen_addresses={bind_address} -c unix_socket_directories={_socket_dir(datadir)} "
               "-c log_timezone=UTC")
    _run([
        str(PG_BIN / "pg_ctl"), "start", "-D", str(datadir), "-l", str(logfile),
        "-w", "-t", str(int(timeout)), "-o", options,
    ], timeout=timeout + 10)


def stop(datadir: Path, mode: str = "fast", timeout: float = 60) -> None:
    """Stop the cluster (`smart`, `fast` or `immediate`); a stopped cluster is fine."""
    if mode not in ("smart", "fast", "immediate"):
        raise ValueError(f"unknown shutdown mode {mode!r}")
    datadir = Path(datadir).resolve()
    if not (datadir / "postmaster.pid").exists():
        return
    _run([str(PG_BIN / "pg_ctl"), "stop", "-D", str(datadir), "-m", mode, "-w", "-t", str(int(timeout))],
         timeout=timeout + 10)


def is_running(datadir: Path) -> bool:
    proc = subprocess.run(
        _as_service_user([str(PG_BIN / "pg_ctl"), "status", "-D", str(Path(datadir).resolve())]),
        capture_output=True, check=False,
    )
    return proc.returncode == 0


def wait_ready(host: str, port: int, timeout: float = 30) -> None:
    """Wait until the server at host:port accepts connections (pg_isready semantics)."""
    deadline = time.monotonic() + timeout
    isready = shutil.which("pg_isready", path=str(PG_BIN)) or "pg_isready"
    while True:
        proc = subprocess.run(
            [isready, "-q", "-h", host, "-p", str(port), "-t", "2"], capture_output=True, check=False
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise PgClusterError(f"PostgreSQL at {host}:{port} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for `password` (RFC 5802 / 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def connect_superuser(
    host: str, port: int, password: str, *, dbname: str = "postgres", superuser: str = SUPERUSER
) -> psycopg.Connection:
    """An autocommit superuser connection over TCP."""
    return psycopg.connect(
        host=host, port=port, user=superuser, password=password, dbname=dbname,
        autocommit=True, connect_timeout=10,
    )


def _ensure_role(conn: psycopg.Connection, role: str, password: str, attributes: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    # Utility statements take no bind parameters: Literal quotes the verifier client-side.
    conn.execute(
        sql.SQL("{} ROLE {} WITH " + attributes + " PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(scram_verifier(password))
        )
    )


def _ensure_database(conn: psycopg.Connection, name: str, owner: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
    else:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )


def restrict_qi_database(conn: psycopg.Connection, name: str) -> None:
    """Only the owner and `grafana_ro` may connect to the QI database `name`.

    Database privileges are not copied by `CREATE DATABASE ... TEMPLATE`, so a QI
    database made from a template (tests, restores) needs this call too.
    """
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(name), sql.Identifier(GRAFANA_ROLE)))


def ensure_roles_and_databases(
    settings: Settings, *, superuser_password: str, superuser: str = SUPERUSER
) -> None:
    """Create or update the hub's roles and databases; safe to run again at any time.

    - `POSTGRES_USER` logs in with `POSTGRES_PASSWORD` and owns `POSTGRES_DB` (Orthanc's
      index: the plugin creates the pg_trgm extension, which needs ownership) and `QI_DB`.
    - `grafana_ro` logs in with `GRAFANA_DB_PASSWORD`, may connect to `QI_DB` only and
      runs read-only transactions. SELECT on the QI views is granted by the migrations.
    - Nobody else (PUBLIC) may connect to either database: Orthanc's index holds PHI.
    """
    owner = settings.postgres_user
    with connect_superuser(
        settings.postgres_host, settings.postgres_port, superuser_password, superuser=superuser
    ) as conn:
        _ensure_role(conn, owner, settings.postgres_password.get_secret_value(),
                     "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        _ensure_role(conn, GRAFANA_ROLE, settings.grafana_db_password.get_secret_value(),
                     "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT")
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(GRAFANA_ROLE))
        )
        # JIT compilation costs 0.3-0.7 s per QI query and gains nothing on them (bench/qi_bench.py).
        conn.execute(sql.SQL("ALTER ROLE {} SET jit = off").format(sql.Identifier(GRAFANA_ROLE)))
        _ensure_database(conn, settings.postgres_db, owner)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(settings.postgres_db)))
        _ensure_database(conn, settings.qi_db, owner)
        restrict_qi_database(conn, settings.qi_db)
    with connect_superuser(
        settings.postgres_host, settings.postgres_port, superuser_password,
        dbname=settings.qi_db, superuser=superuser,
    ) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(GRAFANA_ROLE)))


def superuser_password_file(state_dir: Path) -> str:
    """Read (or create, mode 600) the cluster superuser's password kept in STATE_DIR.

    The superuser is only needed to create roles and databases; it is not part of
    `.env` because no component of the hub runs with it.
    """
    path = Path(state_dir) / "postgres-superuser.secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password + "\n")
    return password
