"""Overview: real health of Orthanc, PostgreSQL and workers; backlog and counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.envfile import read_env_file
from testkit.app_flows import Flow
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess
from tests.integration.app.conftest import AppEnv, assert_clean, frame_text, table_rows

pytestmark = pytest.mark.integration


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def cards(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown) + "\n" + "\n".join(str(c.value) for c in at.caption)


def test_counts_and_backlog_come_from_the_database(
    app_env: AppEnv, flows: dict[str, Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("overview", as_="viewer")
    m = metrics(at)
    assert m["Queued"] == "1"
    assert m["Waiting to retry"] == "1"
    assert m["Dead"] == "1"
    assert m["Sending"] == "0"
    assert m["Oldest queued job"].endswith(("min", "s")) and m["Oldest queued job"] != "none"
    assert m["Failed attempts (24 h)"] == "1"
    assert m["Jobs gone dead (24 h)"] == "1"
    assert m["AI overdue studies"] == "1"
    assert m["Failed studies"] == "1"
    # Seeded 30 minutes ago: "today" in the site's zone unless that was before midnight there.
    local_now = datetime.now(app_env.settings.zone)
    if local_now.hour > 0 or local_now.minute > 45:
        assert m["Studies received"] == "7"
        assert m[f"Sent to {app_env.settings.ai_modality}"] == "3"
        assert m["AI results back"] == "1"
        assert m["Delivered"] == "1"
    text = cards(at)
    assert "**Orthanc** &nbsp; :green[● Up]" in text and "1.10.1" in text
    assert "**PostgreSQL** &nbsp; :green[● Up]" in text
    assert "**Workers** &nbsp; :red[● Down]" in text and "no worker has ever reported" in text
    assert str(app_env.settings.dicom_storage) in text


def test_a_live_worker_shows_up_and_a_silent_one_goes_down(
    app_env: AppEnv, open_page: Callable[..., AppTest], tmp_path: Path
) -> None:
    values = read_env_file(app_env.qi_db.env_file)
    worker = WorkerProcess(values, tmp_path, "overview-worker").start()
    try:
        wait_until(lambda: app_env.scalar("SELECT bool_or(owns_cursor) FROM worker_heartbeats"),
                   timeout=30, what="the worker to own the /changes cursor")
        at = open_page("overview")
        text = cards(at)
        assert "**Workers** &nbsp; :green[● Up]" in text, text
        assert "1 of 1 alive" in text
        rows = table_rows(at, "Worker")
        assert rows[0]["State"] == "alive" and rows[0]["Owns cursor"]
    finally:
        worker.kill()  # a crash: the heartbeat row stays behind and ages
    app_env.sql_exec("UPDATE worker_heartbeats SET heartbeat_at = heartbeat_at - interval '10 minutes'")
    at = open_page("overview")
    text = cards(at)
    assert "**Workers** &nbsp; :red[● Down]" in text and "no heartbeat for 10 min" in text
    assert table_rows(at, "Worker")[0]["State"] == "DOWN"


def test_orthanc_down_shows_as_down(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    app_env.reconfigure(ORTHANC_WEB_PORT=str(free_port()))
    at = open_page("overview")
    text = cards(at)
    assert "**Orthanc** &nbsp; :red[● Down]" in text and "unreachable" in text
    assert "**PostgreSQL** &nbsp; :green[● Up]" in text


def test_postgres_down_shows_as_down_without_a_traceback(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    at = open_page("overview")  # logged in while the database is up
    app_env.reconfigure(POSTGRES_PORT=str(free_port()))
    at.run()
    assert_clean(at)
    text = cards(at)
    assert "**PostgreSQL** &nbsp; :red[● Down]" in text
    assert "**Orthanc** &nbsp; :green[● Up]" in text
    assert any("database is unavailable" in e.value for e in at.error)
    assert "Traceback" not in frame_text(at)
