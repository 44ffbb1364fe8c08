"""Alert settings (each problem names its variable), the signature, and the message's wording."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from core import alerts
from core.envfile import ensure_env_file, read_env_file
from core.settings import DEFAULTS_FILE, SettingsError, settings_from_values
from core.states import AlertMessage


@pytest.fixture
def values(tmp_path: Path) -> dict[str, str]:
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


def test_defaults_switch_every_channel_off_and_generate_the_webhook_secret(values):
    settings = settings_from_values(values)
    assert len(values["ALERT_WEBHOOK_SECRET"]) >= 32
    assert (settings.alert_check_s, settings.alert_repeat, settings.alert_outage_min) == (30, 14400, 15)
    assert alerts.channels_from(settings) == []
    assert settings.alert_smtp_starttls and settings.alert_smtp_port == 587


SMTP = {"ALERT_SMTP_HOST": "mail.hospital.example", "ALERT_SMTP_FROM": "hub@hospital.example",
        "ALERT_SMTP_TO": "a@hospital.example, b@hospital.example"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ALERT_WEBHOOK_URL": "hooks.slack.example/x"}, "ALERT_WEBHOOK_URL: must be an http:// or https:// URL"),
        ({"ALERT_WEBHOOK_URL": "https://x.example/a b"}, "ALERT_WEBHOOK_URL: must be an http:// or https:// URL"),
        ({"ALERT_WEBHOOK_URL": "https://x.example/h", "ALERT_WEBHOOK_SECRET": ""}, "ALERT_WEBHOOK_SECRET: is empty"),
        ({"ALERT_WEBHOOK_SECRET": "short"}, "ALERT_WEBHOOK_SECRET: must have at least 12 characters"),
        ({"ALERT_SMTP_HOST": "bad host!"}, "ALERT_SMTP_HOST: 'bad host!' is not an IP address or host name"),
        ({"ALERT_SMTP_HOST": "mail.example"}, "ALERT_SMTP_FROM: set the sender address"),
        ({"ALERT_SMTP_HOST": "mail.example"}, "ALERT_SMTP_TO: list at least one recipient"),
        ({**SMTP, "ALERT_SMTP_TO": "oncall"}, "ALERT_SMTP_TO: 'oncall' is not an e-mail address"),
        ({**SMTP, "ALERT_SMTP_FROM": "hub"}, "ALERT_SMTP_FROM: 'hub' is not an e-mail address"),
        ({**SMTP, "ALERT_SMTP_PORT": "0"}, "ALERT_SMTP_PORT: Input should be greater than or equal to 1"),
        ({**SMTP, "ALERT_SMTP_USER": "hub"}, "ALERT_SMTP_USER, ALERT_SMTP_PASSWORD: give both"),
        ({**SMTP, "ALERT_SMTP_USER": "hub", "ALERT_SMTP_PASSWORD": "pw-of-the-mail-server",
          "ALERT_SMTP_STARTTLS": "off"}, "ALERT_SMTP_STARTTLS: must be on when ALERT_SMTP_USER is set"),
        ({**SMTP, "ALERT_SMTP_STARTTLS": "maybe"}, "ALERT_SMTP_STARTTLS: use on or off"),
        ({**SMTP, "ALERT_SMTP_CA_FILE": "/nonexistent/ca.pem"}, "ALERT_SMTP_CA_FILE: /nonexistent/ca.pem does not exist"),
        ({"ALERT_REPEAT": "0"}, "ALERT_REPEAT: Input should be greater than or equal to 1"),
        ({"ALERT_CHECK_S": "0.5"}, "ALERT_CHECK_S: Input should be greater than or equal to 1"),
        ({"ALERT_OUTAGE_MIN": "-1"}, "ALERT_OUTAGE_MIN: Input should be greater than or equal to 0"),
    ],
)
def test_each_bad_alert_setting_names_its_variable(values, changes, expected):
    assert expected in error_for(values, **changes)


def test_both_channels_from_valid_settings(values):
    settings = settings_from_values({**values, **SMTP, "ALERT_WEBHOOK_URL": "https://hooks.example/services/T/B/X"})
    webhook, email = alerts.channels_from(settings)
    assert isinstance(webhook, alerts.WebhookChannel) and isinstance(email, alerts.EmailChannel)
    assert email.recipients == ("a@hospital.example", "b@hospital.example") and email.starttls
    described = "\n".join(alerts.describe_channels(settings))
    assert "services/T/B/X" not in described and "webhook: on" in described and "2 recipient(s)" in described


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = b'{"text": "x"}'
    expected = hmac.new(b"a-secret-of-some-length", body, hashlib.sha256).hexdigest()
    assert alerts.sign(body, "a-secret-of-some-length") == f"sha256={expected}"
    assert alerts.verify(body, alerts.sign(body, "s" * 20), "s" * 20)
    assert not alerts.verify(body, alerts.sign(body, "s" * 20), "t" * 20)
    assert not alerts.verify(body + b"\n", alerts.sign(body, "s" * 20), "s" * 20)
    assert not alerts.verify(body, None, "s" * 20)


def test_message_words_open_and_resolve_for_slack_teams_and_mail():
    opened = datetime(2026, 12, 6, 22, 5, tzinfo=UTC)
    notice = alerts.Notice(7, "job_dead", "PACS", AlertMessage.OPEN, "3 jobs to PACS are dead",
                           {"lines": ["study 12 (accession ACC1), job 40"], "dead_jobs": 3}, 3, opened, None,
                           "ORTHANC_LPCH on hub1", ZoneInfo("America/Los_Angeles"))
    payload = notice.payload(opened)
    assert json.loads(json.dumps(payload))["text"] == notice.text()
    assert payload["@type"] == "MessageCard" and payload["summary"] == notice.subject()
    assert notice.subject() == "[OPEN] Dead jobs: PACS (ORTHANC_LPCH on hub1)"
    assert notice.text().splitlines()[:3] == [
        "OPEN: 3 jobs to PACS are dead", "study 12 (accession ACC1), job 40",
        "Incident #7 (job_dead, PACS), open since 2026-12-06 14:05 America/Los_Angeles."]
    assert payload["incident"]["detail"] == {"dead_jobs": 3}
    resolved = alerts.Notice(7, "job_dead", "PACS", AlertMessage.RESOLVE, "3 jobs to PACS are dead", {}, 3, opened,
                             opened + timedelta(hours=2, minutes=5), "hub", ZoneInfo("UTC"))
    assert resolved.text().startswith("RESOLVED after 2 h 5 min: Dead jobs (PACS). It was: 3 jobs to PACS are dead")
    assert resolved.payload(opened)["themeColor"] != payload["themeColor"]
