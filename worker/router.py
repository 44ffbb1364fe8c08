"""Apply the routing rules to a stable study's not-yet-routed series and queue the jobs.

Runs inside the /changes transaction, so the jobs exist if and only if the cursor
moved past the StableStudy change that produced them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from core import recorder
from core.rules import RuleSet, SeriesFacts
from core.states import EventType, JobState, SeriesKind
from worker.metrics import ROUTED_JOBS


@dataclass(frozen=True)
class Candidate:
    """A recorded, not-yet-routed series with the tags the rules may test."""

    series_id: int
    study_id: int
    kind: str
    sender_aet: str | None
    tags: dict[str, str]


def unrouted_series(conn: Connection, series_orthanc_ids: list[str]) -> list[tuple[int, int, str, str | None, str]]:
    """The series the rules still have to see; a `rejected` series (failed origin check) never does."""
    return [
        tuple(row)
        for row in conn.execute(
            text(
                "SELECT id, study_id, kind, sender_aet, orthanc_id FROM series "
                "WHERE orthanc_id = ANY(:ids) AND routed_at IS NULL AND kind <> :rejected ORDER BY id FOR UPDATE"
            ),
            {"ids": series_orthanc_ids, "rejected": SeriesKind.REJECTED},
        )
    ]


def route(
    conn: Connection, candidates: list[Candidate], rules: RuleSet, ai_modality: str, now: datetime
) -> list[int]:
    """Queue the jobs the rules ask for; returns the new job ids."""
    if not candidates:
        return []
    by_key = {str(c.series_id): c for c in candidates}
    facts = [SeriesFacts(str(c.series_id), c.kind, c.sender_aet, c.tags) for c in candidates]
    plan = rules.plan(facts, ai_modality)
    jobs: list[int] = []
    matched_rules: dict[int, set[str]] = defaultdict(set)
    for planned in plan:
        per_study: dict[int, list[int]] = defaultdict(list)
        for key in planned.series_keys:
            per_study[by_key[key].study_id].append(by_key[key].series_id)
        for study_id, series_ids in per_study.items():
            matched_rules[study_id].update(planned.rules)
            job_id = recorder.queue_job(
                conn, study_id=study_id, purpose=planned.purpose, destination=planned.destination,
                series_ids=series_ids, payload=planned.payload, rule_name=",".join(planned.rules), at=now,
            )
            if job_id is not None:
                jobs.append(job_id)
                ROUTED_JOBS.labels(planned.purpose).inc()
    for study_id, names in matched_rules.items():
        recorder.add_event(conn, study_id, EventType.RULE_MATCHED, now, detail={"rules": sorted(names)})
    recorder.mark_series_routed(conn, (c.series_id for c in candidates), now)
    for study_id in {c.study_id for c in candidates}:
        if study_id not in matched_rules and not _has_jobs(conn, study_id):
            recorder.add_event(conn, study_id, EventType.UNROUTED, now, detail={"reason": "no rule matched"})
        recorder.refresh_study_status(conn, study_id)
    return jobs


def resend_grown_series(conn: Connection, series_orthanc_ids: list[str], now: datetime) -> list[int]:
    """Send a routed series again wherever it went, once it holds more instances than then.

    Instances can arrive after their series was routed (a modality sending again what a
    full disk refused, a late instance). A job that has not started sends the whole
    series anyway; a destination that has it, or is being sent it, gets it again.
    Returns the new job ids.
    """
    grown = recorder.mark_grown_series(conn, series_orthanc_ids)
    jobs: list[int] = []
    for series_id, study_id, count in grown:
        latest = conn.execute(
            text(
                "SELECT DISTINCT ON (j.destination) j.destination, j.purpose, j.payload, j.rule_name, j.state "
                "FROM job_series js JOIN routing_jobs j ON j.id = js.job_id WHERE js.series_id = :id "
                "ORDER BY j.destination, j.id DESC"
            ),
            {"id": series_id},
        ).all()
        for job in latest:
            if job.state not in (JobState.SENDING, JobState.SUCCEEDED):
                continue
            job_id = recorder.queue_job(
                conn, study_id=study_id, purpose=job.purpose, destination=job.destination, series_ids=[series_id],
                payload=job.payload, rule_name=job.rule_name, at=now, resend=True,
            )
            if job_id is not None:  # always, as resends are never deduplicated away
                recorder.add_event(conn, study_id, EventType.RESEND, now, job_id=job_id, series_id=series_id,
                                   destination=job.destination,
                                   detail={"reason": "instances arrived after routing", "instances": count})
                jobs.append(job_id)
        recorder.refresh_study_status(conn, study_id)
    return jobs


def _has_jobs(conn: Connection, study_id: int) -> bool:
    return conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM routing_jobs WHERE study_id = :id)"), {"id": study_id}
    ).scalar_one()
