"""The Alerts page: open and past incidents as the alerter records them, and the test alert
(operator role or above), sent to a real HTTP receiver on 127.0.0.1 and audited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core import recorder
from core.states import IncidentKind
from tests.integration.alert_receivers import WebhookReceiver
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, frame_text, table_rows

pytestmark = pytest.mark.integration


def test_open_and_past_incidents_are_listed_without_a_send_for_a_viewer(
    app_env: AppEnv, open_page: Callable[..., AppTest],
) -> None:
    now = datetime.now(UTC)
    with app_env.engine.begin() as conn:
        recorder.incident_seen(conn, IncidentKind.JOB_DEAD, "PACS", at=now - timedelta(minutes=5),
                               summary="3 jobs to PACS are dead", detail={}, occurrences=3)
        old = recorder.incident_seen(conn, IncidentKind.DISK_LOW, "DICOM_STORAGE", at=now - timedelta(hours=2),
                                     summary="DICOM_STORAGE is low", detail={}, occurrences=1)
        recorder.incident_notified(conn, old.id, at=now - timedelta(hours=2))
        recorder.alert_delivered(conn, old.id, channel="webhook", message="open", attempt=1,
                                 at=now - timedelta(hours=2), ok=False, error="cannot reach the webhook: refused")
        recorder.incident_resolved(conn, old.id, at=now - timedelta(hours=1))
    at = open_page("alerts", as_="viewer")
    shown = frame_text(at)
    assert "Open (1)" in shown and "3 jobs to PACS are dead" in shown
    [current] = [r for r in table_rows(at, "What") if r["For"] == "PACS"]
    assert current["Count"] == 3 and current["Last delivery"].startswith("none")
    assert "webhook: FAILED: cannot reach the webhook" in shown and "DICOM_STORAGE is low" in shown
    assert at.button(key="alerts_test_button").disabled


def test_operator_sends_a_test_alert_recorded_and_audited(
    app_env: AppEnv, open_page: Callable[..., AppTest],
) -> None:
    with WebhookReceiver() as receiver:
        app_env.reconfigure(ALERT_WEBHOOK_URL=receiver.url())
        at = open_page("alerts", as_="operator")
        assert not at.button(key="alerts_test_button").disabled
        at.button(key="alerts_test_button").click()
        at.run()
        assert_clean(at)
    flash = f"Test alert #{receiver.posts[0].json['incident']['id']}: webhook: sent"
    assert flash in [str(s.value) for s in at.success] and not at.error
    assert receiver.posts[0].json["message"] == "test" and USERS["operator"] in receiver.posts[0].json["text"]
    [entry] = app_env.audit("alerts.test")
    assert (entry.actor, entry.source, entry.after) == (USERS["operator"], "ui", {"webhook": "sent"})
    assert "Test alert" in frame_text(at)  # listed among the past incidents


def test_a_viewers_forged_click_sends_nothing(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    with WebhookReceiver() as receiver:
        app_env.reconfigure(ALERT_WEBHOOK_URL=receiver.url())
        at = open_page("alerts", as_="viewer")
        button = at.button(key="alerts_test_button")
        assert button.disabled
        button._value = True  # what a tampered client can send for a disabled button (tests/security/test_roles.py)
        at.run()
        assert_clean(at)
    assert receiver.posts == [] and app_env.audit("alerts.test") == []
    assert app_env.scalar("SELECT count(*) FROM incidents") == 0
