"""Tail Orthanc's /changes with a cursor stored in PostgreSQL.

Each change that produces records is handled in one transaction together with the
cursor advance, so a crash at any point neither loses nor repeats work. Changes that
produce nothing (NewInstance, patients) only move the cursor, in the next commit.
Only one worker owns the cursor at a time (a PostgreSQL advisory lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError

from core import failpoints, recorder
from core.failpoints import Failpoint
from core.orthanc_client import OrthancClient, OrthancError, OrthancUnavailable, parse_orthanc_time
from core.rules import series_tags
from core.sender_checks import AiSenders
from core.settings import Settings
from core.states import EventType, SeriesKind, StudyStatus
from worker import ingest
from worker.metrics import CHANGES_FAILED, CHANGES_PROCESSED, CURSOR_LAG, STABILITY_RECOVERED
from worker.router import Candidate, resend_grown_series, route, unrouted_series
from worker.rules_watch import RulesHolder

log = logging.getLogger(__name__)
CURSOR = "changes_cursor"
CURSOR_LOCK_KEY = 0x0A7C_0001
HANDLED = {"NewSeries", "StableSeries", "StableStudy"}
MAX_CHANGE_FAILURES = 5
GROUP_MAX = 50
GROUP_S = 0.25
# The stability sweep looks at series unrouted this long after Orthanc's StableAge, and
# no older than a day (a resource deleted before routing must not be asked for forever).
STABILITY_GRACE_S = 10
STABILITY_WINDOW = timedelta(days=1)


class ChangeFailed(RuntimeError):
    """Processing a change failed for a reason other than connectivity; it will be retried."""


def read_cursor(conn: Connection) -> int:
    value = conn.execute(text("SELECT value FROM worker_state WHERE name = :n"), {"n": CURSOR}).scalar()
    return int(value or 0)


def write_cursor(conn: Connection, seq: int) -> None:
    recorder.save_worker_state(conn, CURSOR, seq)


class Tailer:
    """Processes /changes pages; `step()` handles one page and returns how many changes it saw."""

    def __init__(self, settings: Settings, engine: Engine, orthanc: OrthancClient, rules: RulesHolder):
        self.settings = settings
        self.engine = engine
        self.orthanc = orthanc
        self.rules = rules
        self.ai_senders = AiSenders(settings.ai_result_aet_set, orthanc)  # AE title plus origin (issue 15)
        self.last_seen = 0
        self.cursor = 0
        self.failures: dict[int, int] = {}
        self.on_commit: Callable[[], None] | None = None  # wakes the dispatcher when jobs may be new

    def step(self) -> int:
        with self.engine.connect() as conn:
            cursor = read_cursor(conn)
        page = self.orthanc.changes(cursor, self.settings.changes_batch)
        last = int(page["Last"])
        if last < cursor:
            log.warning("Orthanc's change log restarted below the cursor; resuming from 0",
                        extra={"fields": {"cursor": cursor, "orthanc_last": last}})
            with self.engine.begin() as conn:
                write_cursor(conn, 0)
            return 0
        changes = page["Changes"]
        index = 0
        while index < len(changes):
            index = self._commit_group(changes, index)
            if self.on_commit is not None:
                self.on_commit()
        self.cursor = max(self.cursor, cursor)
        self.last_seen = last
        CURSOR_LAG.set(max(0, last - self.cursor))
        return len(changes)

    def _commit_group(self, changes: list[dict[str, Any]], start: int) -> int:
        """Handle changes from `start` in one transaction that also advances the cursor.

        A group ends after GROUP_MAX handled changes or GROUP_S seconds, so commits are
        shared without delaying the dispatcher. Each change runs in a savepoint:
        connectivity errors abort the group (nothing of it is kept; it is redone after
        the backoff). Any other error keeps what came before, moves the cursor up to the
        failing change and raises ChangeFailed; after MAX_CHANGE_FAILURES tries the
        change is logged and skipped, since one bad change must not block the hub (its
        resource stays in Orthanc and its next Stable* change brings it back).
        Returns the index after the last change the group consumed.
        """
        began = time.monotonic()
        handled = 0
        index = start
        failed: int | None = None
        with self.engine.begin() as conn:
            while index < len(changes) and handled < GROUP_MAX and time.monotonic() - began < GROUP_S:
                change = changes[index]
                seq = int(change["Seq"])
                if change["ChangeType"] in HANDLED:
                    try:
                        with conn.begin_nested():
                            self.handle(conn, change)
                        failpoints.hit(Failpoint.TAILER_MID_BATCH)
                        handled += 1
                        self.failures.pop(seq, None)
                    except (OperationalError, InterfaceError, OrthancUnavailable):
                        raise
                    except Exception:
                        if not self._skip_after_failure(change, seq):
                            failed = seq
                            break
                CHANGES_PROCESSED.labels(change["ChangeType"]).inc()
                index += 1
            if index > start:
                write_cursor(conn, int(changes[index - 1]["Seq"]))
        if index > start:
            self.cursor = int(changes[index - 1]["Seq"])
        if failed is not None:
            raise ChangeFailed(failed)
        return index

    def _skip_after_failure(self, change: dict[str, Any], seq: int) -> bool:
        """Count a failed change; True when it has failed often enough to be skipped."""
        self.failures[seq] = self.failures.get(seq, 0) + 1
        log.exception("change could not be processed",
                      extra={"fields": {"seq": seq, "path": change.get("Path"), "attempt": self.failures[seq]}})
        if self.failures[seq] < MAX_CHANGE_FAILURES:
            return False
        CHANGES_FAILED.inc()
        self.failures.pop(seq, None)
        log.error("change skipped after repeated failures", extra={"fields": {"seq": seq, "path": change.get("Path")}})
        return True

    def handle(self, conn: Connection, change: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        at = parse_orthanc_time(change.get("Date")) or now
        try:
            if change["ChangeType"] == "StableStudy":
                self._stable_study(conn, change["ID"], at, now)
            elif change["ChangeType"] == "StableSeries":
                self._stable_series(conn, change["ID"], at, now)
            else:
                self._record(conn, change["ID"], now)
        except OrthancError as exc:
            if exc.status == 404:  # deleted since the change was logged: nothing left to record
                log.info("resource gone before it was processed", extra={"fields": {"path": change["Path"]}})
                return
            raise

    def _record(self, conn: Connection, series_id: str, now: datetime) -> ingest.RecordedSeries:
        fetched = ingest.fetch_series(self.orthanc, series_id)
        return ingest.record_series(conn, fetched, self.ai_senders, now)

    def _stable_series(self, conn: Connection, series_id: str, at: datetime, now: datetime) -> None:
        known = ingest.known_series(conn, series_id)
        if known is None:
            known = self._record(conn, series_id, now)
        else:
            ingest.refresh_counts(conn, known.series_id, self.orthanc.series(series_id))
        if recorder.mark_series_stable(conn, known.series_id, at) and known.kind == SeriesKind.AI_RESULT:
            recorder.add_event(conn, known.study_id, EventType.AI_RESULT_STABLE, at, series_id=known.series_id)

    def _stable_study(self, conn: Connection, study_id: str, at: datetime, now: datetime) -> None:
        study = self.orthanc.study(study_id)
        recorded = [
            ingest.known_series(conn, sid) or self._record(conn, sid, now) for sid in study.get("Series", [])
        ]
        for study_row in {r.study_id for r in recorded if r.kind == SeriesKind.ORIGINAL}:
            first = recorder.mark_study_stable(conn, study_row, at)
            recorder.add_event(conn, study_row, EventType.STABLE, at, detail={"first": bool(first)})
        rules = self.rules.rules
        needed = rules.tags_tested()
        candidates = [
            Candidate(sid, study_row, kind, sender, series_tags(self.orthanc, oid, study, needed))
            for sid, study_row, kind, sender, oid in unrouted_series(conn, study.get("Series", []))
        ]
        route(conn, candidates, rules, self.settings.ai_modality, now)
        resend_grown_series(conn, study.get("Series", []), now)


    def sweep_missed_stability(self) -> int:
        """Route studies whose StableStudy change never came; returns how many.

        Orthanc keeps its stability timers in memory. A study received shortly before
        Orthanc stopped (a crash, a restart) is never announced stable afterwards, yet
        GET /studies/{id} reports IsStable. Such a study would wait for ever. This sweep
        finds series still unrouted well after StableAge and handles their study as a
        StableStudy change would, dated when Orthanc would have announced it.
        """
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            study_ids = conn.execute(
                text(
                    "SELECT DISTINCT st.orthanc_id FROM series se JOIN studies st ON st.id = se.study_id "
                    "WHERE se.routed_at IS NULL AND se.kind <> :rejected AND st.orthanc_id IS NOT NULL "
                    "AND coalesce(se.last_received_at, se.created_at) BETWEEN :since AND :cutoff LIMIT 100"
                ),
                {"since": now - STABILITY_WINDOW, "rejected": SeriesKind.REJECTED,
                 "cutoff": now - timedelta(seconds=self.settings.stable_age + STABILITY_GRACE_S)},
            ).scalars().all()
        recovered = 0
        for orthanc_id in study_ids:
            try:
                study = self.orthanc.study(orthanc_id)
            except OrthancError as exc:
                if exc.status == 404:
                    continue
                raise
            if not study.get("IsStable"):
                continue
            last = parse_orthanc_time(study.get("LastUpdate")) or now
            at = min(now, last + timedelta(seconds=self.settings.stable_age))
            with self.engine.begin() as conn:
                for series_id in study.get("Series", []):
                    self._stable_series(conn, series_id, at, now)
                self._stable_study(conn, orthanc_id, at, now)
            recovered += 1
            STABILITY_RECOVERED.inc()
            log.warning("study routed without a StableStudy change (Orthanc restarted before announcing it)",
                        extra={"fields": {"study": orthanc_id}})
        return recovered


def check_ai_overdue(engine: Engine, timeout_s: int) -> int:
    """Raise `ai_overdue` once for each study whose AI result is later than the timeout."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                SELECT s.id, sent.at AS sent_at FROM studies s
                CROSS JOIN LATERAL (
                    SELECT min(e.at) AS at FROM events e WHERE e.study_id = s.id AND e.type = :ai_sent
                ) sent
                WHERE s.status = :ai_pending AND sent.at < :limit
                  AND NOT EXISTS (SELECT 1 FROM series r WHERE r.study_id = s.id AND r.kind = :ai_result)
                  AND NOT EXISTS (SELECT 1 FROM events o WHERE o.study_id = s.id AND o.type = :ai_overdue)
                FOR UPDATE OF s SKIP LOCKED
                """
            ),
            {"limit": now - timedelta(seconds=timeout_s), "ai_sent": EventType.AI_SENT,
             "ai_pending": StudyStatus.AI_PENDING, "ai_result": SeriesKind.AI_RESULT,
             "ai_overdue": EventType.AI_OVERDUE},
        ).all()
        for row in rows:
            recorder.add_event(conn, row.id, EventType.AI_OVERDUE, now,
                               detail={"sent_at": row.sent_at.isoformat(), "timeout_s": timeout_s})
            recorder.refresh_study_status(conn, row.id)
    return len(rows)
