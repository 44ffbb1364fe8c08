"""The hub's stack for tests: settings, a PostgreSQL cluster and an Orthanc, all real.

Everything runs on free loopback ports in temporary directories, configured by the
same code as the native stack (core.settings, ops.pgcluster, ops.orthanc_config).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from core.envfile import generate_secret, read_env_file, render_env, write_private
from core.settings import DEFAULTS_FILE, OrthancNode, Settings, settings_from_values
from ops import datadirs, pgcluster, tls
from ops.orthanc_config import orthanc_argv, orthanc_env, render_orthanc_config, write_orthanc_config
from ops.rules_file import create_rules_file

from .ports import free_port
from .procs import spawn, tail, terminate

PORT_KEYS = (
    "OPERATOR_UI_PORT", "ORTHANC_WEB_PORT", "OHIF_PORT", "POSTGRES_PORT",
    "ROUTING_API_PORT", "WORKER_HEALTH_PORT", "GRAFANA_PORT", "DICOM_PORT",
)
# Fast timings for tests: Stable* about 2 s after the last instance, quick retries.
TEST_OVERRIDES = {
    "STABLE_AGE": "1",
    "POLL_INTERVAL": "0.2",
    "RETRY_BASE": "1",
    "RETRY_CAP": "5",
    "TZ": "America/Los_Angeles",  # deliberately not UTC: time-zone bugs must show
}


def make_values(base_dir: Path, pg_storage: Path, **overrides: str) -> dict[str, str]:
    """Raw settings: config/env.defaults, then free ports, temp dirs, fresh secrets."""
    values = read_env_file(DEFAULTS_FILE)
    values.update({key: str(free_port()) for key in PORT_KEYS})
    values.update({
        "DICOM_STORAGE": str(base_dir / "orthanc-storage"),
        "POSTGRES_STORAGE": str(pg_storage),
        "STATE_DIR": str(base_dir / "state"),
        "ORTHANC_PASSWORD": generate_secret(),
        "POSTGRES_PASSWORD": generate_secret(),
        "GRAFANA_DB_PASSWORD": generate_secret(),
        "APP_ADMIN_PASSWORD": generate_secret(),
        "ALERT_WEBHOOK_SECRET": generate_secret(),
    })
    values.update(TEST_OVERRIDES)
    if "ROUTING_RULES" not in overrides:
        # The stack's own copy of the shipped example: tests never read or write the
        # checkout's active config/routing.yml (absent on a fresh clone; ops/rules_file.py).
        rules = base_dir / "routing.yml"
        create_rules_file(rules)
        values["ROUTING_RULES"] = str(rules)
    values.update(overrides)
    return values


def write_env(values: dict[str, str], path: Path) -> Path:
    """Write `values` as a .env file (mode 600) that `load_settings(path)` reads back."""
    defaults = read_env_file(DEFAULTS_FILE)
    changed = {k: v for k, v in values.items() if defaults.get(k) != v}
    write_private(path, render_env(DEFAULTS_FILE.read_text(encoding="utf-8"), changed))
    return path


def make_pg_base() -> Path:
    """A temp dir the `postgres` OS user can reach (pytest's tmp dirs are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="hub-test-pg-"))
    base.chmod(0o711)
    return base


# --- PostgreSQL ----------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway cluster running `postgres` in the foreground as a child process."""

    datadir: Path
    host: str
    port: int
    superuser_password: str
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pgcluster.init_cluster(
            self.datadir, self.port, self.host, superuser_password=self.superuser_password
        )
        self.proc = spawn(
            pgcluster.postgres_argv(self.datadir, self.port, self.host),
            self.logfile,
            user=pgcluster.service_user(),
            death_signal=signal.SIGINT,  # fast shutdown
        )
        try:
            pgcluster.wait_ready(self.host, self.port, timeout=30)
        except pgcluster.PgClusterError as exc:
            self.stop()
            raise pgcluster.PgClusterError(f"{exc}\n{tail(self.logfile)}") from None

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, signal.SIGINT, timeout=30)
            self.proc = None

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return pgcluster.connect_superuser(self.host, self.port, self.superuser_password, dbname=dbname)

    def create_database(self, name: str, owner: str, template: str = "template0") -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(owner), sql.Identifier(template)))

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def disconnect_all(self, dbname: str) -> None:
        """End every session on `dbname` (a template must have none when it is copied)."""
        with self.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))


@dataclass(frozen=True)
class QiDatabase:
    """A fresh migrated QI database: its name, SQLAlchemy URL, Settings and .env file."""

    name: str
    url: str
    settings: Settings
    env_file: Path


# --- Orthanc -------------------------------------------------------------------------


class OrthancRest:
    """Minimal authenticated REST access for tests (plain httpx, independent of hub code).

    `ca_file`: Orthanc serves HTTPS; its certificate is verified against that CA."""

    def __init__(self, base_url: str, username: str, password: str, ca_file: Path | None = None) -> None:
        self.base_url = base_url
        self.auth = (username, password)
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.http = httpx.Client(base_url=base_url, auth=self.auth, timeout=60, verify=verify)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params or None)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None) -> Any:
        response = self.http.post(path, json=body) if not isinstance(body, bytes) else self.http.post(
            path, content=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def put(self, path: str, body: Any) -> Any:
        response = self.http.put(path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def delete(self, path: str) -> None:
        response = self.http.delete(path)
        if response.status_code != 404:
            response.raise_for_status()

    # -- conveniences ------------------------------------------------------------

    def lookup(self, uid: str, level: str = "Study") -> str | None:
        """Orthanc id of the resource with DICOM UID `uid` at `level`, if stored."""
        for hit in self.post("/tools/lookup", uid.encode()):
            if hit["Type"] == level:
                return str(hit["ID"])
        return None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        orthanc_id = self.lookup(study_uid)
        return list(self.get(f"/studies/{orthanc_id}/instances")) if orthanc_id else []

    def put_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("tests only ever send to loopback")
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def store_async(self, modality: str, resources: list[str]) -> str:
        answer = self.post(f"/modalities/{modality}/store", {
            "Resources": resources, "Synchronous": False, "Timeout": 30})
        return str(answer["ID"])

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return dict(job)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['State']} after {timeout:.0f} s")
            time.sleep(0.1)

    def reset(self) -> None:
        """Empty Orthanc: cancel unfinished jobs, delete every patient and modality,
        and clear the change and export logs so the next test starts from nothing."""
        for job in self.get("/jobs", expand=""):
            if job["State"] in ("Pending", "Running", "Paused", "Retry"):
                self.http.post(f"/jobs/{job['ID']}/cancel", content=b"")
        for patient in self.get("/patients"):
            self.delete(f"/patients/{patient}")
        for name in self.get("/modalities"):
            self.delete(f"/modalities/{name}")
        self.delete("/changes")
        self.delete("/exports")


@dataclass
class OrthancServer:
    """Orthanc 1.10.1 (/usr/sbin/Orthanc) in the foreground, configured from Settings."""

    settings: Settings
    workdir: Path
    tz: str | None = None  # None: the settings' TZ
    # Top-level configuration keys to replace (a value of None removes the key).
    overrides: dict[str, Any] | None = None
    # Which node of ORTHANC_NODES (1..): its ports and configuration (ops/orthanc_config.py).
    node: int = 1
    proc: subprocess.Popen[bytes] | None = None
    rest: OrthancRest | None = None

    @property
    def _node(self) -> OrthancNode:
        return next(n for n in self.settings.orthanc_node_list if n.index == self.node)

    @property
    def logfile(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.https else "http"
        return f"{scheme}://127.0.0.1:{self._node.web_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.settings.orthanc_username, self.settings.orthanc_password.get_secret_value())

    @property
    def aet(self) -> str:
        return self.settings.orthanc_aet

    @property
    def dicom_port(self) -> int:
        return self._node.dicom_port

    def start(self, timeout: float = 90) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        datadirs.create_owned(self.settings.dicom_storage, "DICOM_STORAGE")  # as `make run` does
        tls.prepare(self.settings, out=lambda _line: None)  # DICOM TLS / HTTPS: as `make run` does
        if self.overrides:
            config = render_orthanc_config(self.settings, node=self.node)
            for key, value in self.overrides.items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
            write_private(self.config_path, json.dumps(config, indent=2))
        else:
            write_orthanc_config(self.settings, self.config_path, node=self.node)
        env = orthanc_env(self.settings)
        if self.tz:
            env["TZ"] = self.tz
        self.proc = spawn(orthanc_argv(self.config_path), self.logfile, env=env, cwd=self.workdir)
        self.rest = OrthancRest(self.url, *self.auth, ca_file=self.settings.tls_ca_path if self.settings.https else None)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"Orthanc exited with {code}:\n{tail(self.logfile)}")
            try:
                if self.rest.http.get("/system", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc not ready after {timeout:.0f} s:\n{tail(self.logfile)}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.rest is not None:
            self.rest.close()
            self.rest = None
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM, timeout=60)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: no shutdown, its in-memory jobs and stability timers are lost."""
        if self.rest is not None:
            self.rest.close()
            self.rest = None
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def remove_tree(path: Path) -> None:
    """Remove a temp tree, including files the `postgres` user created."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def settings_for(values: dict[str, str], **overrides: str) -> Settings:
    """Settings from raw values with upper-case overrides (validated like .env)."""
    return settings_from_values({**values, **overrides})


def storescu(files: list[Path], host: str, port: int, calling_aet: str, called_aet: str) -> str:
    """Send files with DCMTK's storescu (TCP_NODELAY=1, as for Orthanc); return its output."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run(
        ["storescu", "-aet", calling_aet, "-aec", called_aet, host, str(port), *map(str, files)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr
