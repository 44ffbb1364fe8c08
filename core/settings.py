"""The one typed settings loader: `config/env.defaults` overlaid by `.env`.

Every component (worker, app, CLI, stack scripts, tests) calls `load_settings()`.
The process environment is deliberately *not* read for individual settings: an
operator's shell `TZ` must not silently override the site's `.env`. Only
`HUB_ENV_FILE` chooses which `.env` to read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.dicom_names import Modality, check_aet, check_host, check_modality_name, parse_modality_line
from core.envfile import EnvFileError, read_env_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = PROJECT_ROOT / "config" / "env.defaults"
MODALITY_PREFIX = "MODALITY_"
# Orthanc's recycling options, refused by name: with a limit, Orthanc deletes the oldest
# patients' studies, including those whose delivery is unfinished (ops/orthanc_config.py).
RECYCLING_KEYS = ("MAXIMUM_STORAGE_SIZE", "MAXIMUM_PATIENT_COUNT", "MAXIMUM_STORAGE_MODE")
# The files ops/tls.py generates in TLS_DIR when the site gives none of its own, and the
# one PEM (key + certificate) Orthanc's HTTPS server reads, written there at each start.
TLS_CA_CERT = "ca.crt"
TLS_CA_KEY = "ca.key"
TLS_HUB_CERT = "hub.crt"
TLS_HUB_KEY = "hub.key"
TLS_HTTPS_PEM = "orthanc-https.pem"
TLS_SITE_FILES = ("tls_cert_file", "tls_key_file", "tls_ca_file")

Port = Field(ge=1, le=65535)
# Before issue 16 the app's idle timeout was APP_SESSION_TIMEOUT_MIN, in minutes. A .env that
# still has it (and no APP_IDLE_TIMEOUT) keeps its value, converted to seconds.
LEGACY_IDLE_KEY = "APP_SESSION_TIMEOUT_MIN"
_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?", re.IGNORECASE)
_EMAIL = re.compile(r"[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return True


@dataclass(frozen=True)
class OrthancNode:
    """One Orthanc node: its number (1 = the first) and its ports."""

    index: int
    web_port: int
    dicom_port: int

    @property
    def name(self) -> str:
        """Its program / service name: `orthanc`, then `orthanc2`, `orthanc3`..."""
        return "orthanc" if self.index == 1 else f"orthanc{self.index}"


class SettingsError(ValueError):
    """Configuration is invalid; the message lists every variable and broken rule."""


class Settings(BaseSettings):
    """All settings of the hub. Field names are the `.env` names in lower case."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False)

    operator_ui_port: int = Port
    orthanc_web_port: int = Port
    ohif_port: int = Port
    postgres_port: int = Port
    routing_api_port: int = Port
    # The worker's own /health and /metrics, which the API on ROUTING_API_PORT proxies
    # (docs/architecture.md, "Processes"): loopback natively; compose overrides the host.
    worker_health_port: int = Port
    grafana_port: int = Port
    dicom_port: int = Port
    # Orthanc nodes sharing one PostgreSQL index and one DICOM_STORAGE (docs/scaling.md).
    # Node 1 listens on ORTHANC_WEB_PORT and DICOM_PORT; node k (2..ORTHANC_NODES) on the
    # (k-1)-th entry of ORTHANC_NODE_WEB_PORTS and ORTHANC_NODE_DICOM_PORTS.
    orthanc_nodes: int = Field(ge=1, le=8)
    orthanc_node_web_ports: tuple[int, ...]
    orthanc_node_dicom_ports: tuple[int, ...]
    bind_address: str
    worker_health_host: str
    orthanc_host: str
    postgres_host: str

    orthanc_aet: str
    tz: str

    dicom_storage: Path
    postgres_storage: Path
    state_dir: Path
    backup_encrypt: bool
    backup_key_file: Path

    # DICOM TLS and HTTPS, both off by default (README.md, "DICOM TLS and HTTPS"; ops/tls.py).
    dicom_tls: bool
    dicom_tls_remote_cert_required: bool
    https: bool
    tls_dir: Path  # empty in .env: STATE_DIR/tls
    tls_ca_file: Path | None  # the site's own files (all three, or none: generated in TLS_DIR)
    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_server_names: tuple[str, ...]

    orthanc_username: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    orthanc_password: SecretStr
    postgres_user: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    postgres_password: SecretStr
    postgres_db: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    qi_db: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    grafana_db_password: SecretStr
    app_admin_username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    app_admin_password: SecretStr
    # App login sessions (core/auth.py, app/auth_routes.py): a session ends APP_SESSION_TTL
    # seconds after login, or after APP_IDLE_TIMEOUT seconds without the user's activity.
    app_session_ttl: int = Field(ge=60, le=30 * 86400)
    app_idle_timeout: int = Field(ge=60, le=86400)
    # Seconds between two refreshes of the app's live pages (Overview, Queue, Destinations,
    # an unfinished study); each page has a toggle to pause it.
    app_refresh_s: int = Field(ge=2, le=3600)

    modalities: dict[str, Modality] = Field(default_factory=dict)
    ai_modality: str
    ai_result_aets: tuple[str, ...]
    ai_result_timeout: int = Field(ge=1)

    routing_rules: Path
    poll_interval: float = Field(gt=0, le=60)
    changes_batch: int = Field(ge=1, le=10000)
    stable_age: int = Field(ge=1, le=3600)
    retry_base: float = Field(gt=0)
    retry_cap: float = Field(gt=0)
    retry_max_attempts: int = Field(ge=1, le=100)
    outage_probe_max: float = Field(ge=1, le=3600)
    dest_concurrency: int = Field(ge=1, le=64)
    worker_concurrency: int = Field(ge=1, le=256)
    orthanc_concurrent_jobs: int = Field(ge=1, le=64)
    send_batch: int = Field(ge=1, le=500)
    # An Orthanc store job Pending/Running/Retry longer than floor + its size at these
    # rates, or paused again after a resume for longer than the grace, is cancelled
    # (worker/dispatcher.py, JobWatch; docs/architecture.md, "Orthanc job states").
    send_deadline_floor_s: float = Field(gt=0)
    send_deadline_instances_per_s: float = Field(gt=0)
    send_deadline_mb_per_s: float = Field(gt=0)
    send_paused_grace_s: float = Field(ge=0)
    jobs_history_size: int = Field(ge=10)
    disk_free_warn_mb: int = Field(ge=1)
    # Retention (core/retention.py, worker/retention.py; docs/operations.md, "Retention"): off
    # unless set. 0 (or empty) turns each policy off: deleting patient data is a site's decision.
    retention_days_after_delivery: int = Field(ge=0, le=36500)
    retention_disk_low_mb: int = Field(ge=0)
    retention_disk_high_mb: int = Field(ge=0)
    retention_batch: int = Field(ge=1, le=1000)
    retention_check_s: float = Field(ge=1, le=86400)

    sla_turnaround_s: int = Field(ge=1)
    sla_ai_round_trip_s: int = Field(ge=1)
    sla_to_destinations_s: int = Field(ge=1)

    # Alerts (worker/alerter.py, core/alerts.py; docs/operations.md, "Alerts"). Each channel
    # is off while its address is empty: ALERT_WEBHOOK_URL, ALERT_SMTP_HOST.
    alert_check_s: float = Field(ge=1, le=3600)
    alert_repeat: float = Field(ge=1)
    alert_outage_min: float = Field(ge=0)
    alert_webhook_url: str
    alert_webhook_secret: SecretStr
    alert_smtp_host: str
    alert_smtp_port: int = Port
    alert_smtp_user: str
    alert_smtp_password: SecretStr
    alert_smtp_from: str
    alert_smtp_to: tuple[str, ...]
    alert_smtp_starttls: bool
    alert_smtp_ca_file: Path | None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @field_validator("orthanc_aet")
    @classmethod
    def _aet(cls, value: str) -> str:
        return check_aet(value)

    @field_validator("bind_address", "orthanc_host", "postgres_host", "worker_health_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("ai_modality")
    @classmethod
    def _modality_name(cls, value: str) -> str:
        return check_modality_name(value)

    @field_validator("orthanc_node_web_ports", "orthanc_node_dicom_ports", mode="before")
    @classmethod
    def _port_list(cls, value: Any) -> tuple[int, ...]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        ports = tuple(int(v) for v in items if str(v).strip())
        if any(not 1 <= p <= 65535 for p in ports):
            raise ValueError("ports must be between 1 and 65535")
        return ports

    @field_validator("ai_result_aets", mode="before")
    @classmethod
    def _aets(cls, value: Any) -> tuple[str, ...]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        items = [v for v in items if v]
        if not items:
            raise ValueError("list at least one AE title, comma-separated")
        return tuple(check_aet(v) for v in items)

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Paris") from None
        return value

    @field_validator("dicom_storage", "postgres_storage", "state_dir", "routing_rules", "backup_key_file", "tls_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

    @field_validator("dicom_tls", "dicom_tls_remote_cert_required", "https", "alert_smtp_starttls", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word in ("on", "yes", "true", "1"):
            return True
        if word in ("off", "no", "false", "0"):
            return False
        raise ValueError(f"use on or off (got {value[:20]!r})")

    @field_validator("tls_dir", mode="before")
    @classmethod
    def _tls_dir(cls, value: Any, info: ValidationInfo) -> Any:
        if value in ("", None) and isinstance(info.data.get("state_dir"), Path):
            return info.data["state_dir"] / "tls"
        return value

    @field_validator(*TLS_SITE_FILES, "alert_smtp_ca_file", mode="before")
    @classmethod
    def _optional_file(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator(*TLS_SITE_FILES, "alert_smtp_ca_file")
    @classmethod
    def _optional_absolute(cls, value: Path | None) -> Path | None:
        if value is None or value.is_absolute():
            return value
        return (PROJECT_ROOT / value).resolve()

    @field_validator("retention_days_after_delivery", "retention_disk_low_mb", "retention_disk_high_mb",
                     mode="before")
    @classmethod
    def _off_when_empty(cls, value: Any) -> Any:
        return 0 if isinstance(value, str) and not value.strip() else value

    @field_validator("tls_server_names", mode="before")
    @classmethod
    def _server_names(cls, value: Any) -> tuple[str, ...]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        return tuple(check_host(v) for v in items if v)

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        value = value.strip()
        if value and not _URL.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL without spaces (or empty: no webhook)")
        return value

    @field_validator("alert_smtp_host")
    @classmethod
    def _optional_host(cls, value: str) -> str:
        return check_host(value) if value.strip() else ""

    @field_validator("alert_smtp_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        value = value.strip()
        if value and not _EMAIL.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not an e-mail address such as hub@hospital.example")
        return value

    @field_validator("alert_smtp_to", mode="before")
    @classmethod
    def _mail_to(cls, value: Any) -> tuple[str, ...]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        bad = [v for v in items if v and not _EMAIL.fullmatch(v)]
        if bad:
            raise ValueError(f"{bad[0][:80]!r} is not an e-mail address (list them comma-separated)")
        return tuple(v for v in items if v)

    @field_validator("orthanc_password", "postgres_password", "grafana_db_password", "app_admin_password")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret:
            raise ValueError("is empty: run `make setup` or `make run` to generate it")
        if len(secret) < 12:
            raise ValueError("must have at least 12 characters")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        ports = {
            name: getattr(self, name)
            for name in (
                "operator_ui_port", "orthanc_web_port", "ohif_port", "postgres_port",
                "routing_api_port", "worker_health_port", "grafana_port", "dicom_port",
            )
        }
        extra = self.orthanc_nodes - 1
        for key in ("orthanc_node_web_ports", "orthanc_node_dicom_ports"):
            if len(getattr(self, key)) < extra:
                raise ValueError(f"ORTHANC_NODES={self.orthanc_nodes} needs {extra} port(s) in {key.upper()}")
        for node in self.orthanc_node_list[1:]:
            ports[f"orthanc_node_web_ports (node {node.index})"] = node.web_port
            ports[f"orthanc_node_dicom_ports (node {node.index})"] = node.dicom_port
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name.upper()} and {seen[port].upper()} both use port {port}")
            seen[port] = name
        if self.retry_cap < self.retry_base:
            raise ValueError("RETRY_CAP must not be smaller than RETRY_BASE")
        if self.qi_db == self.postgres_db:
            raise ValueError("QI_DB must differ from POSTGRES_DB (Orthanc owns its index database)")
        problems = _tls_problems(self) + _alert_problems(self) + _retention_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    # --- derived values -------------------------------------------------------------

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def orthanc_url(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.orthanc_host}:{self.orthanc_web_port}"

    @property
    def orthanc_node_list(self) -> list[OrthancNode]:
        """Every Orthanc node, node 1 first (ORTHANC_NODES; docs/scaling.md)."""
        extra = zip(self.orthanc_node_web_ports, self.orthanc_node_dicom_ports, strict=False)
        nodes = [OrthancNode(1, self.orthanc_web_port, self.dicom_port)]
        nodes += [OrthancNode(k, web, dicom) for k, (web, dicom) in enumerate(extra, start=2)]
        return nodes[:self.orthanc_nodes]

    @property
    def orthanc_urls(self) -> list[str]:
        """The REST API of every node, node 1 first: the worker fails over between them."""
        return [self.orthanc_node_url(node) for node in self.orthanc_node_list]

    def orthanc_node_url(self, node: OrthancNode) -> str:
        """Node `node`'s REST API. Natively every node is on ORTHANC_HOST (an address); in
        compose ORTHANC_HOST is the first node's service name and node k's is `orthanc<k>`."""
        host = self.orthanc_host
        if node.index > 1 and not _is_address(host):
            host = f"{host}{node.index}"
        return f"{'https' if self.https else 'http'}://{host}:{node.web_port}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def orthanc_node_suffix(self) -> str:
        """Node 1's suffix for what each node keeps to itself (its web viewer's SQLite cache,
        which one process locks); ops/orthanc_config.py renders node k with `-k`."""
        return ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def orthanc_index_lock(self) -> bool:
        """The PostgreSQL plugin's `Lock`: one Orthanc per index unless ORTHANC_NODES > 1."""
        return self.orthanc_nodes == 1

    # --- DICOM TLS and HTTPS --------------------------------------------------------

    @property
    def dicom_tls_in_use(self) -> bool:
        """Orthanc's DICOM port is TLS-only, or Orthanc calls some MODALITY_ over TLS."""
        return self.dicom_tls or any(m.use_tls for m in self.modalities.values())

    @property
    def tls_in_use(self) -> bool:
        """Some function needs the TLS files: DICOM TLS (port or a destination) or HTTPS."""
        return self.dicom_tls_in_use or self.https

    @property
    def tls_site_files(self) -> bool:
        """The site gave its own TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE (else ops/tls.py generates)."""
        return self.tls_cert_file is not None

    @property
    def tls_ca_path(self) -> Path:
        """The CA certificate(s) Orthanc trusts for DICOM TLS peers and the hub verifies HTTPS with."""
        return self.tls_ca_file or self.tls_dir / TLS_CA_CERT

    @property
    def tls_cert_path(self) -> Path:
        return self.tls_cert_file or self.tls_dir / TLS_HUB_CERT

    @property
    def tls_key_path(self) -> Path:
        return self.tls_key_file or self.tls_dir / TLS_HUB_KEY

    @property
    def https_pem_path(self) -> Path:
        return self.tls_dir / TLS_HTTPS_PEM

    # Values of stack/orthanc/orthanc.json.template's ${NAME}s that are derived, not set in
    # .env: empty when the function is off (Orthanc 1.10.1 refuses to start when a
    # DicomTls* file it is given does not exist, even with DICOM TLS off).

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dicom_tls_certificate(self) -> str:
        return str(self.tls_cert_path) if self.dicom_tls_in_use else ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dicom_tls_private_key(self) -> str:
        return str(self.tls_key_path) if self.dicom_tls_in_use else ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dicom_tls_trusted_certificates(self) -> str:
        return str(self.tls_ca_path) if self.dicom_tls_in_use else ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def https_certificate(self) -> str:
        return str(self.https_pem_path) if self.https else ""

    def orthanc_tls_context(self) -> ssl.SSLContext | None:
        """What a client verifies Orthanc's HTTPS certificate with (the CA of TLS_CA_FILE or
        the generated one), or None when HTTPS is off."""
        return ssl.create_default_context(cafile=str(self.tls_ca_path)) if self.https else None

    def pg_url(self, database: str | None = None, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL for `database` (default: the QI database)."""
        password = quote(self.postgres_password.get_secret_value(), safe="")
        return (
            f"{driver}://{self.postgres_user}:{password}@{self.postgres_host}:"
            f"{self.postgres_port}/{database or self.qi_db}"
        )

    @property
    def ai_result_aet_set(self) -> frozenset[str]:
        return frozenset(self.ai_result_aets)

    def check_storage(self) -> None:
        """Fail when a storage path cannot be created or written by this user."""
        errors = []
        for name in ("dicom_storage", "postgres_storage", "state_dir"):
            problem = _writable_problem(getattr(self, name))
            if problem:
                errors.append(f"{name.upper()}: {problem}")
        if errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))


def _tls_problems(settings: Settings) -> list[str]:
    """What is wrong with the site's own TLS files, one line each naming the variable.

    Checked only while a TLS function is on. The generated files (no TLS_*_FILE given)
    are made and checked by ops/tls.py when the stack starts; so is the chain of the
    site's certificate to its CA, which needs the `cryptography` package.
    """
    given = {name: getattr(settings, name) for name in TLS_SITE_FILES}
    if not settings.tls_in_use or not any(given.values()):
        return []
    missing = [name.upper() for name, path in given.items() if path is None]
    if missing:
        return [f"{', '.join(missing)}: TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE go together: set all three "
                f"(the site's own certificate, its key and CA) or none (the hub then generates a local CA in TLS_DIR)"]
    problems = []
    for name, path in given.items():
        assert path is not None
        if not path.is_file():
            problems.append(f"{name.upper()}: {path} does not exist or is not a file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{name.upper()}: {path} is not readable by this user")
    if problems:
        return problems
    key, cert, ca = settings.tls_key_path, settings.tls_cert_path, settings.tls_ca_path
    if key.stat().st_mode & 0o004:
        problems.append(f"TLS_KEY_FILE: {key} can be read by every user: chmod 600 it (or 640 for a group)")
    key_text = key.read_text(errors="replace")
    if "PRIVATE KEY-----" not in key_text:
        problems.append(f"TLS_KEY_FILE: {key} holds no PEM private key")
    elif "ENCRYPTED" in key_text:
        problems.append(f"TLS_KEY_FILE: {key} is protected by a passphrase; Orthanc needs it unencrypted "
                        "(keep it mode 600)")
    if "-----BEGIN CERTIFICATE-----" not in cert.read_text(errors="replace"):
        problems.append(f"TLS_CERT_FILE: {cert} holds no PEM certificate")
    if "-----BEGIN CERTIFICATE-----" not in ca.read_text(errors="replace"):
        problems.append(f"TLS_CA_FILE: {ca} holds no PEM certificate")
    if problems:
        return problems
    try:
        # An empty password: an encrypted key fails here instead of prompting on the terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key), password="")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            problems.append(f"TLS_KEY_FILE: {key} is not the key of the certificate in TLS_CERT_FILE ({cert})")
        else:
            problems.append(f"TLS_CERT_FILE, TLS_KEY_FILE: {cert} and {key} cannot be loaded: {exc.reason or exc}")
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        problems.append(f"TLS_CA_FILE: {ca} cannot be loaded as CA certificates: {exc.reason or exc}")
    return problems


def _alert_problems(settings: Settings) -> list[str]:
    """What is missing or unsafe in the alert channels' settings, one line each naming the variable."""
    problems = []
    secret = settings.alert_webhook_secret.get_secret_value()
    if settings.alert_webhook_url and not secret:
        problems.append("ALERT_WEBHOOK_SECRET: is empty: run `make setup` or `make run` to generate it "
                        "(the webhook's messages are signed with it)")
    elif secret and len(secret) < 12:
        problems.append("ALERT_WEBHOOK_SECRET: must have at least 12 characters")
    if settings.alert_smtp_host:
        if not settings.alert_smtp_from:
            problems.append("ALERT_SMTP_FROM: set the sender address of the alert e-mails (ALERT_SMTP_HOST is set)")
        if not settings.alert_smtp_to:
            problems.append("ALERT_SMTP_TO: list at least one recipient, comma-separated (ALERT_SMTP_HOST is set)")
    if bool(settings.alert_smtp_user) != bool(settings.alert_smtp_password.get_secret_value()):
        problems.append("ALERT_SMTP_USER, ALERT_SMTP_PASSWORD: give both (the mail server's login) or neither")
    if settings.alert_smtp_user and not settings.alert_smtp_starttls:
        problems.append("ALERT_SMTP_STARTTLS: must be on when ALERT_SMTP_USER is set: the password must not cross "
                        "the network in clear")
    ca = settings.alert_smtp_ca_file
    if ca is not None and not ca.is_file():
        problems.append(f"ALERT_SMTP_CA_FILE: {ca} does not exist or is not a file")
    return problems


def _retention_problems(settings: Settings) -> list[str]:
    """The disk watermarks go together: delete below LOW until HIGH is free again."""
    low, high = settings.retention_disk_low_mb, settings.retention_disk_high_mb
    if low and high <= low:
        return [f"RETENTION_DISK_HIGH_MB: must be larger than RETENTION_DISK_LOW_MB ({low}): retention deletes "
                "delivered studies when free space falls under LOW, until HIGH MiB are free"]
    if high and not low:
        return ["RETENTION_DISK_LOW_MB: set it too (the free MiB under which retention starts deleting), "
                "or leave RETENTION_DISK_HIGH_MB empty"]
    return []


def _writable_problem(path: Path) -> str | None:
    """Why `path` cannot be used as a writable directory, or None when it can."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path} cannot be created"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    if probe == path and shutil.disk_usage(path).free < 64 * 1024 * 1024:
        return f"{path} has less than 64 MiB free"
    return None


def env_file_path() -> Path:
    return Path(os.environ.get("HUB_ENV_FILE", PROJECT_ROOT / ".env"))


def read_config(env_file: Path | None = None, defaults_file: Path = DEFAULTS_FILE) -> dict[str, str]:
    """Defaults overlaid by the env file, as raw strings; raises SettingsError."""
    env_file = env_file or env_file_path()
    try:
        values = read_env_file(defaults_file)
        if env_file.exists():
            site = read_env_file(env_file)
            values.update(site)
            if LEGACY_IDLE_KEY in site and "APP_IDLE_TIMEOUT" not in site:
                values.pop("APP_IDLE_TIMEOUT", None)  # the site's old setting, not the default, applies
    except EnvFileError as exc:
        raise SettingsError("invalid configuration:\n  " + str(exc).replace("\n", "\n  ")) from None
    return values


def settings_from_values(values: dict[str, str]) -> Settings:
    """Validate raw KEY -> value strings into Settings, listing every problem at once."""
    errors: list[str] = []
    modalities: dict[str, Modality] = {}
    plain: dict[str, Any] = {}
    values = dict(values)
    legacy_idle = values.pop(LEGACY_IDLE_KEY, None)
    if legacy_idle is not None and "APP_IDLE_TIMEOUT" not in values:
        if legacy_idle.strip().isdigit():
            values["APP_IDLE_TIMEOUT"] = str(int(legacy_idle) * 60)
        else:
            errors.append(f"{LEGACY_IDLE_KEY}: minutes, a whole number (better: replace it with APP_IDLE_TIMEOUT "
                          "in seconds)")
    for key, value in values.items():
        if key.upper().removeprefix("ORTHANC__") in RECYCLING_KEYS:
            errors.append(f"{key}: Orthanc's recycling is never enabled by the hub, because it deletes "
                          "studies whose delivery is unfinished; remove this line and free disk space as "
                          "docs/operations.md ('Disk space and recycling') describes")
        elif key.startswith(MODALITY_PREFIX):
            name = key[len(MODALITY_PREFIX):]
            try:
                modalities[name] = parse_modality_line(name, value)
            except ValueError as exc:
                errors.append(f"{key}: {exc}")
        else:
            plain[key.lower()] = value
    settings = None
    try:
        settings = Settings(**plain, modalities=modalities)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]).upper() or "configuration"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (is it misspelt? see config/env.defaults)"
            errors.append(f"{loc}: {msg}")
    if errors or settings is None:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))
    return settings


def load_settings(env_file: Path | None = None) -> Settings:
    """Load and validate the configuration; raise SettingsError naming each problem."""
    return settings_from_values(read_config(env_file))
