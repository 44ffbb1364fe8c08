"""Send routing jobs through Orthanc's asynchronous store, with retries.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from hub import recorder
from hub.orthanc_client import OrthancClient, OrthancError, parse_orthanc_time
from hub.settings import Settings
from worker.metrics import FAILURES, SEND_SECONDS

log = logging.getLogger(__name__)
CLAIM_LOCK_KEY = 0x0A7C_0002
HEARTBEAT_STALE_S = 20
POLL_S = 0.2


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_id: int
    destination: str
    purpose: str
    orthanc_job_id: str | None
    attempts: int


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
        self.inflight: set[int] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def tick(self) -> int:
        """Claim as many jobs as there are free slots; returns how many were started."""
        if self.stopping.is_set():
            return 0
        with self._lock:
            free = self.settings.worker_concurrency - len(self.inflight)
        if free <= 0:
            return 0
        jobs = self.claim(free)
        for job in jobs:
            with self._lock:
                self.inflight.add(job.id)
            self.pool.submit(self._run_guarded, job)
        return len(jobs)

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim due jobs and adopt orphaned `sending` jobs, honouring DEST_CONCURRENCY."""
        now = datetime.now(UTC)
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
                        GROUP BY destination
                    ), locked AS (
                        SELECT j.id, j.destination, j.next_attempt_at FROM routing_jobs j
                        WHERE (j.state IN ('queued', 'failed') AND j.next_attempt_at <= :now)
                           OR (j.state = 'sending' AND (j.claimed_by IS NULL
                               OR j.claimed_by NOT IN (SELECT worker_id FROM live)))
                        ORDER BY j.next_attempt_at, j.id LIMIT 1000
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
                {"now": now, "stale": HEARTBEAT_STALE_S, "per_dest": self.settings.dest_concurrency, "limit": limit},
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
        return [ClaimedJob(*row) for row in claimed]

    def _run_guarded(self, job: ClaimedJob) -> None:
        try:
            self.run(job)
        except Exception:  # a job must never take the pool thread down; it is re-adopted later
            log.exception("send crashed; the job will be adopted again", extra={"fields": {"job": job.id}})
            self._release(job.id)
        finally:
            with self._lock:
                self.inflight.discard(job.id)

    def run(self, job: ClaimedJob) -> None:
        start = time.monotonic()
        orthanc_job = job.orthanc_job_id
        if orthanc_job is None:
            resources = self._resources(job.id)
            try:
                orthanc_job = self.orthanc.store_async(job.destination, resources)
            except OrthancError as exc:
                self._fail(job, str(exc), exc.orthanc_status, start, count_attempt=True)
                return
            with self.engine.begin() as conn:
                recorder.job_started(conn, job.id, orthanc_job_id=orthanc_job, at=datetime.now(UTC))
        while True:
            if self.stopping.is_set() and not self._grace_left():
                self._release(job.id)
                return
            try:
                status = self.orthanc.job(orthanc_job)
            except OrthancError as exc:
                if exc.status == 404:
                    self._fail(job, f"Orthanc no longer knows job {orthanc_job}", None, start)
                    return
                time.sleep(1)
                continue
            if status["State"] == "Success":
                self._succeed(job, status, start)
                return
            if status["State"] == "Failure":
                detail = status.get("ErrorDetails") or status.get("ErrorDescription") or "store failed"
                self._fail(job, f"{status.get('ErrorDescription', '')}: {detail}".strip(": "),
                           status.get("ErrorCode"), start)
                return
            time.sleep(POLL_S)

    def _resources(self, job_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                text("SELECT s.orthanc_id FROM job_series js JOIN series s ON s.id = js.series_id "
                     "WHERE js.job_id = :id ORDER BY s.id"),
                {"id": job_id},
            ).scalars())

    def _succeed(self, job: ClaimedJob, status: dict, start: float) -> None:
        at = parse_orthanc_time(status.get("CompletionTime")) or datetime.now(UTC)
        sent = (status.get("Content") or {}).get("InstancesCount")
        with self.engine.begin() as conn:
            recorder.job_succeeded(conn, job.id, at=at, instances_sent=sent)
        SEND_SECONDS.labels(job.destination, "success").observe(time.monotonic() - start)
        log.info("job delivered", extra={"fields": {"job": job.id, "destination": job.destination,
                                                    "purpose": job.purpose, "instances": sent}})

    def _fail(self, job: ClaimedJob, error: str, code: int | None, start: float, count_attempt: bool = False) -> None:
        """Record a failed attempt; `count_attempt` when Orthanc refused before a job started."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            attempts = conn.execute(
                text("UPDATE routing_jobs SET attempts = attempts + :inc WHERE id = :id RETURNING attempts"),
                {"id": job.id, "inc": 1 if count_attempt else 0},
            ).scalar_one()
            retry_at = None
            if attempts < self.settings.retry_max_attempts:
                delay = backoff_delay(attempts, self.settings.retry_base, self.settings.retry_cap)
                retry_at = now + timedelta(seconds=delay)
            conn.execute(text("UPDATE routing_jobs SET orthanc_job_id = NULL WHERE id = :id"), {"id": job.id})
            recorder.job_failed(conn, job.id, at=now, error=error, error_code=code, retry_at=retry_at)
        SEND_SECONDS.labels(job.destination, "failure").observe(time.monotonic() - start)
        FAILURES.labels(job.destination).inc()
        log.warning("send failed", extra={"fields": {"job": job.id, "destination": job.destination,
                                                     "attempt": attempts, "error": error[:300],
                                                     "dead": retry_at is None}})

    def _release(self, job_id: int) -> None:
        """Hand an unfinished job back: it keeps its Orthanc job id, so it is adopted, not resent."""
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE routing_jobs SET claimed_by = NULL, updated_at = now() "
                     "WHERE id = :id AND state = 'sending' AND claimed_by = :w"),
                {"id": job_id, "w": self.worker_id},
            )

    _deadline: float | None = None

    def _grace_left(self) -> bool:
        return self._deadline is not None and time.monotonic() < self._deadline

    def shutdown(self, grace_s: float) -> None:
        """Stop claiming, let in-flight sends finish for `grace_s`, then release the rest."""
        self._deadline = time.monotonic() + grace_s
        self.stopping.set()
        self.pool.shutdown(wait=True)
