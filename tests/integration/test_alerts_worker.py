"""Alerts from a real worker process: a PACS that refuses makes a job dead, and the worker's
alerter tells people (webhook and e-mail, on 127.0.0.1), once, without patient data; a bad
webhook URL is recorded and logged once while the hub keeps routing.

The worker runs as in tests/integration/test_worker_flow.py (real Orthanc, PostgreSQL,
storage SCPs); the receivers are tests/integration/alert_receivers.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core import alerts, operations
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import all_jobs_final, jobs, rules_file, send
from testkit.synthetic import make_study
from tests.integration.alert_receivers import SmtpServer, WebhookReceiver

pytestmark = pytest.mark.integration

TO_PACS_AND_GOOD = """
version: 1
rules:
  - name: everything-to-both
    when: {kind: original}
    then: {deliver_to: [PACS, GOOD], payload: matched}
"""
TO_PACS = TO_PACS_AND_GOOD.replace("[PACS, GOOD]", "[PACS]")


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with SmtpServer(tmp_path / "smtp") as server:
        yield server


def failed_webhook_attempts(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT i.kind, d.message, d.attempt, d.error FROM alert_deliveries d JOIN incidents i "
            "ON i.id = d.incident_id WHERE d.channel = 'webhook' AND NOT d.ok ORDER BY d.id"))]


def test_worker_alerts_a_dead_job_once_and_resolves_it_without_phi(
    env, workers, db, make_pacs, clean_orthanc, hub_settings, tmp_path, webhook, smtp,
) -> None:
    pacs = make_pacs("PACS", mode="refuse")
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, TO_PACS), "RETRY_MAX_ATTEMPTS": "2",
              "ALERT_CHECK_S": "1", "ALERT_WEBHOOK_URL": webhook.url(), **smtp.values()}
    workers(values)
    study = make_study(1, 1, "CR KNEE")  # testkit.synthetic's patient: SYNTHETIC^PATIENT, SYN########
    name, patient_id = str(study[0].PatientName), str(study[0].PatientID)
    send(study, hub_settings)
    wait_until(lambda: all_jobs_final(db, 1), timeout=60, what="a dead job")
    job = jobs(db)[0]
    assert job["state"] == "dead"
    wait_until(lambda: webhook.messages("job_dead") == [("open", "PACS")] and len(smtp.mails) >= 1,
               timeout=30, what="the dead job's alert on both channels")

    with db.begin() as conn:
        operations.cancel_job(conn, job["id"], actor="ana", source="cli")
    wait_until(lambda: ("resolve", "PACS") in webhook.messages("job_dead")
               and any("[RESOLVED" in str(m.message["Subject"]) for m in smtp.mails),
               timeout=30, what="the resolve message on both channels")
    assert webhook.messages("job_dead") == [("open", "PACS"), ("resolve", "PACS")]

    secret = values["ALERT_WEBHOOK_SECRET"]
    posts = [p for p in webhook.posts if p.json["incident"]["kind"] == "job_dead"]
    assert all(alerts.verify(p.body, p.headers["x-hub-signature-256"], secret) for p in posts)
    with db.connect() as conn:
        accession = conn.execute(text("SELECT accession_number FROM studies WHERE id = :id"),
                                 {"id": job["study_id"]}).scalar_one()
    assert f"study {job['study_id']} (accession {accession})" in posts[0].json["text"]
    mails = [m for m in smtp.mails if "Dead jobs" in str(m.message["Subject"])]
    assert [str(m.message["Subject"]).split("]")[0] for m in mails] == ["[OPEN", "[RESOLVED"]
    assert all(m.tls and m.authenticated for m in mails)
    everything = [p.body.decode() for p in webhook.posts] + [m.raw.decode(errors="replace") for m in smtp.mails]
    everything += [str(m.message["Subject"]) for m in smtp.mails]
    for text_ in everything:
        assert name not in text_ and patient_id not in text_
    log_text = (tmp_path / "worker.log").read_text()
    assert name not in log_text and patient_id not in log_text and secret not in log_text


def test_a_bad_webhook_url_is_recorded_logged_once_and_routing_goes_on(
    env, workers, db, make_pacs, clean_orthanc, hub_settings, tmp_path,
) -> None:
    refusing, good = make_pacs("PACS", mode="refuse"), make_pacs("GOOD")
    clean_orthanc.rest.put_modality("PACS", refusing.aet, refusing.port)
    clean_orthanc.rest.put_modality("GOOD", good.aet, good.port)
    url = f"http://127.0.0.1:{free_port()}/hooks/T0KEN-IN-THE-URL"  # nothing listens there
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, TO_PACS_AND_GOOD), "RETRY_MAX_ATTEMPTS": "2",
             "ALERT_CHECK_S": "1", "ALERT_WEBHOOK_URL": url})
    send(make_study(1, 2, "CR FIRST"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 2), timeout=60, what="the first study's jobs final")
    wait_until(lambda: len([a for a in failed_webhook_attempts(db) if a[0] == "job_dead"]) >= alerts.ATTEMPTS,
               timeout=60, what="the failed webhook attempts recorded")

    send(make_study(1, 2, "CR SECOND"), hub_settings)  # the hub goes on routing
    wait_until(lambda: good.instance_count == 4 and all_jobs_final(db, 4), timeout=60, what="the second study")
    assert sorted(j["state"] for j in jobs(db)) == ["dead", "dead", "succeeded", "succeeded"]

    attempts = [a for a in failed_webhook_attempts(db) if a[0] == "job_dead"]
    assert [a[1:3] for a in attempts[:alerts.ATTEMPTS]] == [("open", n) for n in range(1, alerts.ATTEMPTS + 1)]
    assert all(a[3].startswith("cannot reach the webhook: ") and "T0KEN" not in a[3] for a in attempts)
    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if line.startswith("{")]
    failed = [e for e in lines if e["msg"].startswith("alert channel failed")]
    assert len(failed) == 1 and failed[0]["channel"] == "webhook" and "cannot reach" in failed[0]["error"]
    assert not any("T0KEN" in json.dumps(e) for e in lines)
