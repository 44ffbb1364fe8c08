"""Issue 18, part 4: `./orthanc help`, `make backup FILE=`, the untracked active routing.yml,
and log times in UTC across Orthanc, the Python services, the app and PostgreSQL."""

from __future__ import annotations

import calendar
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.logs import JsonFormatter
from core.rules import parse_rules
from core.settings import PROJECT_ROOT
from ops import pgcluster
from ops.cli import app
from ops.logredact import redact_bytes, utc_stamp
from ops.rules_file import RULES_EXAMPLE, create_rules_file
from ops.tooling.backup import BackupError, archive_name, resolve_backup_file


def test_orthanc_help_lists_every_command_with_one_line() -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["help"])
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line for line in listing.output.splitlines() if line.startswith("  ")}
    for command in ("status", "studies", "queue", "retry", "hold", "release", "alerts", "report", "logs",
                    "migrate-storage", "tls", "help"):
        assert command in lines, f"{command} missing from ./orthanc help"
        assert len(lines[command].split(maxsplit=1)) == 2, f"{command} has no description"
    assert "--state" in runner.invoke(app, ["help", "queue"]).output
    assert runner.invoke(app, ["help", "no-such-command"]).exit_code == 2


def test_backup_file_names(tmp_path: Path) -> None:
    assert archive_name("my-backup", encrypt=False) == "my-backup.tar"
    assert archive_name("my-backup.tar", encrypt=False) == "my-backup.tar"
    assert archive_name("my-backup.tar", encrypt=True) == "my-backup.tar.age"
    assert archive_name("my-backup.tar.age", encrypt=True) == "my-backup.tar.age"
    for bad, why in (("my-backup.tar.gz", "not compressed"), ("x.tar.age", "ENCRYPT=1"), ("", "file name")):
        with pytest.raises(BackupError, match=why):
            archive_name(bad, encrypt=False)
    backups = tmp_path / "backups"
    assert resolve_backup_file("site-a.tar", backups, False) == backups / "site-a.tar"
    assert resolve_backup_file(str(tmp_path / "usb" / "site-a"), backups, False) == tmp_path / "usb" / "site-a.tar"


def test_active_rules_file_is_created_from_the_tracked_example_and_untracked(tmp_path: Path) -> None:
    parse_rules(RULES_EXAMPLE.read_text(), RULES_EXAMPLE.name)  # the example is valid rules
    active = tmp_path / "config" / "routing.yml"
    assert create_rules_file(active) and active.read_text() == RULES_EXAMPLE.read_text()
    active.write_text("version: 1\nrules: []\n")  # the site's own rules are never overwritten
    assert not create_rules_file(active) and active.read_text() == "version: 1\nrules: []\n"
    ignored = subprocess.run(["git", "-C", str(PROJECT_ROOT), "check-ignore", "--no-index", "-q",
                              "config/routing.yml"], check=False)
    assert ignored.returncode == 0, "config/routing.yml must be ignored by git (.gitignore)"
    defaults = (PROJECT_ROOT / "config" / "env.defaults").read_text()
    assert "\nROUTING_RULES=config/routing.yml\n" in defaults


@pytest.fixture
def los_angeles() -> Iterator[None]:
    """This process in the test stack's zone, as Orthanc and its log filter run."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def _at(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.usefixtures("los_angeles")
def test_orthanc_lines_get_utc_times() -> None:
    winter = "W1206 08:41:03.106930 main.cpp:2017] Orthanc version: 1.10.1"
    assert utc_stamp(winter, _at("2026-12-06T16:41:04")) == (
        "W 2026-12-06T16:41:03.106930Z main.cpp:2017] Orthanc version: 1.10.1")
    summer = "E0701 12:00:00.000001 x.cpp:1] failed"  # PDT, UTC-7
    assert utc_stamp(summer, _at("2026-07-01T19:00:01")) == "E 2026-07-01T19:00:00.000001Z x.cpp:1] failed"
    # Written on 31 December, local time, read just after midnight: last year's line.
    # 23:59:59.9 PST on 31 December 2026 is 07:59:59.9 UTC on 1 January 2027 (not 2027-12-31).
    assert utc_stamp("I1231 23:59:59.900000 a] b", _at("2027-01-01T08:00:00")) == "I 2027-01-01T07:59:59.900000Z a] b"
    assert utc_stamp("Lua print output", 0) == "Lua print output"
    # Through the whole filter: times rewritten, patient values still redacted.
    now = datetime.now(UTC)
    local = time.strftime("%m%d %H:%M:%S", time.localtime(now.timestamp()))
    out = redact_bytes(f"E{local}.000000 a.cpp:1] PatientID=123456".encode()).decode()
    assert out.startswith(f"E {now:%Y-%m-%dT%H:%M:%S}.000000Z a.cpp:1] ") and "123456" not in out


def test_python_service_and_postgres_log_times_are_utc(capsys: pytest.CaptureFixture[str]) -> None:
    record = logging.LogRecord("worker", logging.INFO, __file__, 1, "hello", None, None)
    ts = json.loads(JsonFormatter().format(record))["ts"]
    assert ts.endswith("Z") and datetime.fromisoformat(ts) == datetime.fromtimestamp(
        record.created, UTC).replace(microsecond=int(record.msecs) * 1000)
    argv = pgcluster.postgres_argv(Path("/srv/pg"), 5432)
    assert argv[argv.index("log_timezone=UTC") - 1] == "-c"


def test_app_streamlit_log_times_are_utc() -> None:
    """The app's process: Streamlit's own log lines carry UTC with a 'Z', whatever TZ is."""
    script = ("import app.server\nfrom streamlit import logger\n"
              "logger.get_logger('streamlit.probe').warning('probe')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "TZ": "America/Los_Angeles"}, timeout=60, check=True)
    line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "probe" in line)
    stamp = datetime.strptime(line.split("Z ", 1)[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60, line
