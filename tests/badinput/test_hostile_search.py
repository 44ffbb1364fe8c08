"""Hostile study search: core.queries against the real PostgreSQL, the Studies page and the CLI.

Documented behaviour: every study search field is an exact match on the whole value
(no LIKE, no wildcards), so `%`, `_` and `\\` find only a study whose value is exactly
that text; every value is a bind parameter. A NUL byte, which PostgreSQL cannot hold in
text, is refused by the driver and the page says so.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import DataError

from core import queries
from core.settings import PROJECT_ROOT
from testkit import app_flows
from tests.integration.app.conftest import assert_clean, study_no, table_rows

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert(1)</script>"
# Values a hostile sender can put in DICOM tags; each study gets one in every searchable column.
VALUES = ["%", "_", "\\", "'; DROP TABLE studies; --", SCRIPT, "[/]", "\u202eעברית 😀"]
FIELDS = {"accession": "accession_number", "patient_id": "patient_id", "source_aet": "source_aet"}


@pytest.fixture
def hostile_studies(app_env) -> dict[str, int]:
    """One study per hostile value (accession, patient id, source AET, description, destination),
    plus ordinary studies that a wildcard would wrongly match."""
    now = datetime.now(UTC)
    ids: dict[str, int] = {}
    with app_env.engine.begin() as conn:
        for n in range(3):
            app_flows.arrive(conn, 100 + n, now - timedelta(minutes=n + 30))
        for n, value in enumerate(VALUES):
            flow = app_flows.arrive(conn, n, now - timedelta(minutes=n), description=value, source_aet=value,
                               patient_id=value, patient_name=value, modality="CR")
            app_flows.route(conn, flow, now, value)
            conn.exec_driver_sql("UPDATE studies SET accession_number = %(v)s WHERE id = %(id)s",
                                 {"v": value, "id": flow.study_id})
            ids[value] = flow.study_id
    return ids


def _search(conn, **criteria) -> list[int]:
    return [r["id"] for r in queries.search_studies(conn, queries.StudyFilter(**criteria), limit=200).rows]


def test_queries_match_hostile_values_exactly(app_env, hostile_studies: dict[str, int]) -> None:
    total = app_env.scalar("SELECT count(*) FROM studies")
    with app_env.engine.connect() as conn:
        for value, study_id in hostile_studies.items():
            for field in (*FIELDS, "destination"):
                assert _search(conn, **{field: value}) == [study_id], (field, value)
            assert queries.find_study(conn, value) == [study_id]
        for near_miss in ("%%", "x%", "_%", "\\\\", "' OR '1'='1", "'; DROP TABLE studies; -", "script"):
            for field in (*FIELDS, "destination"):
                assert _search(conn, **{field: near_miss}) == [], (field, near_miss)
            assert queries.find_study(conn, near_miss) == []
        for digits in ("²", "٣", "9" * 30, "-1"):
            assert queries.find_study(conn, digits) == [], digits
        assert queries.find_study(conn, "x" * 100_000) == []
        assert _search(conn, accession="x" * 100_000) == []
        with pytest.raises(DataError, match="NUL"):
            _search(conn, accession="A\x00B")
    assert app_env.scalar("SELECT count(*) FROM studies") == total


def test_study_number_takes_only_ascii_digits() -> None:
    assert [queries.study_number(k) for k in ("12", " 7 ", "²", "٣", "1e3", "-1", "9" * 19, "")] == [
        12, 7, None, None, None, None, None, None]


def test_studies_page_finds_and_shows_hostile_values_verbatim(
    app_env, hostile_studies: dict[str, int], open_page
) -> None:
    at = open_page("studies", as_="operator")
    for value, study_id in hostile_studies.items():
        at.text_input(key="f_acc").input(value)
        next(b for b in at.form_submit_button if b.label == "Search").click()
        at.run()
        assert_clean(at)
        [row] = table_rows(at, "Study #")
        assert study_no(row) == study_id
        assert (row["Accession"], row["Description"], row["Source AET"], row["Patient ID"]) == (value,) * 4
        assert row["Destinations"] == value


def _cli(env_file, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "COLUMNS": "400"}
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def test_cli_search_and_study_with_hostile_text(app_env, hostile_studies: dict[str, int]) -> None:
    env_file = app_env.qi_db.env_file
    listed = _cli(env_file, "studies", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    for value in ("[/]", SCRIPT, "'; DROP TABLE studies; --"):
        assert value in listed.stdout  # data is printed as text, never as console markup
        found = _cli(env_file, "studies", "--search", value)
        assert found.returncode == 0, found.stderr
        assert value in found.stdout
        shown = _cli(env_file, "study", value)
        assert shown.returncode == 0, shown.stderr
        assert f"accession {value}" in shown.stdout
    for key in ("%", "²", "x" * 10_000):
        result = _cli(env_file, "study", key)
        if key == "%":
            assert result.returncode == 0 and f"Study {hostile_studies['%']}" in result.stdout
        else:
            assert result.returncode == 5 and "no study matches" in result.stderr, result.stderr[-500:]
    assert app_env.scalar("SELECT count(*) FROM studies") == len(hostile_studies) + 3


def test_cli_report_with_hostile_arguments(app_env, hostile_studies: dict[str, int], tmp_path) -> None:
    env_file = app_env.qi_db.env_file
    today = datetime.now(UTC).date()
    days = ["--from", (today - timedelta(days=1)).isoformat(), "--to", (today + timedelta(days=1)).isoformat()]
    for value in ("[/]", "'; DROP TABLE studies; --", "%"):
        out = tmp_path / "report.csv"
        result = _cli(env_file, "report", *days, "--source", value, "--output", str(out))
        assert result.returncode == 0, result.stderr
        lines = out.read_text(encoding="utf-8-sig").splitlines()
        assert len(lines) == 2 and value in lines[1]  # the header, and exactly that study
    backwards = _cli(env_file, "report", "--from", "2026-02-01", "--to", "2026-01-01", "--output", "-")
    assert backwards.returncode == 2 and "before the start date" in backwards.stderr
    bad_day = _cli(env_file, "report", "--from", "2026-13-45", "--to", "2026-01-01", "--output", "-")
    assert bad_day.returncode == 2 and "Traceback" not in bad_day.stderr
    assert app_env.scalar("SELECT count(*) FROM studies") == len(hostile_studies) + 3
