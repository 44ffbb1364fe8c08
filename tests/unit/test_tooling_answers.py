"""The wizard's per-answer validation (ops.tooling.answers) and summary masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.envfile import GENERATED_SECRETS, read_env_file
from core.settings import DEFAULTS_FILE
from ops.tooling import answers
from ops.tooling.wizard import summary


def test_paths(tmp_path: Path) -> None:
    assert answers.storage_path(str(tmp_path / "new" / "dir")) == str(tmp_path / "new" / "dir")
    with pytest.raises(ValueError, match="absolute"):
        answers.storage_path("relative")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        answers.storage_path(str(tmp_path / "file" / "sub"))
    with pytest.raises(ValueError, match="different"):
        answers.postgres_path(str(tmp_path / "a"), dicom_storage=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="inside one another"):
        answers.postgres_path(str(tmp_path / "a" / "pg"), dicom_storage=str(tmp_path / "a"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="holds no PostgreSQL cluster"):
        answers.postgres_path(str(tmp_path / "full"), dicom_storage=str(tmp_path / "d"))


def test_ports_aet_tz_destination() -> None:
    assert answers.port("104", taken={}, key="DICOM_PORT") == 104
    with pytest.raises(ValueError, match="already used by DICOM_PORT"):
        answers.port("104", taken={104: "DICOM_PORT"}, key="ORTHANC_WEB_PORT")
    assert answers.port("104", taken={104: "DICOM_PORT"}, key="DICOM_PORT") == 104
    with pytest.raises(ValueError, match="between 1 and 65535"):
        answers.port("0", taken={}, key="X")
    with pytest.raises(ValueError, match="at most 16"):
        answers.aet("A" * 17)
    with pytest.raises(ValueError, match="IANA"):
        answers.time_zone("Nowhere/Land")
    modality = answers.destination("pacs=PACS|127.0.0.1|11112")
    assert (modality.name, modality.aet, modality.port) == ("PACS", "PACS", 11112)
    with pytest.raises(ValueError, match="NAME=AET"):
        answers.destination("PACS|127.0.0.1|11112")
    with pytest.raises(ValueError, match="password needs at least 12"):
        answers.password("short")


def test_summary_never_shows_secrets() -> None:
    values = read_env_file(DEFAULTS_FILE)
    values.update({k: f"secret-value-{i}-abcdefgh" for i, k in enumerate(GENERATED_SECRETS)})
    text = summary(values, dict.fromkeys(GENERATED_SECRETS, "generated"))
    assert "secret-value" not in text and "(generated, not shown)" in text
