"""An operator's resend is its own job and events; it never rewrites the study's history.

Before, refresh_study_status counted the resend's open job, so a delivered study went
back to 'delivering' (and to 'failed' when the resend died), and the study page's
"Routed to Destinations" stage went back to pending.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from core import operations, queries, recorder
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration
T0 = datetime(2026, 4, 14, 16, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def history(db: Engine, study_id: int) -> tuple:
    """What a resend must not move: status, QI outcome and delivered_at, the stages."""
    with db.connect() as conn:
        status = conn.execute(text("SELECT status FROM studies WHERE id = :s"), {"s": study_id}).scalar_one()
        qi_row = conn.execute(text("SELECT status, outcome, delivered_at, turnaround_s FROM qi_study "
                                   "WHERE study_id = :s"), {"s": study_id}).one()
        study = queries.get_study(conn, study_id)
        assert study is not None
        stages = queries.study_stages(study, queries.study_events(conn, study_id),
                                      queries.study_jobs(conn, study_id), "MERCURE")
    return status, tuple(qi_row), [(s.name, s.at, s.note) for s in stages]


def test_a_resend_leaves_a_delivered_study_delivered(db: Engine) -> None:
    with db.begin() as conn:
        r = qi_fixture.Recorder(conn, "1.2.826.0.1.3680043.10.79")
        study = r.arrive("R1", at(0), modality="CR", source="MOD_A", wait_s=10)
        pacs = r.route(study, at(10.2), "PACS", "direct_pacs")
        modlink = r.route(study, at(10.2), "MODLINK", "direct_pacs")
        r.attempt(pacs, at(11.1), at(15))
        r.attempt(modlink, at(11.2), at(20))
    delivered = history(db, study.study_id)
    assert delivered == ("delivered", ("delivered", "delivered", at(20), 20.0), [
        ("Study Received", at(0), ""), ("Sent to MERCURE", None, "no AI route"),
        ("AI Results Back", None, "no AI route"), ("Routed to Destinations", at(20), "2 delivery job(s)")])

    with db.begin() as conn:
        resend = operations.resend_study(conn, study.study_id, "PACS", actor="ana", source="ui")
    assert history(db, study.study_id) == delivered  # the open resend job does not reopen the study

    with db.begin() as conn:  # the resend fails for good: its own failure, not the study's
        recorder.job_started(conn, resend, orthanc_job_id="oj-resend", at=at(100.4))
        recorder.job_failed(conn, resend, at=at(101.2), error="Association rejected", error_code=9, retry_at=None)
    assert history(db, study.study_id) == delivered

    with db.begin() as conn:
        again = operations.resend_study(conn, study.study_id, "PACS", actor="ana", source="ui")
        recorder.job_started(conn, again, orthanc_job_id="oj-again", at=at(200.3))
        recorder.job_succeeded(conn, again, at=at(205), instances_sent=3)
    assert history(db, study.study_id) == delivered  # nor does its success move delivered_at

    # the resends' own progress is visible: their job rows and their events
    with db.connect() as conn:
        jobs = {j["id"]: j for j in queries.study_jobs(conn, study.study_id)}
        events = [(e["job_id"], e["type"]) for e in queries.study_events(conn, study.study_id)
                  if e["job_id"] in (resend, again)]
    assert (jobs[resend]["state"], jobs[resend]["resend"]) == ("dead", True)
    assert (jobs[again]["state"], jobs[again]["finished_at"]) == ("succeeded", at(205))
    assert events == [(resend, "delivery_queued"), (resend, "resend"), (resend, "delivery_started"),
                      (resend, "delivery_dead"), (again, "delivery_queued"), (again, "resend"),
                      (again, "delivery_started"), (again, "delivered")]


def test_a_resend_does_not_route_a_study_that_was_not(db: Engine) -> None:
    """Only required jobs make a status: an unrouted study resent by hand stays unrouted."""
    with db.begin() as conn:
        r = qi_fixture.Recorder(conn, "1.2.826.0.1.3680043.10.80")
        study = r.arrive("R2", at(0), modality="MR", source="MOD_C", wait_s=5)
        recorder.add_event(conn, study.study_id, "unrouted", at(5))
        recorder.refresh_study_status(conn, study.study_id)
        resend = operations.resend_study(conn, study.study_id, "PACS", actor="ana", source="cli")
        recorder.job_started(conn, resend, orthanc_job_id="oj-r2", at=at(60.5))
        recorder.job_succeeded(conn, resend, at=at(61), instances_sent=3)
    status, qi_row, stages = history(db, study.study_id)
    assert (status, qi_row[:3]) == ("unrouted", ("unrouted", "unrouted", None))
    assert stages[3] == ("Routed to Destinations", None, "")


def test_a_finished_job_shows_no_next_attempt(db: Engine) -> None:
    """The study page's jobs table: a job delivered after a failed attempt keeps the retry's
    schedule in its row, which is no next attempt once it succeeded."""
    with db.begin() as conn:
        r = qi_fixture.Recorder(conn, "1.2.826.0.1.3680043.10.80")
        study = r.arrive("R2", at(0), modality="CR", source="MOD_A", wait_s=10)
        pacs = r.route(study, at(10.2), "PACS", "direct_pacs")
        r.attempt(pacs, at(11), at(12), error="Association rejected")
        waiting = queries.study_jobs(conn, study.study_id)
        r.attempt(pacs, at(45), at(46))
        done = queries.study_jobs(conn, study.study_id)
    assert [(j["state"], j["next_attempt_at"]) for j in waiting] == [("failed", at(42))]
    assert [(j["state"], j["next_attempt_at"]) for j in done] == [("succeeded", None)]
