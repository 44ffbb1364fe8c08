"""`make seed-modalities` (ops.tooling.seed) against the harness's real Orthanc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from testkit.harness.stack import OrthancServer, write_env

pytestmark = pytest.mark.integration


def run_seed(env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    return subprocess.run(
        [sys.executable, "-m", "ops.tooling.seed"], capture_output=True, text=True, env=env,
        cwd=PROJECT_ROOT, timeout=60, check=False,
    )


def env_with(hub_values: dict[str, str], tmp_path: Path, lines: dict[str, str], raw_tail: str = "") -> Path:
    path = write_env({**hub_values, **lines}, tmp_path / ".env")
    if raw_tail:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(raw_tail + "\n")
    return path


def modalities(orthanc: OrthancServer) -> dict[str, dict]:
    assert orthanc.rest is not None
    return dict(orthanc.rest.get("/modalities", expand=""))


def test_creates_then_is_idempotent_then_updates_and_leaves_ui_destinations_alone(
    clean_orthanc: OrthancServer, hub_values: dict[str, str], tmp_path: Path
) -> None:
    rest = clean_orthanc.rest
    assert rest is not None
    rest.put_modality("FROMUI", "FROMUI", 11999)
    lines = {"MODALITY_PACS": "PACS|127.0.0.1|11112", "MODALITY_MERCURE": "MERCURE|127.0.0.1|11113"}
    env_file = env_with(hub_values, tmp_path, lines)

    first = run_seed(env_file)
    assert first.returncode == 0, first.stderr
    assert "PACS" in first.stdout and "created" in first.stdout
    assert "FROMUI" in first.stdout and "left alone" in first.stdout
    current = modalities(clean_orthanc)
    assert current["PACS"]["AET"] == "PACS" and current["PACS"]["Port"] == 11112
    assert current["MERCURE"]["Host"] == "127.0.0.1" and current["MERCURE"]["Port"] == 11113
    assert current["FROMUI"]["Port"] == 11999

    second = run_seed(env_file)
    assert second.returncode == 0, second.stderr
    assert "2 unchanged" in second.stdout and "0 created" in second.stdout

    # A field set outside .env (as the app may) survives an update of AET/host/port.
    rest.put("/modalities/PACS", {**current["PACS"], "Manufacturer": "GE"})
    env_file = env_with(hub_values, tmp_path, {**lines, "MODALITY_PACS": "PACS2|127.0.0.1|11120"})
    third = run_seed(env_file)
    assert third.returncode == 0, third.stderr
    assert "1 updated" in third.stdout
    after = modalities(clean_orthanc)
    assert (after["PACS"]["AET"], after["PACS"]["Port"], after["PACS"]["Manufacturer"]) == ("PACS2", 11120, "GE")
    assert after["FROMUI"]["AET"] == "FROMUI"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("MODALITY_BAD=PACS|127.0.0.1", "expected AET|HOST|PORT"),
        ("MODALITY_BAD=PACS|127.0.0.1|104|x", "expected AET|HOST|PORT"),
        ("MODALITY_BAD=", "expected AET|HOST|PORT"),
        ("MODALITY_BAD=THIS_AET_IS_TOO_LONG|127.0.0.1|104", "at most 16 characters"),
        ("MODALITY_BAD=PA$CS|127.0.0.1|104", "may only hold"),
        ("MODALITY_BAD=PACS|not a host!|104", "is not an IP address or host name"),
        ("MODALITY_BAD=PACS|127.0.0.1|abc", "whole number"),
        ("MODALITY_BAD=PACS|127.0.0.1|70000", "between 1 and 65535"),
        ("MODALITY_=PACS|127.0.0.1|104", "destination name"),
        ("MODALITY_bad=PACS|127.0.0.1|104", "is not a valid name"),
        ("MODALITY_BAD PACS|127.0.0.1|104", "cannot parse"),
    ],
)
def test_a_malformed_line_is_refused_and_nothing_is_applied(
    clean_orthanc: OrthancServer, hub_values: dict[str, str], tmp_path: Path, line: str, message: str
) -> None:
    env_file = env_with(hub_values, tmp_path, {"MODALITY_GOOD": "GOOD|127.0.0.1|11112"}, raw_tail=line)
    result = run_seed(env_file)
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr
    assert "nothing was applied" in result.stderr
    assert modalities(clean_orthanc) == {}, "a good line next to a bad one must not be applied"


def test_unreachable_orthanc_exits_4(hub_values: dict[str, str], tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:  # bound, never listening
        closed.bind(("127.0.0.1", 0))
        env_file = env_with({**hub_values, "ORTHANC_WEB_PORT": str(closed.getsockname()[1])}, tmp_path,
                            {"MODALITY_PACS": "PACS|127.0.0.1|11112"})
        result = run_seed(env_file)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "unreachable" in result.stderr
