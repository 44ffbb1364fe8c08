"""Exports: the CSV/XLSX numbers are the views' numbers, in the contract's columns, streamed.

Also the CLI, `./orthanc report`, run as a subprocess the way an operator runs it.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import Engine, text

from core import qi, reports
from core.db import make_engine
from core.qi import QiFilter
from core.settings import PROJECT_ROOT
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
MARCH = QiFilter(date(2026, 3, 7), date(2026, 3, 8))
CONTRACT = (
    "study_instance_uid", "accession_number", "modality", "source_aet", "first_received_at", "stable_at",
    "ai_sent_at", "ai_result_at", "delivered_at", "wait_stable_s", "to_ai_s", "ai_round_trip_s",
    "to_destinations_s", "turnaround_s", "status", "destinations_ok", "destinations_failed",
)
SECONDS = ("wait_stable_s", "to_ai_s", "ai_round_trip_s", "result_settle_s", "to_destinations_s", "turnaround_s")
TIMES = ("first_received_at", "stable_at", "ai_sent_at", "ai_result_at", "ai_result_stable_at", "ready_at",
         "delivered_at")


@pytest.fixture
def engine(qi_db: QiDatabase) -> Iterator[Engine]:
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        qi.sync_qi_settings(conn, qi_db.settings)
        qi_fixture.build(conn)
    try:
        yield engine
    finally:
        engine.dispose()


def view_rows(engine: Engine, flt: QiFilter) -> dict[str, dict]:
    p_from, p_to = flt.bounds(LA)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM qi_study WHERE first_received_at >= :a AND first_received_at < :b"),
                            {"a": p_from, "b": p_to}).mappings().all()
    return {r["study_instance_uid"]: dict(r) for r in rows}


def assert_matches_view(exported: list[dict], view: dict[str, dict]) -> None:
    assert len(exported) == len(view)
    for row in exported:
        expected = view[row["study_instance_uid"]]
        for column in SECONDS:
            value = row[column]
            if expected[column] is None:
                assert value in ("", None), column
            else:
                assert float(value) == round(expected[column], 3), column
        for column in TIMES:
            value = row[column]
            if expected[column] is None:
                assert value in ("", None), column
            else:
                parsed = datetime.fromisoformat(value)
                assert parsed.utcoffset() is not None, "timestamps carry their offset"
                assert parsed == expected[column].replace(microsecond=expected[column].microsecond // 1000 * 1000)
        for column in ("accession_number", "modality", "source_aet", "status", "outcome", "sla_turnaround"):
            assert (row[column] or None) == expected[column], column
        for column in ("destinations_ok", "destinations_failed"):
            assert (row[column] or None) == (";".join(expected[column]) if expected[column] else None), column


def test_csv_export_equals_the_views(engine: Engine) -> None:
    buffer = io.BytesIO()
    with engine.connect() as conn, conn.begin():
        result = reports.export_studies(conn, MARCH, LA, "csv", buffer, batch=2)
    assert result.rows == 6
    content = buffer.getvalue().decode("utf-8")
    assert "SECRET^" not in content and "PID-" not in content  # no patient names or ids
    exported = list(csv.DictReader(io.StringIO(content)))
    assert tuple(exported[0].keys())[: len(CONTRACT)] == CONTRACT
    assert_matches_view(exported, view_rows(engine, MARCH))
    # sorted by arrival; offsets follow DST: S1 received 01:55 PST, delivered 03:08 PDT
    assert [r["accession_number"] for r in exported] == ["ACC-S3", "ACC-S2", "ACC-S1", "ACC-S4", "ACC-S5", "ACC-S7"]
    s1 = exported[2]
    assert (s1["first_received_at"], s1["delivered_at"]) == ("2026-03-08T01:55:00.000-08:00",
                                                             "2026-03-08T03:08:10.000-07:00")
    assert (s1["turnaround_s"], s1["destinations_ok"]) == ("790.0", "LPCHROUTER;MERCURE;MODLINK")


def test_xlsx_export_equals_the_views(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "studies.xlsx"
    with engine.connect() as conn, conn.begin():
        reports.export_studies(conn, MARCH, LA, "xlsx", path)
    sheet = openpyxl.load_workbook(path, read_only=True)["studies"]
    values = list(sheet.iter_rows(values_only=True))
    header, body = values[0], values[1:]
    assert header[: len(CONTRACT)] == CONTRACT
    exported = [dict(zip(header, row, strict=True)) for row in body]
    assert isinstance(exported[0]["wait_stable_s"], int | float)  # numbers stay numbers in Excel
    assert_matches_view(exported, view_rows(engine, MARCH))


def test_summary_export_equals_the_daily_summary(engine: Engine, tmp_path: Path) -> None:
    for fmt in reports.FORMATS:
        path = tmp_path / f"summary.{fmt}"
        with engine.connect() as conn, conn.begin():
            result = reports.export_summary(conn, MARCH, LA, fmt, path)
            expected = qi.daily_summary(conn, MARCH, LA)
        assert result.rows == 2
        if fmt == "csv":
            rows = list(csv.DictReader(path.open(encoding="utf-8")))
        else:
            values = list(openpyxl.load_workbook(path, read_only=True)["daily summary"].iter_rows(values_only=True))
            rows = [dict(zip(values[0], v, strict=True)) for v in values[1:]]
        assert [r["day"] for r in rows] == ["2026-03-07", "2026-03-08"]
        d8 = rows[1]
        assert (float(d8["turnaround_p90"]), float(d8["sla_turnaround_compliance"]), int(d8["studies"])) == (
            2318.0, 0.75, 5)
        for column in expected.columns:
            want = expected.iloc[1][column]
            got = d8[column]
            if isinstance(want, float):
                assert (got in ("", None)) if want != want else float(got) == round(want, 3), column


def test_export_streams_through_a_server_side_cursor(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        rows = qi.iter_studies(conn, QiFilter(date(2026, 1, 1), date(2026, 12, 31)), LA, batch=2)
        first = next(rows)
        assert first["accession_number"] == "ACC-S3"
        cursors = conn.execute(text("SELECT statement FROM pg_cursors WHERE name <> ''")).scalars().all()
        assert any("qi_filtered_studies" in c for c in cursors), cursors
        assert len([first, *rows]) == 9


def orthanc_cli(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_cli_report(engine: Engine, qi_db: QiDatabase, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    done = orthanc_cli("report", "--from", "2026-03-07", "--to", "2026-03-08", "--format", "csv",
                       "--output", str(out), env_file=qi_db.env_file)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 studies" in done.stderr
    exported = list(csv.DictReader(out.open(encoding="utf-8")))
    assert_matches_view(exported, view_rows(engine, MARCH))

    xlsx = tmp_path / "summary.xlsx"
    done = orthanc_cli("report", "--from", "2026-03-07", "--to", "2026-03-08", "--format", "xlsx", "--summary",
                       "--modality", "CR", "--output", str(xlsx), env_file=qi_db.env_file)
    assert done.returncode == 0, done.stderr
    values = list(openpyxl.load_workbook(xlsx, read_only=True)["daily summary"].iter_rows(values_only=True))
    assert [v[:2] for v in values[1:]] == [("2026-03-08", 3)]  # S1, S4, S7 are CR

    stdout = orthanc_cli("report", "--from", "2026-11-01", "--to", "2026-11-01", "--output", "-",
                         env_file=qi_db.env_file)
    assert stdout.returncode == 0 and len(stdout.stdout.strip().splitlines()) == 3


def test_cli_report_errors(qi_db: QiDatabase, tmp_path: Path) -> None:
    reversed_days = orthanc_cli("report", "--from", "2026-03-08", "--to", "2026-03-07", "--output",
                                str(tmp_path / "x.csv"), env_file=qi_db.env_file)
    assert reversed_days.returncode == 2 and "before the start date" in reversed_days.stderr
    bad_date = orthanc_cli("report", "--from", "08/03/2026", "--to", "2026-03-07", "--output", "x.csv",
                           env_file=qi_db.env_file)
    assert bad_date.returncode == 2
    broken = tmp_path / "broken.env"
    broken.write_text(qi_db.env_file.read_text() + "\nTZ=Mars/Olympus\n")
    bad_env = orthanc_cli("report", "--from", "2026-03-07", "--to", "2026-03-08", "--output", "x.csv",
                          env_file=broken)
    assert bad_env.returncode == 3 and "TZ" in bad_env.stderr
