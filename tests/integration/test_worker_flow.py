"""The worker against the real Orthanc, PostgreSQL and DICOM peers of the harness.

Each test runs `python -m worker` as a child process on a fresh QI database and an
emptied Orthanc, sends synthetic studies with a real SCU and counts what arrives at
the storage SCPs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from testkit.dicom_peers import AINode
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, all_jobs_final, event_types, jobs, rules_file, send, study_row
from testkit.synthetic import derive_ai_series, make_study

pytestmark = pytest.mark.integration

LEG_LENGTH = "XR EXTREMITY BILATERAL BONE LENGTH"

def test_full_flow_through_ai_to_two_pacs(env, workers, db, clean_orthanc, make_pacs, hub_settings, tmp_path):
    """Leg-length study -> MERCURE -> results back -> QA viz to both routers, SR to MODLINK."""
    ai = AINode(aet="MERCURE", port=free_port(), orthanc_dicom_port=hub_settings.dicom_port,
                orthanc_aet=hub_settings.orthanc_aet, delay_s=0.3, quiet_s=0.5, out_dir=tmp_path / "ai").start()
    router1, router2, modlink = make_pacs("LPCHROUTER"), make_pacs("LPCHTROUTER"), make_pacs("MODLINK")
    rest = clean_orthanc.rest
    rest.put_modality("MERCURE", "MERCURE", ai.port)
    for name, scp in (("LPCHROUTER", router1), ("LPCHTROUTER", router2), ("MODLINK", modlink)):
        rest.put_modality(name, scp.aet, scp.port)
    try:
        workers(env)
        study = make_study(2, 3, LEG_LENGTH)
        uid = study[0].StudyInstanceUID
        send(study, hub_settings)
        assert ai.wait_for(6, timeout=40), "the AI node never received the study"
        wait_until(lambda: router1.instance_count >= 1 and router2.instance_count >= 1 and modlink.instance_count >= 1,
                   timeout=60, what="deliveries of the AI results")
        wait_until(lambda: all_jobs_final(db, 4), timeout=30, what="all jobs final")
    finally:
        ai.stop()

    # The QA visualisation went to both routers, the SR to MODLINK, nothing else anywhere.
    for scp in (router1, router2):
        kinds = {r.series_instance_uid for r in scp.received_from(uid)}
        assert len(kinds) == 1 and scp.instance_count == 1 and not scp.duplicates()
    assert modlink.instance_count == 1
    assert ai.instance_count == 6 and not ai.duplicates()

    states = [(j["purpose"], j["destination"], j["state"]) for j in jobs(db)]
    assert sorted(states) == sorted([
        ("ai", "MERCURE", "succeeded"), ("delivery", "LPCHROUTER", "succeeded"),
        ("delivery", "LPCHTROUTER", "succeeded"), ("delivery", "MODLINK", "succeeded")])

    types = [t for t, _ in event_types(db, uid)]
    for expected in ("received", "stable", "rule_matched", "ai_sent", "ai_result_received",
                     "ai_result_stable", "delivered"):
        assert expected in types, f"{expected} missing from {types}"
    row = study_row(db, uid)
    assert row["status"] == "delivered"
    assert row["patient_name"] == str(study[0].PatientName)
    log_text = (tmp_path / "worker.log").read_text()
    assert str(study[0].PatientName) not in log_text and str(study[0].PatientID) not in log_text
    with db.connect() as conn:
        at = dict(conn.execute(text(
            "SELECT e.type, min(e.at) FROM events e JOIN studies s ON s.id = e.study_id "
            "WHERE s.study_uid = :u GROUP BY e.type"), {"u": uid}).all())
    # Plausible, ordered stage timestamps (UTC, within the test's lifetime).
    assert at["received"] <= at["stable"] <= at["ai_sent"] <= at["ai_result_received"] <= at["delivered"]
    assert (at["delivered"] - at["received"]).total_seconds() < 120
    assert abs(time.time() - at["delivered"].timestamp()) < 300


def test_study_matching_no_rule_is_recorded_not_sent(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS.replace("original", "ai_result"))})
    study = make_study(1, 2, "CT HEAD")
    send(study, hub_settings)
    uid = study[0].StudyInstanceUID
    wait_until(lambda: (study_row(db, uid) or {}).get("status") == "unrouted", timeout=30, what="unrouted status")
    assert jobs(db) == []
    assert pacs.instance_count == 0
    assert "unrouted" in [t for t, _ in event_types(db, uid)]


def test_new_series_after_stability_routes_only_new_series(env, workers, db, pacs, clean_orthanc, hub_settings,
                                                           tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    study = make_study(2, 2, "CR CHEST")
    first, second = study[:2], study[2:]
    send(first, hub_settings)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=40, what="first delivery")
    send(second, hub_settings)
    wait_until(lambda: all_jobs_final(db, 2) and pacs.instance_count == 4, timeout=40, what="second delivery")
    time.sleep(2 * hub_settings.stable_age + 1)  # a later re-stabilisation must not resend anything
    assert pacs.total_receipts == 4 and not pacs.duplicates()
    with db.connect() as conn:
        per_job = conn.execute(text("SELECT job_id, count(*) FROM job_series GROUP BY job_id ORDER BY job_id")).all()
    assert [n for _, n in per_job] == [1, 1]


def holds(db) -> list[dict]:
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT destination, kind, probe_failures FROM destination_holds")).mappings()]


def test_pacs_down_is_an_outage_hold_that_spends_no_attempt(env, workers, db, pacs, clean_orthanc, hub_settings,
                                                             tmp_path):
    """With a budget of one attempt, a PACS that is down must still never make the job dead."""
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    pacs.stop()
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS), "RETRY_MAX_ATTEMPTS": "1",
             "OUTAGE_PROBE_MAX": "2"})
    study = make_study(1, 3, "CR HAND")
    send(study, hub_settings)
    wait_until(lambda: [h for h in holds(db) if h["probe_failures"] >= 2], timeout=40, what="an outage hold, probed")
    assert [(h["destination"], h["kind"]) for h in holds(db)] == [("PACS", "outage")]
    waiting = jobs(db)[0]
    assert waiting["state"] == "queued" and waiting["attempts"] == 0 and waiting["last_error_code"] == 9
    pacs.start()
    back = time.monotonic()
    wait_until(lambda: all_jobs_final(db, 1), timeout=40, what="delivery after the PACS is back")
    # one probe interval (OUTAGE_PROBE_MAX) plus the store itself
    assert time.monotonic() - back < 2 + 3
    job = jobs(db)[0]
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert pacs.instance_count == 3 and not pacs.duplicates()
    assert holds(db) == []
    with db.connect() as conn:
        outage = conn.execute(text("SELECT destination, ended_at IS NOT NULL AS ended, probes "
                                   "FROM destination_outages")).one()
    assert outage.destination == "PACS" and outage.ended and outage.probes >= 3
    types = [t for t, _ in event_types(db, study[0].StudyInstanceUID)]
    assert "delivery_failed" in types and "delivery_dead" not in types


def test_refusing_pacs_ends_dead_with_error(env, workers, db, make_pacs, clean_orthanc, hub_settings, tmp_path):
    pacs = make_pacs("PACS", mode="refuse")
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS), "RETRY_MAX_ATTEMPTS": "2"})
    study = make_study(1, 1, "CR KNEE")
    send(study, hub_settings)
    wait_until(lambda: all_jobs_final(db, 1), timeout=40, what="a dead job")
    job = jobs(db)[0]
    assert job["state"] == "dead" and job["attempts"] == 2
    assert job["last_error"] and job["last_error_code"] not in (None, 0)
    assert study_row(db, study[0].StudyInstanceUID)["status"] == "failed"
    assert "delivery_dead" in [t for t, _ in event_types(db, study[0].StudyInstanceUID)]


def test_sigkill_mid_batch_routes_every_study_once(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)}
    worker = workers(values, "w1")
    studies = [make_study(1, 2, f"CR BATCH {i}") for i in range(12)]
    for study in studies:
        send(study, hub_settings)
    wait_until(lambda: pacs.instance_count > 0, timeout=40, what="the first deliveries")
    worker.kill()
    workers(values, "w2")
    wait_until(lambda: all_jobs_final(db, 12) and pacs.instance_count == 24, timeout=90, what="every study delivered")
    assert pacs.total_receipts == 24 and not pacs.duplicates()
    assert [j["state"] for j in jobs(db)] == ["succeeded"] * 12


def test_a_send_is_dated_before_orthanc_created_its_store(env, workers, db, pacs, clean_orthanc, hub_settings,
                                                          tmp_path):
    """`delivery_started` is when the store request left, so it precedes the job Orthanc created.

    Dated when Orthanc's answer came back instead, it would follow the job's creation,
    and on a loaded machine the first instances' arrival too, shortening every duration
    measured from it (docs/qi.md, the AI round trip of a resend)."""
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    for i in range(3):
        send(make_study(1, 1, f"CR DATED {i}"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 3), timeout=60, what="every study delivered")
    with db.connect() as conn:
        started = conn.execute(text(
            "SELECT detail->>'orthanc_job', at FROM events WHERE type = 'delivery_started'")).all()
    assert started
    for orthanc_job, at in started:
        created = datetime.strptime(clean_orthanc.rest.get(f"/jobs/{orthanc_job}")["CreationTime"],
                                    "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
        assert at <= created, f"send dated {at}, after Orthanc created its store job at {created}"


def test_two_workers_deliver_each_job_exactly_once(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)}
    first = workers(values, "w1")
    second = workers({**values, "ROUTING_API_PORT": str(free_port())}, "w2")
    for i in range(10):
        send(make_study(1, 2, f"CR PAIR {i}"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 10) and pacs.instance_count == 20, timeout=90, what="every study delivered")
    assert pacs.total_receipts == 20 and not pacs.duplicates()
    owners = [first.health()["owns_cursor"], second.health()["owns_cursor"]]
    assert sorted(owners) == [False, True]
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM worker_heartbeats")).scalar_one() == 2


def test_ai_overdue_then_late_result(env, workers, db, make_pacs, clean_orthanc, hub_settings, tmp_path):
    silent_ai = make_pacs("MERCURE")  # receives, never answers
    clean_orthanc.rest.put_modality("MERCURE", silent_ai.aet, silent_ai.port)
    workers({**env, "AI_RESULT_TIMEOUT": "2"})
    study = make_study(1, 1, LEG_LENGTH)
    uid = study[0].StudyInstanceUID
    send(study, hub_settings)
    wait_until(lambda: (study_row(db, uid) or {}).get("status") == "ai_overdue", timeout=40, what="ai_overdue")
    assert "ai_overdue" in [t for t, _ in event_types(db, uid)]
    late = derive_ai_series(study, "QA VISUALIZATION", "OT")
    send(late, hub_settings, calling_aet="MERCURE")
    wait_until(lambda: "ai_result_received" in [t for t, _ in event_types(db, uid)], timeout=30,
               what="the late result")
    assert study_row(db, uid)["status"] != "ai_overdue"


def test_invalid_rules_file_keeps_old_rules(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    path = Path(rules_file(tmp_path, ALL_TO_PACS))
    worker = workers({**env, "ROUTING_RULES": str(path)})
    path.write_text(ALL_TO_PACS.replace("deliver_to: [PACS]", "deliver_to: 'not a name!'"))

    def error() -> str | None:
        with db.connect() as conn:
            return conn.execute(text("SELECT error FROM config_status WHERE name = 'routing_rules'")).scalar()

    message = wait_until(error, timeout=20, what="the rules error in config_status")
    assert "routing.yml:" in message and "deliver_to" in message
    assert worker.health()["rules_error"]
    send(make_study(1, 1, "CR FOOT"), hub_settings)
    wait_until(lambda: pacs.instance_count == 1, timeout=40, what="delivery under the old rules")


def test_unknown_study_ai_result_is_recorded_and_flagged(env, workers, db, clean_orthanc, hub_settings):
    # The AI node as registered: its results count only from this host (tests/security/test_dicom_identity.py).
    clean_orthanc.rest.put_modality("MERCURE", "MERCURE", free_port())
    workers(env)
    orphan = derive_ai_series(make_study(1, 1, "NEVER SENT"), "AI REPORT", "SR")
    send(orphan, hub_settings, calling_aet="MERCURE")
    uid = orphan[0].StudyInstanceUID
    wait_until(lambda: study_row(db, uid) is not None, timeout=30, what="the orphan result")
    assert study_row(db, uid)["orphan_ai_result"] is True
    assert "ai_result_unmatched" in [t for t, _ in event_types(db, uid)]


def test_health_and_metrics(env, workers, db, clean_orthanc):
    import httpx

    worker = workers(env)
    body = worker.health()
    assert body["status"] == "ok" and body["orthanc"] and body["database"] and body["owns_cursor"]
    metrics = httpx.get(worker.health_url.replace("/health", "/metrics"), timeout=5).text
    for name in ("hub_changes_processed", "hub_cursor_lag", "hub_jobs", "hub_send_duration_seconds",
                 "hub_ai_round_trip_seconds", "hub_send_failures"):
        assert name in metrics


def test_sigterm_leaves_consistent_state(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    worker = workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    for i in range(5):
        send(make_study(1, 2, f"CR TERM {i}"), hub_settings)
    wait_until(lambda: pacs.instance_count > 0, timeout=40, what="first deliveries")
    assert worker.stop() == 0
    with db.connect() as conn:
        orphaned = conn.execute(text(
            "SELECT count(*) FROM routing_jobs WHERE state = 'sending' AND claimed_by IS NOT NULL")).scalar_one()
        beats = conn.execute(text("SELECT count(*) FROM worker_heartbeats")).scalar_one()
    assert orphaned == 0 and beats == 0



def test_a_release_wakes_an_idle_worker_at_once(env, workers, db, pacs, clean_orthanc, hub_settings, tmp_path):
    """An operator's release reaches the worker by NOTIFY (core.recorder.announce_work, worker/wakeup.py),
    not at its next idle claim: with POLL_INTERVAL at its maximum of 60 s, the held study is
    delivered well within the 60 s the idle dispatcher would otherwise sleep."""
    from core.operations import hold_destination, release_destination

    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    with db.begin() as conn:
        assert hold_destination(conn, "PACS", actor="ops", source="cli", reason="PACS downtime")
    send(make_study(1, 2, "CR WAKE"), hub_settings)
    # Stable before the worker starts: its first read of /changes routes the study, and
    # after that it polls only every 60 s.
    wait_until(lambda: all(clean_orthanc.rest.get(f"/studies/{s}")["IsStable"]
                           for s in clean_orthanc.rest.get("/studies")), timeout=30, what="the study stable")
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS), "POLL_INTERVAL": "60"})
    wait_until(lambda: len(jobs(db)) == 1, timeout=30, what="the job queued")
    time.sleep(1)  # the dispatcher has found it held and is idle
    assert pacs.instance_count == 0
    with db.begin() as conn:
        assert release_destination(conn, "PACS", actor="ops", source="cli")
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=30,
               what="delivery right after the release (the idle claim would come 60 s later)")


def test_held_destination_waits_without_spending_attempts(env, workers, db, pacs, clean_orthanc, hub_settings,
                                                          tmp_path):
    from core.operations import hold_destination, release_destination

    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    with db.begin() as conn:
        assert hold_destination(conn, "PACS", actor="ops", source="cli", reason="PACS downtime")
        assert not hold_destination(conn, "PACS", actor="ops", source="cli")
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    send(make_study(1, 2, "CR HELD"), hub_settings)
    wait_until(lambda: len(jobs(db)) == 1, timeout=30, what="the job queued")
    time.sleep(2)
    assert [(j["state"], j["attempts"]) for j in jobs(db)] == [("queued", 0)]
    assert pacs.instance_count == 0
    with db.begin() as conn:
        assert release_destination(conn, "PACS", actor="ops", source="cli")
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=30, what="delivery after release")
    with db.connect() as conn:
        actions = [r.action for r in conn.execute(text("SELECT action FROM audit_log ORDER BY id"))]
    assert actions == ["destination.hold", "destination.release"]
