"""Send routing jobs through Orthanc's asynchronous store, with retries.

Due jobs for one destination are sent together, up to SEND_BATCH jobs per Orthanc
store job: the per-job cost of claiming, recording and polling is then shared, which
is what lets the worker keep up with Orthanc's own store rate (bench/worker_bench.py).
Each job keeps its own outcome, attempts and retry schedule.

Jobs are claimed with FOR UPDATE SKIP LOCKED under a short transaction-level advisory
lock, which makes the per-destination concurrency limit hold across several workers.
A job's Orthanc job id is committed as soon as Orthanc accepts the store, so a worker
that dies mid-send leaves a job that another worker (or its restart) adopts and polls
instead of sending again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg.errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from hub import recorder
from hub.orthanc_client import OrthancClient, OrthancError, parse_orthanc_time
from hub.settings import Settings
from worker.metrics import FAILURES, SEND_SECONDS

log = logging.getLogger(__name__)
CLAIM_LOCK_KEY = 0x0A7C_0002
HEARTBEAT_STALE_S = 20
# Orthanc store jobs of a few instances finish in tens of milliseconds: poll fast first,
# then back off, so a short job is seen done quickly and a long one costs few requests.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.1
DEADLOCK_RETRIES = 5
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
T = TypeVar("T")


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_id: int
    destination: str
    purpose: str
    orthanc_job_id: str | None
    attempts: int


def make_batches(jobs: list[ClaimedJob], size: int) -> list[list[ClaimedJob]]:
    """Group claimed jobs into batches that can share one Orthanc store job.

    First sends to the same destination travel together, up to `size` jobs. A job that
    already failed once is retried alone, so one study the peer rejects cannot drag
    its batch mates to `dead`. Adopted jobs (already holding an Orthanc job id) stay
    grouped by that id, so they are polled, never resent.
    """
    groups: dict[tuple[str, str | None], list[ClaimedJob]] = {}
    batches = []
    for job in jobs:
        if job.orthanc_job_id is None and job.attempts > 0:
            batches.append([job])
        else:
            groups.setdefault((job.destination, job.orthanc_job_id), []).append(job)
    for (_, orthanc_job), members in groups.items():
        step = len(members) if orthanc_job else size
        batches.extend(members[i:i + step] for i in range(0, len(members), step))
    return batches


def _ids(batch: list[ClaimedJob]) -> list[int]:
    return [j.id for j in batch]


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniformly in [d/2, d], d = min(cap, base * 2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Dispatcher:
    """Claims due jobs and runs each one to its outcome in a thread pool."""

    def __init__(self, settings: Settings, engine: Engine, orthanc: OrthancClient, worker_id: str):
        self.settings = settings
        self.engine = engine
        self.orthanc = orthanc
        self.worker_id = worker_id
        self.pool = ThreadPoolExecutor(settings.worker_concurrency, thread_name_prefix="send")
        self.inflight: set[int] = set()  # job ids being sent by this worker
        self.slots: set[int] = set()  # one entry (the first job id) per batch in flight
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run_forever(self, idle_s: float) -> None:
        """Claim whenever a slot frees or the tailer queues work; otherwise every `idle_s`."""
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                started = self.tick()
                backoff = 1.0
            except Exception:  # database or Orthanc down: the main loop reports it, we retry
                log.warning("dispatcher could not claim jobs; retrying", exc_info=True)
                self.stopping.wait(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            if not started:
                self.wake.wait(idle_s)
                self.wake.clear()

    def tick(self) -> int:
        """Fill the free send slots with batches; returns how many jobs were started."""
        if self.stopping.is_set():
            return 0
        with self._lock:
            free = self.settings.worker_concurrency - len(self.slots)
        if free <= 0:
            return 0
        batches = make_batches(self.claim(free * self.settings.send_batch), self.settings.send_batch)
        batches, surplus = batches[:free], batches[free:]
        if surplus:  # more single retries than free slots: hand the rest back at once
            self._release([j.id for batch in surplus for j in batch])
        claimed = [j.id for batch in batches for j in batch]
        if self.stopping.is_set():  # shutdown began while we were claiming: hand them back
            self._release(claimed)
            return 0
        for batch in batches:
            with self._lock:
                self.slots.add(batch[0].id)
                self.inflight.update(j.id for j in batch)
            self.pool.submit(self._run_guarded, batch)
        return len(claimed)

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim due jobs and adopt orphaned `sending` jobs, honouring DEST_CONCURRENCY.

        Orphans include our own `sending` jobs that are not in flight here: a send whose
        outcome or release could not be written (the database went away) leaves them
        claimed by a worker that is alive, so nobody else would ever adopt them.
        """
        now = datetime.now(UTC)
        with self._lock:
            mine = list(self.inflight)
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_KEY})
            rows = conn.execute(
                text(
                    """
                    WITH live AS (
                        SELECT worker_id FROM worker_heartbeats
                        WHERE heartbeat_at > :now - make_interval(secs => :stale)
                    ), busy AS (
                        SELECT destination, count(*) AS n FROM routing_jobs
                        WHERE state = 'sending' AND claimed_by IN (SELECT worker_id FROM live)
                          AND (claimed_by <> :w OR id = ANY(CAST(:mine AS bigint[])))
                        GROUP BY destination
                    ), locked AS (
                        SELECT j.id, j.destination, j.next_attempt_at FROM routing_jobs j
                        WHERE ((j.state IN ('queued', 'failed') AND j.next_attempt_at <= :now)
                           OR (j.state = 'sending' AND (j.claimed_by IS NULL OR j.claimed_by = :w
                               OR j.claimed_by NOT IN (SELECT worker_id FROM live))))
                          AND j.id <> ALL(CAST(:mine AS bigint[]))
                          AND NOT EXISTS (SELECT 1 FROM destination_holds h WHERE h.destination = j.destination)
                        ORDER BY j.next_attempt_at, j.id LIMIT 2000
                        FOR UPDATE SKIP LOCKED
                    ), ranked AS (
                        SELECT id, destination, next_attempt_at,
                               row_number() OVER (PARTITION BY destination ORDER BY next_attempt_at, id) AS rn
                        FROM locked
                    )
                    SELECT ranked.id FROM ranked LEFT JOIN busy USING (destination)
                    WHERE ranked.rn + COALESCE(busy.n, 0) <= :per_dest
                    ORDER BY ranked.next_attempt_at, ranked.id LIMIT :limit
                    """
                ),
                {"now": now, "stale": HEARTBEAT_STALE_S, "limit": limit, "mine": mine, "w": self.worker_id,
                 "per_dest": self.settings.dest_concurrency * self.settings.send_batch},
            ).scalars().all()
            if not rows:
                return []
            claimed = conn.execute(
                text(
                    "UPDATE routing_jobs SET state = 'sending', claimed_by = :w, updated_at = :now "
                    "WHERE id = ANY(:ids) "
                    "RETURNING id, study_id, destination, purpose, orthanc_job_id, attempts"
                ),
                {"w": self.worker_id, "now": now, "ids": list(rows)},
            ).all()
        return sorted((ClaimedJob(*row) for row in claimed), key=lambda j: j.id)

    def _run_guarded(self, batch: list[ClaimedJob]) -> None:
        try:
            self.run(batch)
        except Exception:  # a batch must never take the pool thread down; its jobs are re-adopted later
            log.exception("send crashed; the jobs will be adopted again", extra={"fields": {"jobs": _ids(batch)}})
            self._release([j.id for j in batch])
        finally:
            with self._lock:
                self.slots.discard(batch[0].id)
                self.inflight.difference_update(j.id for j in batch)
            self.wake.set()

    def run(self, batch: list[ClaimedJob]) -> None:
        """Send a batch as one Orthanc store job (or adopt its running job) and record the outcome."""
        start = time.monotonic()
        orthanc_job = batch[0].orthanc_job_id
        destination = batch[0].destination
        if orthanc_job is None:
            try:
                orthanc_job = self.orthanc.store_async(destination, self._resources([j.id for j in batch]))
            except OrthancError as exc:
                self._fail(batch, str(exc), exc.orthanc_status, start, count_attempt=True)
                return
            now = datetime.now(UTC)
            self._write(lambda conn: recorder.jobs_started(conn, _ids(batch), orthanc_job_id=orthanc_job, at=now))
        delay = POLL_FIRST_S
        while True:
            if self.stopping.is_set() and not self._grace_left():
                self._release([j.id for j in batch])
                return
            try:
                status = self.orthanc.job(orthanc_job)
            except OrthancError as exc:
                if exc.status == 404:
                    self._fail(batch, f"Orthanc no longer knows job {orthanc_job}", None, start)
                    return
                time.sleep(1)
                continue
            if status["State"] == "Success":
                self._succeed(batch, status, start)
                return
            if status["State"] == "Failure":
                detail = status.get("ErrorDetails") or status.get("ErrorDescription") or "store failed"
                self._fail(batch, f"{status.get('ErrorDescription', '')}: {detail}".strip(": "),
                           status.get("ErrorCode"), start)
                return
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)

    def _resources(self, job_ids: list[int]) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                text("SELECT DISTINCT s.orthanc_id, s.id FROM job_series js JOIN series s ON s.id = js.series_id "
                     "WHERE js.job_id = ANY(:ids) ORDER BY s.id"),
                {"ids": job_ids},
            ).scalars())

    def _succeed(self, batch: list[ClaimedJob], status: dict, start: float) -> None:
        at = parse_orthanc_time(status.get("CompletionTime")) or datetime.now(UTC)
        sent = (status.get("Content") or {}).get("InstancesCount")
        self._write(lambda conn: recorder.jobs_succeeded(
            conn, _ids(batch), at=at, instances_sent=sent if len(batch) == 1 else None))
        SEND_SECONDS.labels(batch[0].destination, "success").observe(time.monotonic() - start)
        log.info("jobs delivered", extra={"fields": {"jobs": _ids(batch), "destination": batch[0].destination,
                                                     "instances": sent}})

    def _fail(self, batch: list[ClaimedJob], error: str, code: int | None, start: float,
              count_attempt: bool = False) -> None:
        """Record a failed attempt for every job of the batch; each retries on its own schedule.

        `count_attempt` is set when Orthanc refused the store before a job started.
        """
        now = datetime.now(UTC)
        dead: list[int] = []

        def record(conn: Connection) -> None:
            dead.clear()
            for job in batch:
                attempts = conn.execute(
                    text("UPDATE routing_jobs SET attempts = attempts + :inc, orthanc_job_id = NULL "
                         "WHERE id = :id RETURNING attempts"),
                    {"id": job.id, "inc": 1 if count_attempt else 0},
                ).scalar_one()
                retry_at = None
                if attempts < self.settings.retry_max_attempts:
                    delay = backoff_delay(attempts, self.settings.retry_base, self.settings.retry_cap)
                    retry_at = now + timedelta(seconds=delay)
                else:
                    dead.append(job.id)
                recorder.job_failed(conn, job.id, at=now, error=error, error_code=code, retry_at=retry_at)

        self._write(record)
        SEND_SECONDS.labels(batch[0].destination, "failure").observe(time.monotonic() - start)
        FAILURES.labels(batch[0].destination).inc(len(batch))
        log.warning("send failed", extra={"fields": {"jobs": _ids(batch), "destination": batch[0].destination,
                                                     "error": error[:300], "dead": dead}})

    def _release(self, job_ids: list[int]) -> None:
        """Hand unfinished jobs back: they keep their Orthanc job id, so they are adopted, not resent."""
        self._write(lambda conn: conn.execute(
            text("UPDATE routing_jobs SET claimed_by = NULL, updated_at = now() "
                 "WHERE id = ANY(:ids) AND state = 'sending' AND claimed_by = :w"),
            {"ids": job_ids, "w": self.worker_id},
        ))

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a transaction, again if PostgreSQL aborted it to break a deadlock.

        Every write to jobs, series and studies also marks the study dirty for the QI
        cache (a trigger upserting qi_dirty rows, locked until commit). The tailer and
        the send threads touch several studies per transaction in no common order, so
        they can deadlock; PostgreSQL then aborts one of them, and redoing it is the
        remedy. Without it, an aborted `job_started` would lose the Orthanc job id of a
        store already under way, and the batch would be sent twice.
        """
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except OperationalError as exc:
                if not isinstance(exc.orig, RETRYABLE) or attempt == DEADLOCK_RETRIES:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    _deadline: float | None = None

    def _grace_left(self) -> bool:
        return self._deadline is not None and time.monotonic() < self._deadline

    def shutdown(self, grace_s: float, loop: threading.Thread | None = None) -> None:
        """Stop claiming, let in-flight sends finish for `grace_s`, then release the rest.

        `loop` is the thread running `run_forever`; it is joined before the pool closes,
        so no batch can be claimed after the pool stopped taking work.
        """
        self._deadline = time.monotonic() + grace_s
        self.stopping.set()
        self.wake.set()
        if loop is not None:
            loop.join(grace_s)
        self.pool.shutdown(wait=True)
