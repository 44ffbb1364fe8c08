"""APP_SESSION_TTL, APP_IDLE_TIMEOUT and APP_REFRESH_S, and the old APP_SESSION_TIMEOUT_MIN (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.envfile import ensure_env_file, read_env_file
from core.settings import DEFAULTS_FILE, SettingsError, load_settings, settings_from_values


def _set(env: Path, **values: str | None) -> None:
    """Replace (or, with None, remove) these lines of a .env file."""
    lines = [line for line in env.read_text().splitlines(True) if line.split("=", 1)[0] not in values]
    env.write_text("".join(lines) + "".join(f"{k}={v}\n" for k, v in values.items() if v is not None))


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """A site's .env as `make env` writes it, with writable paths."""
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    _set(env, DICOM_STORAGE=str(tmp_path / "dicom"), POSTGRES_STORAGE=str(tmp_path / "pg"),
         STATE_DIR=str(tmp_path / "state"))
    return env


def test_defaults(env_file: Path) -> None:
    settings = load_settings(env_file)
    assert (settings.app_session_ttl, settings.app_idle_timeout, settings.app_refresh_s) == (43200, 1800, 10)


def test_an_old_env_keeps_its_idle_timeout_in_minutes(env_file: Path) -> None:
    _set(env_file, APP_IDLE_TIMEOUT=None, APP_SESSION_TIMEOUT_MIN="45")  # a .env from before issue 16
    assert load_settings(env_file).app_idle_timeout == 45 * 60


def test_the_new_setting_wins_over_the_old_one(env_file: Path) -> None:
    _set(env_file, APP_SESSION_TIMEOUT_MIN="45", APP_IDLE_TIMEOUT="600")
    assert load_settings(env_file).app_idle_timeout == 600


def test_bad_values_are_named(env_file: Path) -> None:
    values = read_env_file(DEFAULTS_FILE) | read_env_file(env_file)
    for key, value, words in (("APP_IDLE_TIMEOUT", "5", "APP_IDLE_TIMEOUT"), ("APP_SESSION_TTL", "x", "APP_SESSION_TTL"),
                              ("APP_REFRESH_S", "1", "APP_REFRESH_S")):
        with pytest.raises(SettingsError, match=words):
            settings_from_values({**values, key: value})
    del values["APP_IDLE_TIMEOUT"]
    with pytest.raises(SettingsError, match="APP_SESSION_TIMEOUT_MIN: minutes"):
        settings_from_values({**values, "APP_SESSION_TIMEOUT_MIN": "half an hour"})
