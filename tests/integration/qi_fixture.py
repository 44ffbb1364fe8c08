"""A small QI fixture with hand-computed answers, recorded through core/recorder.py.

TZ is America/Los_Angeles. Daylight saving time starts on 2026-03-08 at 02:00 PST
(10:00 UTC) and ends on 2026-11-01 at 02:00 PDT (09:00 UTC). Every timestamp below
is UTC; the comment gives local time.

Local day 2026-03-07 (Saturday):
  S3  DX  MOD_A  received 07:59:59Z (23:59:59 PST), direct route to LPCHROUTER,
      fails twice and is dead (its attempts happen on 03-08 local).
Local day 2026-03-08 (Sunday, DST starts):
  S2  CT  MOD_B  received 08:00:00Z (00:00 PST), AI send retried once, result late
      (2400 s), LPCHROUTER retried once then delivered.
  S1  CR  MOD_A  received 09:55:00Z (01:55 PST), AI route, result 10:05:50Z
      (03:05:50 PDT), delivered to LPCHROUTER and MODLINK; re-stabilised later.
  S4  CR  MOD_A  received 18:00:00Z (11:00 PDT), sent to the AI, no result ever.
  S5  MR  MOD_C  received 20:00:00Z (13:00 PDT), unrouted.
  S7  CR  MOD_B  received 21:00:00Z (14:00 PDT), direct route delivered; a MODLINK job
      is cancelled and an operator resend succeeds two days later (neither counts).
Local day 2026-11-01 (Sunday, DST ends; 01:00-02:00 happens twice):
  S9  CR  MOD_A  received 08:30:00Z (01:30 PDT), delivered 09:30:00Z (01:30 PST):
      turnaround exactly 3600 s although the wall clock shows no change.
  S10 CR  MOD_A  received 09:30:00Z (01:30 PST), delivered 09:31:00Z.
Now (relative to the real clock):
  S6  CR  MOD_C  received 20 min ago, sent to the AI 19.5 min ago, no result yet.
Plus an orphan AI result (no original study), which the QI views exclude.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from core import operations, recorder
from core.recorder import SeriesInfo, StudyInfo

AI = "MERCURE"
ERR_REFUSED = "Connection refused"
ERR_REJECTED = "Association rejected by LPCHROUTER"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Study:
    key: str
    uid: str
    study_id: int
    series: list[int] = field(default_factory=list)
    ai_series: list[int] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)


class Recorder:
    """The sequence of recorder calls the worker makes, with explicit timestamps."""

    def __init__(self, conn: Connection, uid_root: str = "1.2.826.0.1.3680043.10.77") -> None:
        self.conn = conn
        self.uid_root = uid_root  # another root lets a second fixture share the database
        self.studies: dict[str, Study] = {}

    def arrive(self, key: str, at: datetime, *, modality: str, source: str, wait_s: float) -> Study:
        uid = f"{self.uid_root}.{len(self.studies) + 1}"
        info = StudyInfo(study_uid=uid, patient_id=f"PID-{key}", patient_name=f"SECRET^{key}",
                         accession_number=f"ACC-{key}", description="XR BONE LENGTH")
        study_id = recorder.upsert_study(self.conn, info, source_aet=source, received_at=at)
        series_info = SeriesInfo(series_uid=f"{uid}.1", study_uid=uid, modality=modality, sender_aet=source,
                                 instance_count=3, first_received_at=at, last_received_at=at + timedelta(seconds=2))
        series_id, _ = recorder.upsert_series(self.conn, study_id, series_info, kind="original", linked_by=None)
        recorder.add_event(self.conn, study_id, "received", at, series_id=series_id)
        stable = at + timedelta(seconds=wait_s)
        recorder.mark_series_stable(self.conn, series_id, stable)
        recorder.mark_study_stable(self.conn, study_id, stable)
        recorder.add_event(self.conn, study_id, "stable", stable)
        recorder.refresh_study_status(self.conn, study_id)
        study = Study(key, uid, study_id, [series_id])
        self.studies[key] = study
        return study

    def route(self, study: Study, at: datetime, destination: str, rule: str, *, purpose: str = "delivery",
              series: list[int] | None = None) -> int:
        job_id = recorder.queue_job(
            self.conn, study_id=study.study_id, purpose=purpose, destination=destination,
            series_ids=series or study.series, payload="study" if purpose == "ai" else "matched",
            rule_name=rule, at=at)
        assert job_id is not None
        recorder.add_event(self.conn, study.study_id, "rule_matched", at, detail={"rules": [rule]})
        study.jobs[destination] = job_id
        return job_id

    def attempt(self, job_id: int, started: datetime, finished: datetime, *, error: str | None = None,
                final: bool = False) -> None:
        """One send attempt: success, a failure to retry, or (final) a dead job."""
        recorder.job_started(self.conn, job_id, orthanc_job_id=f"oj-{job_id}-{started.timestamp()}", at=started)
        if error is None:
            recorder.job_succeeded(self.conn, job_id, at=finished, instances_sent=3)
        else:
            recorder.job_failed(self.conn, job_id, at=finished, error=error, error_code=9,
                                retry_at=None if final else finished + timedelta(seconds=30))

    def ai_result(self, study: Study, at: datetime, *, settle_s: float, n: int = 1) -> int:
        info = SeriesInfo(series_uid=f"{study.uid}.9{n}", study_uid=study.uid, modality="OT",
                          description="QA VISUALIZATION", sender_aet=AI, instance_count=1,
                          first_received_at=at, last_received_at=at)
        series_id, _ = recorder.upsert_series(self.conn, study.study_id, info, kind="ai_result",
                                              linked_by="study_uid")
        recorder.add_event(self.conn, study.study_id, "ai_result_received", at, series_id=series_id)
        stable = at + timedelta(seconds=settle_s)
        recorder.mark_series_stable(self.conn, series_id, stable)
        recorder.add_event(self.conn, study.study_id, "ai_result_stable", stable, series_id=series_id)
        recorder.refresh_study_status(self.conn, study.study_id)
        study.ai_series.append(series_id)
        return series_id


def build(conn: Connection, now: datetime | None = None) -> dict[str, Study]:
    """Record the fixture described in the module docstring; returns the studies by key."""
    now = now or datetime.now(UTC)
    r = Recorder(conn)
    s = timedelta(seconds=1)

    # S1: AI route across the DST change.
    s1 = r.arrive("S1", utc("2026-03-08T09:55:00"), modality="CR", source="MOD_A", wait_s=20)
    ai = r.route(s1, utc("2026-03-08T09:55:20"), AI, "bone_length_ai", purpose="ai")
    r.attempt(ai, utc("2026-03-08T09:55:21"), utc("2026-03-08T09:55:50"))
    res = r.ai_result(s1, utc("2026-03-08T10:05:50"), settle_s=20)
    # Orthanc stabilises the study again when the result arrives: stable_at must not move.
    recorder.mark_study_stable(conn, s1.study_id, utc("2026-03-08T10:06:10"))
    recorder.mark_series_stable(conn, res, utc("2026-03-08T10:09:00"))
    j1 = r.route(s1, utc("2026-03-08T10:06:10"), "LPCHROUTER", "qa_visualization", series=[res])
    j2 = r.route(s1, utc("2026-03-08T10:06:10"), "MODLINK", "ai_sr", series=[res])
    r.attempt(j1, utc("2026-03-08T10:06:11"), utc("2026-03-08T10:07:10"))
    r.attempt(j2, utc("2026-03-08T10:06:11"), utc("2026-03-08T10:08:10"))

    # S2: midnight PST; AI send retried; late result; delivery retried.
    s2 = r.arrive("S2", utc("2026-03-08T08:00:00"), modality="CT", source="MOD_B", wait_s=30)
    ai = r.route(s2, utc("2026-03-08T08:00:30"), AI, "bone_length_ai", purpose="ai")
    r.attempt(ai, utc("2026-03-08T08:00:31"), utc("2026-03-08T08:00:40"), error=ERR_REFUSED)
    r.attempt(ai, utc("2026-03-08T08:01:10"), utc("2026-03-08T08:01:30"))
    res = r.ai_result(s2, utc("2026-03-08T08:41:30"), settle_s=30)
    j = r.route(s2, utc("2026-03-08T08:42:00"), "LPCHROUTER", "qa_visualization", series=[res])
    r.attempt(j, utc("2026-03-08T08:42:01"), utc("2026-03-08T08:42:30"),
              error=ERR_REFUSED + "\nwhile sending instance 1 of 3")
    r.attempt(j, utc("2026-03-08T08:44:00"), utc("2026-03-08T08:45:00"))

    # S3: one second before local midnight; dead delivery.
    s3 = r.arrive("S3", utc("2026-03-08T07:59:59"), modality="DX", source="MOD_A", wait_s=20)
    j = r.route(s3, utc("2026-03-08T08:00:19"), "LPCHROUTER", "direct_pacs")
    r.attempt(j, utc("2026-03-08T08:00:20"), utc("2026-03-08T08:00:29"), error=ERR_REJECTED)
    r.attempt(j, utc("2026-03-08T08:01:00"), utc("2026-03-08T08:01:29"), error=ERR_REJECTED, final=True)

    # S4: sent to the AI, the result never comes.
    s4 = r.arrive("S4", utc("2026-03-08T18:00:00"), modality="CR", source="MOD_A", wait_s=10)
    ai = r.route(s4, utc("2026-03-08T18:00:10"), AI, "bone_length_ai", purpose="ai")
    r.attempt(ai, utc("2026-03-08T18:00:11"), utc("2026-03-08T18:00:30"))

    # S5: no rule matched.
    s5 = r.arrive("S5", utc("2026-03-08T20:00:00"), modality="MR", source="MOD_C", wait_s=5)
    recorder.add_event(conn, s5.study_id, "unrouted", utc("2026-03-08T20:00:05"))
    recorder.refresh_study_status(conn, s5.study_id)

    # S7: delivered; a cancelled job and an operator resend must not count.
    s7 = r.arrive("S7", utc("2026-03-08T21:00:00"), modality="CR", source="MOD_B", wait_s=10)
    j = r.route(s7, utc("2026-03-08T21:00:10"), "LPCHROUTER", "direct_pacs")
    r.attempt(j, utc("2026-03-08T21:00:11"), utc("2026-03-08T21:01:10"))
    extra = r.route(s7, utc("2026-03-08T21:00:10"), "MODLINK", "direct_pacs")
    operations.cancel_job(conn, extra, actor="qa", source="cli")
    resend = operations.resend_study(conn, s7.study_id, "LPCHROUTER", actor="qa", source="cli")
    r.attempt(resend, utc("2026-03-10T12:00:00"), utc("2026-03-10T12:00:30"))

    # S9 and S10: the repeated hour of 2026-11-01.
    s9 = r.arrive("S9", utc("2026-11-01T08:30:00"), modality="CR", source="MOD_A", wait_s=10)
    j = r.route(s9, utc("2026-11-01T08:30:10"), "LPCHROUTER", "direct_pacs")
    r.attempt(j, utc("2026-11-01T08:30:11"), utc("2026-11-01T09:30:00"))
    s10 = r.arrive("S10", utc("2026-11-01T09:30:00"), modality="CR", source="MOD_A", wait_s=10)
    j = r.route(s10, utc("2026-11-01T09:30:10"), "LPCHROUTER", "direct_pacs")
    r.attempt(j, utc("2026-11-01T09:30:11"), utc("2026-11-01T09:31:00"))

    # S6: happening now; the AI result is still awaited.
    s6 = r.arrive("S6", now - 1200 * s, modality="CR", source="MOD_C", wait_s=10)
    ai = r.route(s6, now - 1190 * s, AI, "bone_length_ai", purpose="ai")
    r.attempt(ai, now - 1189 * s, now - 1170 * s)

    # An AI result whose original is unknown: an orphan, not a study of the QI.
    orphan_uid = "1.2.826.0.1.3680043.10.77.999"
    orphan_id = recorder.upsert_study(conn, StudyInfo(study_uid=orphan_uid), source_aet=AI,
                                      received_at=utc("2026-03-08T12:00:00"))
    recorder.set_orphan(conn, orphan_id)
    recorder.upsert_series(conn, orphan_id, SeriesInfo(series_uid=f"{orphan_uid}.1", study_uid=orphan_uid,
                                                        sender_aet=AI, first_received_at=utc("2026-03-08T12:00:00")),
                           kind="ai_result", linked_by="unmatched")
    return r.studies


# --- attempts: AI results that answer an earlier attempt, originals delivered before the AI result

ATTEMPTS_ROOT = "1.2.826.0.1.3680043.10.78"
ATTEMPTS_T0 = utc("2026-04-14T15:00:00")  # 08:00 PDT, an ordinary Tuesday


def lost(job_id: int) -> str:
    """The error the dispatcher records when Orthanc forgot a store job (it crashed mid-send)."""
    return f"Orthanc no longer knows job oj-{job_id}"


def build_attempts(conn: Connection) -> dict[str, Study]:
    """Studies whose evidence belongs to an earlier attempt or another payload (UTC; t = ATTEMPTS_T0).

    Orthanc's times (receptions, stabilities, job completions) are whole seconds; the
    worker's own (queueing, attempt starts, failures) have fractions, as in production.

    A1  resend: AI attempt 1 starts t+11.4, Orthanc loses it (failure t+70.1); the AI had
        answered it: result t+40 (stable t+60); attempt 2 starts t+100.3 and succeeds at
        t+101. The result is delivered to LPCHROUTER at t+63. 0002 said -61 s; the
        round trip is 40 - 11 = 29 s.
    A2  the same in one second: attempt 1 starts t+1040.6, the result is received in
        that same second (Orthanc writes t+1040); attempt 2 succeeds at t+1046. 0 s.
    A3  the start of the answered attempt was never recorded (the worker died after
        Orthanc accepted the store): queued t+2010.3, result t+2030, the only recorded
        attempt starts t+2050.5 and succeeds t+2051. From the queueing: 20 s.
    A4  an AI result from elsewhere, received (t+3005) before the hub even queued the
        study to the AI (t+3010.2, sent t+3012): no round trip to measure.
    A5  the originals go straight to PACS (done t+4015) and to the AI (sent t+4012,
        result t+4100, stable t+4120): delivered when the result is stable, t+4120.
    A6  as A1, but late: attempt 1 starts t+5011.3, the result answers it at t+7111
        (2100 s > AI_RESULT_TIMEOUT), attempt 2 succeeds at t+7711. 0002 said -600 s.
    """
    t0 = ATTEMPTS_T0
    r = Recorder(conn, ATTEMPTS_ROOT)

    def t(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    a1 = r.arrive("A1", t(0), modality="CR", source="MOD_A", wait_s=10)
    ai = r.route(a1, t(10.25), AI, "bone_length_ai", purpose="ai")
    recorder.job_started(conn, ai, orthanc_job_id="oj-a1-1", at=t(11.4))
    r.ai_result(a1, t(40), settle_s=20)
    recorder.job_failed(conn, ai, at=t(70.1), error=lost(ai), error_code=None, retry_at=t(100))
    res = a1.ai_series[-1]
    j = r.route(a1, t(60.5), "LPCHROUTER", "qa_visualization", series=[res])
    r.attempt(j, t(61.2), t(63))
    r.attempt(ai, t(100.3), t(101))

    a2 = r.arrive("A2", t(1000), modality="CR", source="MOD_A", wait_s=10)
    ai = r.route(a2, t(1010.2), AI, "bone_length_ai", purpose="ai")
    recorder.job_started(conn, ai, orthanc_job_id="oj-a2-1", at=t(1040.6))
    r.ai_result(a2, t(1040), settle_s=10)
    recorder.job_failed(conn, ai, at=t(1041.5), error=lost(ai), error_code=None, retry_at=t(1045))
    r.attempt(ai, t(1045.1), t(1046))

    a3 = r.arrive("A3", t(2000), modality="CR", source="MOD_A", wait_s=10)
    ai = r.route(a3, t(2010.3), AI, "bone_length_ai", purpose="ai")
    r.ai_result(a3, t(2030), settle_s=10)
    r.attempt(ai, t(2050.5), t(2051))

    a4 = r.arrive("A4", t(3000), modality="CR", source="MOD_A", wait_s=10)
    r.ai_result(a4, t(3005), settle_s=3)
    ai = r.route(a4, t(3010.2), AI, "bone_length_ai", purpose="ai")
    r.attempt(ai, t(3011.1), t(3012))

    a5 = r.arrive("A5", t(4000), modality="CR", source="MOD_A", wait_s=10)
    ai = r.route(a5, t(4010.2), AI, "bone_length_ai", purpose="ai")
    j = r.route(a5, t(4010.2), "PACS", "direct_pacs")
    r.attempt(ai, t(4011.1), t(4012))
    r.attempt(j, t(4011.2), t(4015))
    r.ai_result(a5, t(4100), settle_s=20)

    a6 = r.arrive("A6", t(5000), modality="CR", source="MOD_B", wait_s=10)
    ai = r.route(a6, t(5010.2), AI, "bone_length_ai", purpose="ai")
    recorder.job_started(conn, ai, orthanc_job_id="oj-a6-1", at=t(5011.3))
    recorder.job_failed(conn, ai, at=t(5070.4), error=lost(ai), error_code=None, retry_at=t(7700))
    r.ai_result(a6, t(7111), settle_s=10)
    r.attempt(ai, t(7700.2), t(7711))
    return r.studies
