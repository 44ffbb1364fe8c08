"""Issue 18: the real Orthanc's and PostgreSQL's log lines carry UTC times, labelled,
like the worker's JSON `ts` (tests/unit/test_day_two_small.py covers the formats).

The session's Orthanc runs in TZ America/Los_Angeles through ops/logredact.py, as the
native stack runs it; its own stamp would be Los Angeles time without a zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from testkit.harness.stack import OrthancServer, PostgresServer

pytestmark = pytest.mark.integration

ORTHANC_LINE = re.compile(r"^[IWEFT] (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z \S")
POSTGRES_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[")


def test_orthanc_and_postgres_log_lines_are_in_utc(clean_orthanc: OrthancServer, pg_server: PostgresServer) -> None:
    now = datetime.now(UTC)
    lines = [line for line in clean_orthanc.log_text().splitlines() if line[:1] in "IWEFT" and line[1:2].isdigit()]
    assert not lines, f"Orthanc lines with its local, unlabelled stamp: {lines[:3]}"
    stamps = [m[1] for m in map(ORTHANC_LINE.match, clean_orthanc.log_text().splitlines()) if m]
    assert stamps, "no Orthanc log line with a UTC time"
    newest = datetime.fromisoformat(stamps[-1]).replace(tzinfo=UTC)
    assert timedelta(0) <= now - newest < timedelta(hours=6), (stamps[-1], now)  # not Los Angeles time
    pg = [m[1] for m in map(POSTGRES_LINE.match, pg_server.logfile.read_text(errors="replace").splitlines()) if m]
    assert pg, "no PostgreSQL log line with a UTC time"
    assert timedelta(0) <= now - datetime.fromisoformat(pg[-1]).replace(tzinfo=UTC) < timedelta(hours=6)
