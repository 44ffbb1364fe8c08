"""Turn Orthanc resources into recorded studies and series, with their kind.

A series is an AI result when its sender AET (the first instance's `RemoteAET`
metadata) is in AI_RESULT_AETS **and** its `RemoteIP` is the registered host of a
modality with that AET (core/sender_checks.py): a tag, or a calling AET alone, is
what any sender can forge; its network origin is not. A series that claims an AI
sender from anywhere else is recorded as kind `rejected`, never routed, and flagged
(event, audit entry, metric). An AI result links to its original study by
StudyInstanceUID, then AccessionNumber; when neither matches, it is recorded on a
study of its own and flagged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from core import recorder, sender_checks
from core.orthanc_client import OrthancClient, parse_orthanc_time
from core.recorder import SeriesInfo, StudyInfo
from core.sender_checks import AiSenders, Origin
from core.states import AuditSource, EventType, LinkedBy, SeriesKind
from worker.metrics import AI_ROUND_TRIP, SENDER_REJECTED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrthancSeries:
    """What Orthanc says about one series, fetched before any database write."""

    orthanc_id: str
    study: StudyInfo
    info: SeriesInfo
    first_instance: str | None
    remote_ip: str | None = None  # the first instance's RemoteIP metadata: where the sender called from


def fetch_series(orthanc: OrthancClient, series_id: str) -> OrthancSeries:
    """Read a series, its study and its first instance's reception metadata."""
    series = orthanc.series(series_id)
    study = orthanc.study(series["ParentStudy"])
    tags = series.get("MainDicomTags", {})
    study_tags = study.get("MainDicomTags", {})
    patient = study.get("PatientMainDicomTags", {})
    instances = series.get("Instances", [])
    meta = orthanc.instance_metadata(instances[0]) if instances else {}
    received = parse_orthanc_time(meta.get("ReceptionDate"))
    study_info = StudyInfo(
        study_uid=study_tags["StudyInstanceUID"],
        orthanc_id=study["ID"],
        patient_id=patient.get("PatientID"),
        patient_name=patient.get("PatientName"),
        accession_number=study_tags.get("AccessionNumber"),
        description=study_tags.get("StudyDescription"),
        study_date=study_tags.get("StudyDate"),
        study_time=study_tags.get("StudyTime"),
    )
    info = SeriesInfo(
        series_uid=tags["SeriesInstanceUID"],
        study_uid=study_info.study_uid,
        orthanc_id=series_id,
        modality=tags.get("Modality"),
        description=tags.get("SeriesDescription"),
        series_number=tags.get("SeriesNumber"),
        sender_aet=meta.get("RemoteAET"),
        instance_count=len(instances),
        first_received_at=received,
        last_received_at=parse_orthanc_time(series.get("LastUpdate")) or received,
    )
    return OrthancSeries(series_id, study_info, info, instances[0] if instances else None, meta.get("RemoteIP"))


@dataclass(frozen=True)
class RecordedSeries:
    series_id: int
    study_id: int
    kind: str
    created: bool


def known_series(conn: Connection, orthanc_id: str) -> RecordedSeries | None:
    """The recorded series with this Orthanc id, if any (saves re-reading Orthanc)."""
    row = conn.execute(
        text("SELECT id, study_id, kind FROM series WHERE orthanc_id = :oid"), {"oid": orthanc_id}
    ).first()
    return RecordedSeries(row.id, row.study_id, row.kind, False) if row else None


def refresh_counts(conn: Connection, series_id: int, series: dict) -> None:
    """Update a known series' instance count and last reception from Orthanc's series JSON."""
    recorder.refresh_series_counts(conn, series_id, instances=len(series.get("Instances", [])),
                                   last_received_at=parse_orthanc_time(series.get("LastUpdate")))


def record_series(
    conn: Connection, fetched: OrthancSeries, ai_senders: AiSenders, now: datetime
) -> RecordedSeries:
    """Record a series (idempotent) and, the first time, its arrival event.

    The origin of a series claiming an AI sender is checked once, when it is first
    recorded: one Orthanc request per such series, none per instance.
    """
    existing = conn.execute(
        text("SELECT id, study_id, kind FROM series WHERE series_uid = :uid"), {"uid": fetched.info.series_uid}
    ).first()
    if existing:
        recorder.upsert_series(conn, existing.study_id, fetched.info, kind=existing.kind, linked_by=None)
        recorder.study_received_again(conn, existing.study_id)  # after a retention purge (core/retention.py)
        return RecordedSeries(existing.id, existing.study_id, existing.kind, False)

    at = fetched.info.first_received_at or now
    is_ai = ai_senders.claims(fetched.info.sender_aet)
    if is_ai:
        origin = ai_senders.check(fetched.info.sender_aet, fetched.remote_ip)
        if not origin.ok:
            return _record_rejected(conn, fetched, origin, at)
    if not is_ai:
        study_id = recorder.upsert_study(
            conn, fetched.study, source_aet=fetched.info.sender_aet, received_at=at
        )
        series_id, _ = recorder.upsert_series(conn, study_id, fetched.info, kind=SeriesKind.ORIGINAL, linked_by=None)
        recorder.study_received_again(conn, study_id)
        recorder.add_event(conn, study_id, EventType.RECEIVED, at, series_id=series_id,
                           detail={"sender": fetched.info.sender_aet, "modality": fetched.info.modality})
        recorder.refresh_study_modalities(conn, study_id)
        recorder.refresh_study_status(conn, study_id)
        return RecordedSeries(series_id, study_id, SeriesKind.ORIGINAL, True)

    link, study_id, linked_by = _attach_to_claimed_study(conn, fetched, at)
    series_id, _ = recorder.upsert_series(conn, study_id, fetched.info, kind=SeriesKind.AI_RESULT, linked_by=linked_by)
    recorder.study_received_again(conn, study_id)
    event = EventType.AI_RESULT_RECEIVED if link else EventType.AI_RESULT_UNMATCHED
    recorder.add_event(
        conn, study_id, event, at, series_id=series_id,
        detail={"sender": fetched.info.sender_aet, "linked_by": linked_by, "modality": fetched.info.modality},
    )
    if link is not None:
        _observe_round_trip(conn, study_id, at)
    else:
        log.warning("AI result for an unknown study recorded and flagged",
                    extra={"fields": {"series": fetched.orthanc_id, "sender": fetched.info.sender_aet}})
    recorder.refresh_study_status(conn, study_id)
    return RecordedSeries(series_id, study_id, SeriesKind.AI_RESULT, True)


def _attach_to_claimed_study(
    conn: Connection, fetched: OrthancSeries, at: datetime
) -> tuple[tuple[int, str] | None, int, str]:
    """The study a non-original series claims (by StudyInstanceUID, then accession), or a
    new orphan study of its own: (the link found or None, study id, how it was linked)."""
    link = recorder.find_study_for_ai_result(conn, fetched.study.study_uid, fetched.study.accession_number)
    if link is not None:
        return link, link[0], link[1]
    study_id = recorder.upsert_study(conn, fetched.study, source_aet=fetched.info.sender_aet, received_at=at)
    recorder.set_orphan(conn, study_id)
    return None, study_id, LinkedBy.UNMATCHED


def _record_rejected(conn: Connection, fetched: OrthancSeries, origin: Origin, at: datetime) -> RecordedSeries:
    """Keep a series whose claimed AI sender failed the origin check: recorded, never routed, flagged.

    It is attached to the study it claims (by StudyInstanceUID, then accession) so the
    operator sees it there, without touching that study's fields; otherwise to a study
    of its own, flagged like an orphan AI result and so kept out of the QI figures.
    Kind `rejected` keeps it out of the rules (worker/router.py), the stability sweep,
    resends, and the AI-result timings.
    """
    _, study_id, linked_by = _attach_to_claimed_study(conn, fetched, at)
    series_id, _ = recorder.upsert_series(conn, study_id, fetched.info, kind=SeriesKind.REJECTED, linked_by=linked_by)
    detail = {**origin.detail(), "modality": fetched.info.modality}
    recorder.add_event(conn, study_id, EventType.SENDER_REJECTED, at, series_id=series_id, detail=detail)
    recorder.audit(conn, actor="worker", source=AuditSource.WORKER, action=sender_checks.AUDIT_ACTION,
                   target=f"study:{study_id}", after={**detail, "series": series_id})
    SENDER_REJECTED.labels(origin.aet or "").inc()
    log.warning("series not accepted as an AI result: its sender address is not the one registered for its AET; "
                "kept unrouted", extra={"fields": {"series": fetched.orthanc_id, "study": study_id, **origin.detail()}})
    recorder.refresh_study_status(conn, study_id)
    return RecordedSeries(series_id, study_id, SeriesKind.REJECTED, True)


def _observe_round_trip(conn: Connection, study_id: int, result_at: datetime) -> None:
    """Feed the AI round-trip histogram once per study, at its first AI result."""
    sent_at, results = conn.execute(
        text(
            "SELECT min(at) FILTER (WHERE type = :ai_sent), count(*) FILTER (WHERE type = :result) "
            "FROM events WHERE study_id = :id"
        ),
        {"id": study_id, "ai_sent": EventType.AI_SENT, "result": EventType.AI_RESULT_RECEIVED},
    ).one()
    if sent_at is not None and results == 1:
        AI_ROUND_TRIP.observe(max(0.0, (result_at - sent_at).total_seconds()))
