"""Tail Orthanc's /changes with a cursor stored in PostgreSQL.

Each change that produces records is handled in one transaction together with the
cursor advance, so a crash at any point neither loses nor repeats work. Changes that
produce nothing (NewInstance, patients) only move the cursor, in the next commit.
Only one worker owns the cursor at a time (a PostgreSQL advisory lock).

With several Orthanc nodes on one index (ORTHANC_NODES > 1), /changes of any node
reads the one shared Changes table, but two nodes write it concurrently: a change can
commit after one with a higher Seq, once the cursor has passed it. The tailer therefore
remembers the Seqs missing below its cursor (`gaps`) and reads them again until they
appear or GAP_WAIT_S has passed (a rolled-back write leaves a Seq that never appears).
docs/architecture.md, "Exactly once", and docs/scaling.md say why this is enough.
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
from worker.metrics import CHANGES_FAILED, CHANGES_PROCESSED, CURSOR_LAG, GAPS_FILLED, STABILITY_RECOVERED
from worker.router import Candidate, resend_grown_series, route, unrouted_series
from worker.rules_watch import RulesHolder

log = logging.getLogger(__name__)
CURSOR = "changes_cursor"
CURSOR_LOCK_KEY = 0x0A7C_0001
STABLE_STUDY = "StableStudy"  # the one change that routes, so may queue jobs
HANDLED = {"NewSeries", "StableSeries", STABLE_STUDY}
MAX_CHANGE_FAILURES = 5
GROUP_MAX = 50
GROUP_S = 0.25
# A step returns after this long even if its page is not done (the rest is read again next
# step), so the main loop's other duties, and the health it reports, never wait for a page
# of CHANGES_BATCH changes, which a backlog on a loaded machine can make take minutes.
STEP_MAX_S = 2.0
# The stability sweep looks at series unrouted this long after Orthanc's StableAge, and
# no older than a day (a resource deleted before routing must not be asked for forever).
STABILITY_GRACE_S = 10
STABILITY_WINDOW = timedelta(days=1)
# A Seq missing below the cursor is looked for again this long: far longer than an
# Orthanc index transaction lasts, even on a loaded machine.
GAP_WAIT_S = 60.0
# A jump wider than this is not transactions committing out of order (a handful at a
# time) but a cleared change log or a cursor reset: no gaps are recorded for it.
GAP_SPAN_MAX = 1000
GAPS_MAX = 10000


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
        self.gaps: dict[int, float] = {}  # Seq missing below the cursor -> when first missed (monotonic)
        self.on_commit: Callable[[], None] | None = None  # wakes the dispatcher when jobs may be new
        self.behind = False  # the last step left changes Orthanc had already logged: step again at once

    def step(self) -> int:
        """Handle changes from the cursor for up to STEP_MAX_S; returns how many were consumed.

        `behind` tells the main loop whether to step again at once (a full page, or one cut
        short by STEP_MAX_S) or to wait its POLL_INTERVAL. While studies stream in, every
        page has a few new changes: stepping again at once for those would poll /changes,
        write the cursor and wake the dispatcher many times a second, for changes the
        worker mostly ignores (issue 19, bench/RESULTS.md).
        """
        started = time.monotonic()
        self.behind = False
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
        self._note_gaps(cursor, changes)
        index = 0
        while index < len(changes) and (index == 0 or time.monotonic() - started < STEP_MAX_S):
            index = self._commit_group(changes, index)
        self.behind = index < len(changes) or not page["Done"]
        self.cursor = max(self.cursor, cursor)
        self.last_seen = last
        CURSOR_LAG.set(max(0, last - self.cursor))
        return index + (self.fill_gaps() if self.gaps else 0)

    def _note_gaps(self, cursor: int, changes: list[dict[str, Any]]) -> None:
        """Remember the Seqs this page skips: a concurrent writer (another Orthanc node) may commit them later."""
        if cursor == 0:
            return  # a fresh or reset cursor: whatever lies below the first change is not ours to wait for
        now = time.monotonic()
        previous = cursor
        for change in changes:
            seq = int(change["Seq"])
            if previous + 1 < seq <= previous + GAP_SPAN_MAX and len(self.gaps) < GAPS_MAX:
                for missing in range(previous + 1, seq):
                    self.gaps.setdefault(missing, now)
            previous = max(previous, seq)

    def fill_gaps(self) -> int:
        """Handle changes that appeared in remembered gaps; returns how many were handled.

        Each is handled in its own transaction, without touching the cursor (which is
        past it already). Handling is idempotent (records upsert; routing takes only
        unrouted series, FOR UPDATE), so a change seen both here and in a page costs
        nothing twice. A gap that stays empty for GAP_WAIT_S is forgotten.
        """
        now = time.monotonic()
        for seq in [s for s, since in self.gaps.items() if now - since > GAP_WAIT_S]:
            del self.gaps[seq]
        if not self.gaps:
            return 0
        first = min(self.gaps)
        page = self.orthanc.changes(first - 1, self.settings.changes_batch)
        handled = 0
        for change in page["Changes"]:
            seq = int(change["Seq"])
            if seq not in self.gaps:
                continue
            if change["ChangeType"] in HANDLED:
                try:
                    with self.engine.begin() as conn:
                        self.handle(conn, change)
                except (OperationalError, InterfaceError, OrthancUnavailable):
                    raise
                except Exception:
                    if not self._skip_after_failure(change, seq):
                        continue
                handled += 1
                GAPS_FILLED.inc()
                log.info("handled a change committed after later ones (concurrent Orthanc nodes)",
                         extra={"fields": {"seq": seq, "type": change["ChangeType"]}})
            del self.gaps[seq]
        if handled and self.on_commit is not None:
            self.on_commit()
        return handled

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
        routed = False
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
                        routed = routed or change["ChangeType"] == STABLE_STUDY
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
        if routed and self.on_commit is not None:
            self.on_commit()
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
            if change["ChangeType"] == STABLE_STUDY:
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
        if self._still_arriving_elsewhere(study):
            return
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


    def _still_arriving_elsewhere(self, study: dict[str, Any]) -> bool:
        """With several nodes, a StableStudy says only that *its* node got nothing for StableAge.

        Each node keeps its own stability timers (in memory), so a node that received
        part of the study more recently still reports it unstable. Routing now would
        send a partial study, then resend it whole once the rest is recorded; instead
        it waits for that node's own StableStudy (or, if that node dies, for the
        stability sweep). With one node its change is the news (OrthancClient reads nothing).
        """
        if self.orthanc.stable_on_every_node(study["ID"]):
            return False
        log.info("study still receiving at another Orthanc node; routing waits for its stability",
                 extra={"fields": {"study": study["ID"]}})
        return True

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
