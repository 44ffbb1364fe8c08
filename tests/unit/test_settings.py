"""The settings loader: defaults, .env overlay, and a clear error for every bad value."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.envfile import ensure_env_file, read_env_file
from core.settings import DEFAULTS_FILE, SettingsError, load_settings, settings_from_values


@pytest.fixture
def values(tmp_path: Path) -> dict[str, str]:
    """Valid raw settings: the shipped defaults with secrets and writable paths."""
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    base = read_env_file(DEFAULTS_FILE) | read_env_file(env)
    base.update(DICOM_STORAGE=str(tmp_path / "dicom"), POSTGRES_STORAGE=str(tmp_path / "pg"),
                STATE_DIR=str(tmp_path / "state"))
    return base


def error_for(values: dict[str, str], **changes: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings_from_values({**values, **changes})
    return str(info.value)


def test_defaults_with_generated_secrets_load(values):
    settings = settings_from_values(values)
    assert settings.orthanc_aet == "ORTHANC_LPCH"
    assert settings.dicom_port == 4242 and settings.operator_ui_port == 8040
    assert settings.tz == "America/Los_Angeles"
    assert settings.ai_result_aets == ("MERCURE",)
    assert settings.modalities == {}  # the example destinations ship commented out
    assert "***" in repr(settings.orthanc_password) or "**" in str(settings.orthanc_password)


def test_env_file_overrides_defaults_and_process_env_does_not(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    env.write_text(env.read_text().replace("ORTHANC_AET=ORTHANC_LPCH", "ORTHANC_AET=HUB_TEST"))
    monkeypatch.setenv("ORTHANC_AET", "FROM_SHELL")
    monkeypatch.setenv("TZ", "UTC")
    settings = load_settings(env)
    assert settings.orthanc_aet == "HUB_TEST"
    assert settings.tz == "America/Los_Angeles"


def test_generated_env_is_private_and_secrets_are_unique(tmp_path):
    env = tmp_path / ".env"
    assert ensure_env_file(env, DEFAULTS_FILE)
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    data = read_env_file(env)
    secrets = [data[k] for k in ("ORTHANC_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_DB_PASSWORD", "APP_ADMIN_PASSWORD")]
    assert len(set(secrets)) == 4 and all(len(s) >= 32 for s in secrets)
    assert not ensure_env_file(env, DEFAULTS_FILE)  # a second run keeps them
    assert read_env_file(env) == data


def test_modality_lines_are_parsed(values):
    settings = settings_from_values({**values, "MODALITY_PACS1": "PACS1|127.0.0.1|11112"})
    pacs = settings.modalities["PACS1"]
    assert (pacs.aet, pacs.host, pacs.port) == ("PACS1", "127.0.0.1", 11112)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ORTHANC_AET": "A_VERY_LONG_AE_TITLE_X"}, "ORTHANC_AET: an AE title has at most 16 characters"),
        ({"ORTHANC_AET": "BAD\\AET"}, "ORTHANC_AET: an AE title may only hold"),
        ({"ORTHANC_AET": " PADDED"}, "ORTHANC_AET: an AE title must not start or end with a space"),
        ({"ORTHANC_AET": ""}, "ORTHANC_AET: an AE title must not be empty"),
        ({"DICOM_PORT": "70000"}, "DICOM_PORT: Input should be less than or equal to 65535"),
        ({"DICOM_PORT": "0"}, "DICOM_PORT: Input should be greater than or equal to 1"),
        ({"OHIF_PORT": "eighty"}, "OHIF_PORT: Input should be a valid integer"),
        ({"OHIF_PORT": "8040"}, "OHIF_PORT and OPERATOR_UI_PORT both use port 8040"),
        ({"MODALITY_PACS": "PACS|127.0.0.1"}, "MODALITY_PACS: expected AET|HOST|PORT"),
        ({"MODALITY_PACS": "PACS|127.0.0.1|99999"}, "MODALITY_PACS: the port must be between 1 and 65535"),
        ({"MODALITY_PACS": "PACS|bad host!|104"}, "MODALITY_PACS: 'bad host!' is not an IP address or host name"),
        ({"MODALITY_PACS": "WAY_TOO_LONG_AE_TITLE|127.0.0.1|104"}, "MODALITY_PACS: an AE title has at most 16"),
        ({"MODALITY_PACS": "PACS|127.0.0.1|port"}, "MODALITY_PACS: the port must be a whole number"),
        ({"TZ": "Mars/Olympus"}, "TZ: 'Mars/Olympus' is not an IANA time zone"),
        ({"ORTHANC_PASSWORD": ""}, "ORTHANC_PASSWORD: is empty: run `make setup`"),
        ({"POSTGRES_PASSWORD": "short"}, "POSTGRES_PASSWORD: must have at least 12 characters"),
        ({"AI_RESULT_AETS": " , "}, "AI_RESULT_AETS: list at least one AE title"),
        ({"AI_RESULT_AETS": "MERCURE,THIS_AET_IS_FAR_TOO_LONG"}, "AI_RESULT_AETS: an AE title has at most 16"),
        ({"RETRY_CAP": "1", "RETRY_BASE": "10"}, "RETRY_CAP must not be smaller than RETRY_BASE"),
        ({"RETRY_MAX_ATTEMPTS": "0"}, "RETRY_MAX_ATTEMPTS: Input should be greater than or equal to 1"),
        ({"POLL_INTERVAL": "-1"}, "POLL_INTERVAL: Input should be greater than 0"),
        ({"AI_MODALITY": "bad name!"}, "AI_MODALITY: a destination name holds letters"),
        ({"POSTGRES_DB": "Robert'); DROP"}, "POSTGRES_DB: String should match pattern"),
        ({"QI_DB": "orthanc"}, "QI_DB must differ from POSTGRES_DB"),
        ({"ORTHANC_AETT": "X"}, "ORTHANC_AETT: unknown setting"),
    ],
)
def test_each_bad_value_names_variable_and_rule(values, changes, expected):
    assert expected in error_for(values, **changes)


def test_all_errors_are_reported_at_once(values):
    message = error_for(values, ORTHANC_AET="X" * 20, DICOM_PORT="0", MODALITY_A="nope")
    assert "ORTHANC_AET" in message and "DICOM_PORT" in message and "MODALITY_A" in message


def test_malformed_env_line_is_an_error_with_line_number(tmp_path):
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    env.write_text(env.read_text() + "THIS LINE IS BROKEN\nlowercase=1\n")
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    lines = len(env.read_text().splitlines())
    assert f".env:{lines - 1}: cannot parse 'THIS LINE IS BROKEN'" in str(info.value)
    assert f".env:{lines}: 'lowercase' is not a valid name" in str(info.value)


def test_duplicate_key_is_an_error(tmp_path):
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    env.write_text(env.read_text() + "DICOM_PORT=4243\nDICOM_PORT=4244\n")
    with pytest.raises(SettingsError, match="DICOM_PORT is set twice"):
        load_settings(env)


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A directory this user cannot write: read-only for a normal user, a read-only mount for root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        yield locked
        locked.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)], check=True)
    try:
        yield locked
    finally:
        subprocess.run(["umount", str(locked)], check=True)


def test_unwritable_storage_path_is_refused(values, unwritable_dir):
    settings = settings_from_values({**values, "DICOM_STORAGE": str(unwritable_dir / "dicom")})
    with pytest.raises(SettingsError) as info:
        settings.check_storage()
    assert f"DICOM_STORAGE: {unwritable_dir} is not writable by this user" in str(info.value)


def test_storage_path_under_a_file_is_refused(values, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = settings_from_values({**values, "DICOM_STORAGE": str(blocker / "dicom")})
    with pytest.raises(SettingsError, match=r"DICOM_STORAGE: .*file is not a directory"):
        settings.check_storage()


def test_relative_paths_resolve_against_the_project(values):
    settings = settings_from_values({**values, "STATE_DIR": "./var"})
    assert settings.state_dir.is_absolute() and settings.state_dir.name == "var"
