"""Alerts (issue 18): the alerter's conditions, incidents and messages against real servers.

Rows are recorded with core.recorder (testkit/app_flows.py), as the worker records them,
in a migrated QI database of the session's PostgreSQL; the alerter (worker/alerter.py)
runs its real rounds (`check_once`) with its real lease (an advisory lock), probes the
session's Orthanc, and sends to a real HTTP receiver and a real SMTP server with
STARTTLS and a login, all on 127.0.0.1 (tests/integration/alert_receivers.py). Rounds
are given their time (`now`), so repeats and grace periods need no sleeping.
tests/integration/test_alerts_worker.py runs the same through a worker process.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from core import alerts, operations, recorder
from core.db import make_engine
from core.disk import storage_status
from core.orthanc_client import OrthancClient
from core.rules_status import STATUS_NAME
from core.settings import PROJECT_ROOT, Settings
from core.states import EventType, IncidentKind, Purpose
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, QiDatabase, write_env
from testkit.harness.waiting import wait_until
from tests.integration import holds_fixture
from tests.integration.alert_receivers import SmtpServer, TcpRelay, WebhookReceiver
from worker import health
from worker.alerter import ALERTER_LOCK_KEY, Alerter, Facts, evaluate
from worker.main import SessionLock
from worker.metrics import REGISTRY
from worker.tailer import check_ai_overdue

pytestmark = pytest.mark.integration

# testkit/synthetic.py's patient name, and an ID of its form: never in an alert.
PATIENT_NAME = "SYNTHETIC^PATIENT"
PATIENT_ID = "SYN20261206"
NUMBERS = itertools.count(1)
SECRET_PATH = "/hooks/T0KEN-IN-THE-URL"


@pytest.fixture
def engine(qi_db: QiDatabase) -> Iterator[Engine]:
    engine = make_engine(qi_db.url)
    yield engine
    engine.dispose()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with SmtpServer(tmp_path / "smtp") as server:
        yield server


@pytest.fixture
def settings_for(qi_db: QiDatabase, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return make_settings(QI_DB=qi_db.settings.qi_db, **overrides)
    return make


@pytest.fixture
def orthanc_client(orthanc: OrthancServer, hub_settings: Settings) -> Iterator[OrthancClient]:
    client = OrthancClient.from_settings(hub_settings)
    yield client
    client.close()


@pytest.fixture
def alerter(engine: Engine, orthanc_client: OrthancClient) -> Iterator[Callable[..., Alerter]]:
    made: list[Alerter] = []

    def make(settings: Settings, **kwargs: object) -> Alerter:
        live_tailer(engine)
        made.append(Alerter(settings, engine, orthanc_client, SessionLock(engine, ALERTER_LOCK_KEY), **kwargs))
        return made[-1]

    yield make
    for a in made:
        a.lease.release()


def live_tailer(engine: Engine) -> None:
    """A worker owning the /changes cursor whose heartbeat stays fresh through every simulated round."""
    with engine.begin() as conn:
        recorder.heartbeat(conn, recorder.Heartbeat(
            worker_id="tailer", hostname="h", pid=1, started_at=datetime.now(UTC), owns_cursor=True,
            orthanc_ok=True, cursor_lag=0, info={}, lock_key=None), at=datetime.now(UTC) + timedelta(days=1))


def dead_jobs(engine: Engine, destination: str, n: int, at: datetime) -> list[app_flows.Flow]:
    """`n` studies whose job to `destination` died, recorded as the dispatcher records it."""
    flows = []
    with engine.begin() as conn:
        for _ in range(n):
            flow = app_flows.arrive(conn, next(NUMBERS), at, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
            job = app_flows.route(conn, flow, at, destination)
            app_flows.send_fail(conn, job, at, error="C-STORE refused by PACS (0xA700)", retry_at=None)
            flows.append(flow)
    return flows


def incidents(engine: Engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM incidents ORDER BY id")).mappings())


def deliveries(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT i.kind, d.channel, d.message, d.attempt, d.ok FROM alert_deliveries d "
            "JOIN incidents i ON i.id = d.incident_id ORDER BY d.id"))]


def assert_no_phi(*texts: str | bytes) -> None:
    for value in texts:
        body = value.decode(errors="replace") if isinstance(value, bytes) else value
        assert PATIENT_NAME not in body and PATIENT_ID not in body


# --- open, repeat, resolve ----------------------------------------------------------------


def test_dead_job_opens_repeats_and_resolves_on_webhook_and_email(
    engine: Engine, settings_for: Callable[..., Settings], alerter: Callable[..., Alerter],
    webhook: WebhookReceiver, smtp: SmtpServer,
) -> None:
    settings = settings_for(ALERT_WEBHOOK_URL=webhook.url(), ALERT_REPEAT="60", **smtp.values())
    t0 = datetime.now(UTC)
    flow = dead_jobs(engine, "PACS", 1, t0 - timedelta(minutes=2))[0]
    a = alerter(settings)

    a.check_once(t0)
    assert [p.json["message"] for p in webhook.posts] == ["open"]
    a.check_once(t0 + timedelta(seconds=30))  # open, but not yet ALERT_REPEAT since the last message
    assert len(webhook.posts) == 1 and len(smtp.mails) == 1
    a.check_once(t0 + timedelta(seconds=61))
    assert [p.json["message"] for p in webhook.posts] == ["open", "repeat"]
    with engine.begin() as conn:
        operations.retry_job(conn, flow.jobs["delivery:PACS"], actor="ana", source="cli")
    a.check_once(t0 + timedelta(seconds=62))
    a.check_once(t0 + timedelta(seconds=200))  # resolved once: nothing more
    assert [p.json["message"] for p in webhook.posts] == ["open", "repeat", "resolve"]

    rows = incidents(engine)
    assert len(rows) == 1
    incident = rows[0]
    assert (incident["kind"], incident["key"], incident["occurrences"]) == ("job_dead", "PACS", 1)
    assert incident["resolved_at"] == t0 + timedelta(seconds=62)
    assert deliveries(engine) == [
        ("job_dead", ch, msg, 1, True) for msg in ("open", "repeat", "resolve") for ch in ("webhook", "email")]

    # The webhook: signed over the exact body, Slack/Teams `text`, the study by id and accession.
    for post in webhook.posts:
        assert post.path == "/hook"
        assert alerts.verify(post.body, post.headers["x-hub-signature-256"],
                             settings.alert_webhook_secret.get_secret_value())
        assert not alerts.verify(post.body + b" ", post.headers["x-hub-signature-256"],
                                 settings.alert_webhook_secret.get_secret_value())
        assert post.json["@type"] == "MessageCard" and post.json["incident"]["id"] == incident["id"]
    opened = webhook.posts[0].json
    assert "1 job to PACS is dead" in opened["text"] and "C-STORE refused" in opened["text"]
    assert f"study {flow.study_id} (accession {flow.accession})" in opened["text"]
    assert "RESOLVED" in webhook.posts[2].json["text"]

    # The e-mails: over STARTTLS, after the login, to both recipients, same words.
    assert [m.tls and m.authenticated for m in smtp.mails] == [True, True, True]
    assert smtp.mails[0].rcpt_tos == ["oncall@hospital.example", "pacs-team@hospital.example"]
    subjects = [str(m.message["Subject"]) for m in smtp.mails]
    assert subjects[0].startswith("[OPEN] Dead jobs: PACS") and subjects[2].startswith("[RESOLVED] Dead jobs: PACS")
    body = smtp.mails[0].message.get_payload(decode=True)
    assert isinstance(body, bytes) and f"accession {flow.accession}".encode() in body
    assert_no_phi(*(p.body for p in webhook.posts), *(m.raw for m in smtp.mails), *subjects)


def test_a_burst_of_dead_jobs_is_one_incident_with_a_count(
    engine: Engine, settings_for: Callable[..., Settings], alerter: Callable[..., Alerter], webhook: WebhookReceiver,
) -> None:
    t0 = datetime.now(UTC)
    dead_jobs(engine, "PACS", 200, t0 - timedelta(minutes=5))
    dead_jobs(engine, "MODLINK", 3, t0 - timedelta(minutes=5))
    a = alerter(settings_for(ALERT_WEBHOOK_URL=webhook.url()))
    a.check_once(t0)
    a.check_once(t0 + timedelta(seconds=30))
    dead_jobs(engine, "PACS", 2, t0)  # more of the same burst: folded into the open incident, no new message
    a.check_once(t0 + timedelta(seconds=60))

    assert sorted(webhook.messages()) == [("open", "MODLINK"), ("open", "PACS")]
    rows = {r["key"]: r for r in incidents(engine)}
    assert sorted(rows) == ["MODLINK", "PACS"] and rows["PACS"]["occurrences"] == 202
    assert rows["PACS"]["resolved_at"] is None and "202 jobs to PACS are dead" in rows["PACS"]["summary"]
    pacs = next(p.json for p in webhook.posts if p.json["incident"]["key"] == "PACS")
    assert "200 jobs to PACS are dead" in pacs["text"] and "... and 195 more" in pacs["text"]
    assert pacs["incident"]["occurrences"] == 200 and len(pacs["incident"]["detail"]["studies"]) == 5
    assert_no_phi(*(p.body for p in webhook.posts))


# --- every condition, from what the worker records -----------------------------------------


def test_each_condition_is_evaluated_from_what_the_worker_records(
    engine: Engine, settings_for: Callable[..., Settings], tmp_path: Path,
) -> None:
    settings = settings_for(ALERT_OUTAGE_MIN="15", AI_RESULT_TIMEOUT="1800")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        holds_fixture.outage(conn, "LPCHROUTER", now - timedelta(minutes=20))
        holds_fixture.outage(conn, "MODLINK", now - timedelta(minutes=5))  # not long enough yet
        ai = app_flows.arrive(conn, next(NUMBERS), now - timedelta(hours=1), patient_name=PATIENT_NAME,
                              patient_id=PATIENT_ID)
        app_flows.send_ok(conn, app_flows.route(conn, ai, now - timedelta(hours=1), "MERCURE", purpose=Purpose.AI),
                          now - timedelta(hours=1))
        recorder.config_refused(conn, STATUS_NAME, at=now, error="routing.yml:12: unknown action 'sendto'", key="k1")
        rejected = app_flows.arrive(conn, next(NUMBERS), now - timedelta(minutes=3))
        recorder.add_event(conn, rejected.study_id, EventType.SENDER_REJECTED, now - timedelta(minutes=2),
                           detail={"sender": "MERCURE", "remote_ip": "127.0.0.9", "expected": ["127.0.0.1"]})
    assert check_ai_overdue(engine, settings.ai_result_timeout) == 1
    low = storage_status(tmp_path, 10**9)  # below a threshold of a petabyte: low
    facts = Facts(storage=low, orthanc_down_since=now - timedelta(minutes=2), orthanc_error="Orthanc is unreachable")
    with engine.connect() as conn:
        found = {(c.kind, c.key): c for c in evaluate(conn, settings, now, facts)}
    assert sorted(found) == sorted([
        (IncidentKind.DESTINATION_OUTAGE, "LPCHROUTER"), (IncidentKind.AI_OVERDUE, "MERCURE"),
        (IncidentKind.DISK_LOW, "DICOM_STORAGE"), (IncidentKind.NO_LIVE_WORKER, "changes"),
        (IncidentKind.ORTHANC_UNREACHABLE, "orthanc"), (IncidentKind.RULES_REFUSED, "routing.yml"),
        (IncidentKind.SENDER_REJECTED, "MERCURE@127.0.0.9"),
    ])
    assert "LPCHROUTER has not answered C-ECHO since" in found[(IncidentKind.DESTINATION_OUTAGE, "LPCHROUTER")].summary
    overdue = found[(IncidentKind.AI_OVERDUE, "MERCURE")]
    assert overdue.occurrences == 1 and f"study {ai.study_id} (accession {ai.accession})" in overdue.detail["lines"]
    assert "refused at line 12" in found[(IncidentKind.RULES_REFUSED, "routing.yml")].summary
    assert "from MERCURE at 127.0.0.9, expected 127.0.0.1" in found[(IncidentKind.SENDER_REJECTED,
                                                                      "MERCURE@127.0.0.9")].summary
    assert_no_phi(*(c.summary + str(c.detail) for c in found.values()))

    # Each one ends: the hold lifted, the result back, a live tailer, rules loaded, space, Orthanc.
    with engine.begin() as conn:
        recorder.outage_ended(conn, "LPCHROUTER", at=now)
        app_flows.ai_result(conn, ai, now)
        recorder.heartbeat(conn, recorder.Heartbeat(
            worker_id="w1", hostname="h", pid=1, started_at=now, owns_cursor=True, orthanc_ok=True, cursor_lag=0,
            info={}, lock_key=None), at=now)
        recorder.config_loaded(conn, STATUS_NAME, at=now, checksum="c2", content={})
    later = now + timedelta(seconds=5)
    with engine.connect() as conn:
        left = evaluate(conn, settings, later, Facts(storage=storage_status(tmp_path, 1)))
    assert [(c.kind, c.key) for c in left] == [(IncidentKind.SENDER_REJECTED, "MERCURE@127.0.0.9")]
    hour = now + timedelta(hours=1, minutes=1)
    modlink = (IncidentKind.DESTINATION_OUTAGE, "MODLINK")  # its outage is over ALERT_OUTAGE_MIN old by then
    with engine.connect() as conn:  # an hour without another refused series; the tailer's heartbeat is old now
        assert sorted((c.kind, c.key) for c in evaluate(conn, settings, hour, Facts())) == [
            modlink, (IncidentKind.NO_LIVE_WORKER, "changes")]
        # ... but an alerter that just started waits for the first heartbeats before saying so
        assert [(c.kind, c.key) for c in evaluate(conn, settings, hour,
                                                  Facts(watching_since=hour - timedelta(seconds=30)))] == [modlink]


def test_incidents_without_channels_are_recorded_and_shown_in_metrics(
    engine: Engine, settings_for: Callable[..., Settings], alerter: Callable[..., Alerter],
) -> None:
    t0 = datetime.now(UTC)
    dead_jobs(engine, "PACS", 2, t0)
    with engine.begin() as conn:
        holds_fixture.outage(conn, "MODLINK", t0 - timedelta(hours=1))
    a = alerter(settings_for())
    assert a.channels == []
    a.check_once(t0)
    assert {(r["kind"], r["key"], r["last_notified_at"]) for r in incidents(engine)} == {
        ("job_dead", "PACS", None), ("destination_outage", "MODLINK", None)}
    health.refresh_incident_gauges(engine)
    samples = {s.labels["kind"]: s.value for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
               if f.name == "hub_incidents_open" for s in f.samples}
    assert samples["job_dead"] == 1 and samples["destination_outage"] == 1 and samples["disk_low"] == 0
    assert "test" not in samples


# --- failures: a bad webhook, an unreachable database ---------------------------------------


def test_bad_webhook_url_is_recorded_logged_once_and_email_still_goes(
    engine: Engine, settings_for: Callable[..., Settings], alerter: Callable[..., Alerter], smtp: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"  # nothing listens there
    settings = settings_for(ALERT_WEBHOOK_URL=nobody, ALERT_REPEAT="60", **smtp.values())
    t0 = datetime.now(UTC)
    dead_jobs(engine, "PACS", 1, t0)
    a = alerter(settings)
    for channel in a.channels:
        channel.sleep = lambda _s: None  # type: ignore[attr-defined]  # the backoff itself is not under test
    caplog.set_level(logging.INFO)
    a.check_once(t0)
    a.check_once(t0 + timedelta(seconds=61))

    webhook_rows = [d for d in deliveries(engine) if d[1] == "webhook"]
    assert webhook_rows == [("job_dead", "webhook", msg, n, False) for msg in ("open", "repeat") for n in (1, 2, 3)]
    assert [d for d in deliveries(engine) if d[1] == "email"] == [
        ("job_dead", "email", "open", 1, True), ("job_dead", "email", "repeat", 1, True)]
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT DISTINCT error FROM alert_deliveries WHERE NOT ok")).scalars().all()
    assert len(errors) == 1 and errors[0].startswith("cannot reach the webhook: ")
    assert SECRET_PATH not in errors[0] and "T0KEN" not in caplog.text
    failed = [r for r in caplog.records if r.getMessage().startswith("alert channel failed")]
    assert len(failed) == 1 and failed[0].fields["channel"] == "webhook"  # type: ignore[attr-defined]
    assert len(smtp.mails) == 2


def test_webhook_refusal_is_not_retried_and_server_errors_are(
    settings_for: Callable[..., Settings],
) -> None:
    notice = alerts.Notice(1, "job_dead", "PACS", alerts.AlertMessage.OPEN, "1 job to PACS is dead", {}, 1,
                           datetime.now(UTC), None, "HUB on host", settings_for().zone)
    for status, expected in ((404, 1), (503, alerts.ATTEMPTS), (429, alerts.ATTEMPTS)):
        with WebhookReceiver(status=status) as receiver:
            attempts = alerts.WebhookChannel(receiver.url(SECRET_PATH), "a-secret-of-24-characters",
                                             sleep=lambda _s: None).send(notice)
        assert len(attempts) == len(receiver.posts) == expected and not any(a.ok for a in attempts)
        assert attempts[-1].error is not None and f"HTTP {status}" in attempts[-1].error


def test_database_unreachable_is_sent_from_memory_and_recorded_when_back(
    qi_db: QiDatabase, engine: Engine, settings_for: Callable[..., Settings], orthanc_client: OrthancClient,
    webhook: WebhookReceiver,
) -> None:
    settings = settings_for(ALERT_WEBHOOK_URL=webhook.url(), ALERT_REPEAT="600")
    live_tailer(engine)
    relay = TcpRelay(settings.postgres_port)
    relay.restore()
    relayed = make_engine(settings.pg_url().replace(f":{settings.postgres_port}/", f":{relay.port}/"))
    lease = SessionLock(relayed, ALERTER_LOCK_KEY)
    a = Alerter(settings, relayed, orthanc_client, lease, unreachable_grace_s=30)
    try:
        t0 = datetime.now(UTC)
        a.check_once(t0)
        assert a.held_last and webhook.posts == []
        relay.cut()
        a.check_once(t0 + timedelta(seconds=10))  # down, within the grace: nothing yet
        assert webhook.posts == []
        a.check_once(t0 + timedelta(seconds=45))
        a.check_once(t0 + timedelta(seconds=100))  # no repeat before ALERT_REPEAT
        assert webhook.messages() == [("open", settings.qi_db)]
        opened = webhook.posts[0].json
        assert opened["incident"]["id"] == 0 and "recorded when the database answers again" in opened["text"]
        assert settings.postgres_password.get_secret_value() not in webhook.posts[0].body.decode()
        # The cut connection's server process ends, and with it the lease; then the database is back.
        wait_until(lambda: not lease_taken(engine), timeout=30, what="the cut session's advisory lock freed")
        relay.restore()
        a.check_once(t0 + timedelta(seconds=120))
        assert webhook.messages() == [("open", settings.qi_db), ("resolve", settings.qi_db)]
    finally:
        lease.release()
        relay.cut()
        relayed.dispose()
    rows = incidents(engine)
    assert [(r["kind"], r["opened_at"], r["resolved_at"]) for r in rows] == [
        ("database_unreachable", t0 + timedelta(seconds=10), t0 + timedelta(seconds=120))]
    assert deliveries(engine) == [("database_unreachable", "webhook", "open", 1, True),
                                  ("database_unreachable", "webhook", "resolve", 1, True)]


def lease_taken(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :k "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"),
            {"k": ALERTER_LOCK_KEY}).scalar_one())


# --- the test alert: core, CLI, metrics -------------------------------------------------------


def test_test_alert_is_recorded_resolved_and_audited(
    engine: Engine, settings_for: Callable[..., Settings], webhook: WebhookReceiver, smtp: SmtpServer,
) -> None:
    with pytest.raises(alerts.AlertError, match="no alert channel is configured"):
        alerts.send_test(engine, settings_for(), actor="ana", source="ui")
    assert incidents(engine) == []
    settings = settings_for(ALERT_WEBHOOK_URL=webhook.url(), **smtp.values())
    incident, attempts = alerts.send_test(engine, settings, actor="ana", source="ui")
    assert [(a.channel, a.ok) for a in attempts] == [("webhook", True), ("email", True)]
    row = incidents(engine)[0]
    assert row["id"] == incident and row["kind"] == "test" and row["resolved_at"] is not None
    assert webhook.posts[0].json["message"] == "test" and "ana" in webhook.posts[0].json["text"]
    assert str(smtp.mails[0].message["Subject"]).startswith("[TEST] Test alert")
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT actor, source, action, target, after FROM audit_log "
                                  "WHERE action = 'alerts.test'")).one()
    assert audit[:4] == ("ana", "ui", "alerts.test", f"incident:{incident}")
    assert audit.after == {"webhook": "sent", "email": "sent"}


def orthanc_cli(env_file: os.PathLike, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("SUDO_USER", None)
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def test_cli_alerts_lists_incidents_and_sends_a_test(
    engine: Engine, qi_db: QiDatabase, hub_values: dict[str, str], webhook: WebhookReceiver, tmp_path: Path,
    settings_for: Callable[..., Settings], alerter: Callable[..., Alerter],
) -> None:
    t0 = datetime.now(UTC)
    dead_jobs(engine, "PACS", 3, t0)
    alerter(settings_for()).check_once(t0)
    listed = orthanc_cli(qi_db.env_file, "alerts")
    assert listed.returncode == 0, listed.stderr
    assert "open incidents" in listed.stdout and "job_dead" in listed.stdout and "PACS" in listed.stdout
    assert "webhook: off" in listed.stdout and "no past incidents" in listed.stdout

    nothing = orthanc_cli(qi_db.env_file, "alerts", "--test")
    assert nothing.returncode == 3 and "no alert channel is configured" in nothing.stderr
    values = {**hub_values, "QI_DB": qi_db.settings.qi_db, "ALERT_WEBHOOK_URL": webhook.url()}
    env_file = write_env(values, tmp_path / "alerts.env")
    sent = orthanc_cli(env_file, "alerts", "--test")
    assert sent.returncode == 0, sent.stderr
    assert "webhook: sent" in sent.stdout and webhook.posts[0].json["message"] == "test"
    bad = write_env({**values, "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/x"}, tmp_path / "bad.env")
    failed = orthanc_cli(bad, "alerts", "--test")
    assert failed.returncode == 1 and "webhook: failed after 3 attempt(s): cannot reach the webhook" in failed.stderr
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT source, count(*) FROM audit_log WHERE action = 'alerts.test' "
                                    "GROUP BY source")).all()
    assert [tuple(r) for r in actions] == [("cli", 2)]
