"""The one typed settings loader: `config/env.defaults` overlaid by `.env`.

Every component (worker, app, CLI, stack scripts, tests) calls `load_settings()`.
The process environment is deliberately *not* read for individual settings: an
operator's shell `TZ` must not silently override the site's `.env`. Only
`HUB_ENV_FILE` chooses which `.env` to read.
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.dicom_names import Modality, check_aet, check_host, check_modality_name, parse_modality_line
from core.envfile import EnvFileError, read_env_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = PROJECT_ROOT / "config" / "env.defaults"
MODALITY_PREFIX = "MODALITY_"
# Orthanc's recycling options, refused by name: with a limit, Orthanc deletes the oldest
# patients' studies, including those whose delivery is unfinished (ops/orthanc_config.py).
RECYCLING_KEYS = ("MAXIMUM_STORAGE_SIZE", "MAXIMUM_PATIENT_COUNT", "MAXIMUM_STORAGE_MODE")

Port = Field(ge=1, le=65535)


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
    grafana_port: int = Port
    dicom_port: int = Port
    bind_address: str
    orthanc_host: str
    postgres_host: str

    orthanc_aet: str
    tz: str

    dicom_storage: Path
    postgres_storage: Path
    state_dir: Path
    backup_encrypt: bool
    backup_key_file: Path

    orthanc_username: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    orthanc_password: SecretStr
    postgres_user: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    postgres_password: SecretStr
    postgres_db: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    qi_db: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    grafana_db_password: SecretStr
    app_admin_username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    app_admin_password: SecretStr
    app_session_timeout_min: int = Field(ge=1, le=24 * 60)

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
    jobs_history_size: int = Field(ge=10)
    disk_free_warn_mb: int = Field(ge=1)

    sla_turnaround_s: int = Field(ge=1)
    sla_ai_round_trip_s: int = Field(ge=1)
    sla_to_destinations_s: int = Field(ge=1)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @field_validator("orthanc_aet")
    @classmethod
    def _aet(cls, value: str) -> str:
        return check_aet(value)

    @field_validator("bind_address", "orthanc_host", "postgres_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("ai_modality")
    @classmethod
    def _modality_name(cls, value: str) -> str:
        return check_modality_name(value)

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

    @field_validator("dicom_storage", "postgres_storage", "state_dir", "routing_rules", "backup_key_file")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

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
                "routing_api_port", "grafana_port", "dicom_port",
            )
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name.upper()} and {seen[port].upper()} both use port {port}")
            seen[port] = name
        if self.retry_cap < self.retry_base:
            raise ValueError("RETRY_CAP must not be smaller than RETRY_BASE")
        if self.qi_db == self.postgres_db:
            raise ValueError("QI_DB must differ from POSTGRES_DB (Orthanc owns its index database)")
        return self

    # --- derived values -------------------------------------------------------------

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def orthanc_url(self) -> str:
        return f"http://{self.orthanc_host}:{self.orthanc_web_port}"

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
            values.update(read_env_file(env_file))
    except EnvFileError as exc:
        raise SettingsError("invalid configuration:\n  " + str(exc).replace("\n", "\n  ")) from None
    return values


def settings_from_values(values: dict[str, str]) -> Settings:
    """Validate raw KEY -> value strings into Settings, listing every problem at once."""
    errors: list[str] = []
    modalities: dict[str, Modality] = {}
    plain: dict[str, Any] = {}
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
