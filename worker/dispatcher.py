"""Send routing jobs through Orthanc's asynchronous store, exactly once, with retries.

Due jobs for one destination are sent together, up to SEND_BATCH jobs per Orthanc
store job: the per-job cost of claiming, recording and polling is then shared, which
is what lets the worker keep up with Orthanc's own store rate (bench/worker_bench.py).
Each job keeps its own outcome, attempts and retry schedule.

The send protocol (docs/architecture.md, "Exactly once"), each step its own commit:

1. claim: jobs go to `sending`, claimed by this worker;
2. intent: `send_intent_at` is committed just before the store request leaves;
3. Orthanc accepts the store: its job id is committed (the intent is cleared);
4. Orthanc reports the outcome: success or failure is committed.

A worker that dies anywhere leaves `sending` jobs that a live worker adopts: with a
job id it polls that job; with an intent but no job id it first looks for the store
in Orthanc's job list (same modality, a superset of the batch's series, created after
the intent) and adopts it, and sends again only when none appeared within
INTENT_SETTLE_S; with neither, nothing left this worker, so it sends.

A worker is alive while it holds its session-level advisory lock (LIVENESS_LOCK_NS,
lock_key) and its heartbeat is fresh: PostgreSQL frees the lock the moment a killed
worker's connection drops, so its jobs are adopted within a claim round, not after
heartbeat staleness.

A failed store is only counted against RETRY_MAX_ATTEMPTS when the destination still
answers C-ECHO. One that does not is put on an outage hold (worker/outages.py probes
it) and its jobs wait without spending attempts.

Every Orthanc job state reaches a recorded outcome (JobWatch; docs/architecture.md,
"Orthanc job states"): a store job Pending, Running or in Orthanc's Retry past a
deadline from its size, or paused again after the worker resumed it once, is cancelled
in Orthanc and recorded as a failed store like any other.

The dispatcher reads the database but writes only through core/recorder.py.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, TypeVar

import psycopg.errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from core import failpoints, recorder
from core.failpoints import Failpoint
from core.orthanc_client import (
    CANCELED_JOB_ERROR,
    OrthancClient,
    OrthancError,
    OrthancJobState,
    OrthancUnavailable,
    parse_orthanc_time,
)
from core.settings import Settings
from core.states import EventType, Purpose
from worker.metrics import FAILURES, SEND_SECONDS
from worker.outages import ECHO_TIMEOUT_S, first_probe_delay

log = logging.getLogger(__name__)
CLAIM_LOCK_KEY = 0x0A7C_0002
LIVENESS_LOCK_NS = 0x0A7C  # advisory lock (LIVENESS_LOCK_NS, worker_heartbeats.lock_key): held while alive
HEARTBEAT_STALE_S = 20
# Orthanc store jobs of a few instances finish in tens of milliseconds: poll fast first,
# then back off, so a short job is seen done quickly and a long one costs few requests.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.1
DEADLOCK_RETRIES = 5
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
# A store request that reached Orthanc shows in its job list once Orthanc has looked up
# the resources, well under a second even on a loaded machine: an intent this old with
# no matching job means the request never arrived, and the batch may be sent again.
INTENT_SETTLE_S = 10.0
# Orthanc's job times are whole seconds, ours are not; both clocks are the same host's.
INTENT_CLOCK_SLACK_S = 2.0
ORTHANC_DOWN_RETRY_S = 3.0  # Orthanc itself unreachable: try again soon, spending no attempt
# What Orthanc 1.10.1's store job reports when it could not open a TCP connection to the
# peer (refused, unreachable, timed out): 'DicomAssociation - connecting to AET "X": TCP
# Initialization Error: Connection refused'. A rejected association is not this.
UNREACHABLE = "TCP Initialization Error"
# A cancelled store job stops after the instance it is sending, whose C-STORE Orthanc
# bounds by the store's DIMSE timeout (OrthancClient.store_async, 60 s): its outcome is
# recorded once Orthanc stopped it, or after this long in any case.
CANCEL_SETTLE_S = 90.0
T = TypeVar("T")


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_id: int
    destination: str
    purpose: str
    orthanc_job_id: str | None
    attempts: int
    send_intent_at: datetime | None = None


def make_batches(jobs: list[ClaimedJob], size: int) -> list[list[ClaimedJob]]:
    """Group claimed jobs into batches that can share one Orthanc store job.

    First sends to the same destination travel together, up to `size` jobs. A job that
    already failed once is retried alone, so one study the peer rejects cannot drag
    its batch mates to `dead`. AI sends go one study per store job: the store's
    completion is then that study's own arrival at the AI node, which is where its AI
    round trip starts (docs/qi.md); in a batch it would be the last study's. Adopted jobs stay grouped by their Orthanc job id (they
    are polled, never resent) or by their send intent (one batch of a dead worker,
    looked up in Orthanc as a whole).
    """
    groups: dict[tuple[str, str | None, datetime | None], list[ClaimedJob]] = {}
    batches = []
    for job in jobs:
        if job.orthanc_job_id is None and job.send_intent_at is None and (job.attempts > 0 or job.purpose == Purpose.AI):
            batches.append([job])
        else:
            groups.setdefault((job.destination, job.orthanc_job_id, job.send_intent_at), []).append(job)
    for (_, orthanc_job, intent), members in groups.items():
        step = len(members) if orthanc_job or intent else size
        batches.extend(members[i:i + step] for i in range(0, len(members), step))
    return batches


def _ids(batch: list[ClaimedJob]) -> list[int]:
    return [j.id for j in batch]


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniformly in [d/2, d], d = min(cap, base * 2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def send_deadline(settings: Settings, instances: int, size_mb: float | None = None) -> float:
    """Seconds a store job of this size may stay Pending, Running or in Retry before it is cancelled.

    SEND_DEADLINE_FLOOR_S plus the longer of its instances at SEND_DEADLINE_INSTANCES_PER_S
    and (when known) its megabytes at SEND_DEADLINE_MB_PER_S.
    """
    transfer = instances / settings.send_deadline_instances_per_s
    if size_mb is not None:
        transfer = max(transfer, size_mb / settings.send_deadline_mb_per_s)
    return settings.send_deadline_floor_s + transfer


def job_age_s(status: dict[str, Any]) -> float:
    """Seconds since Orthanc created the job (its CreationTime: UTC, to the microsecond; 0 if unknown).

    Not parse_orthanc_time, which drops the fraction: the job would look up to a second
    older, which matters against a short deadline.
    """
    value = status.get("CreationTime") or ""
    try:
        created = datetime.strptime(value, "%Y%m%dT%H%M%S.%f" if "." in value else "%Y%m%dT%H%M%S")
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(UTC) - created.replace(tzinfo=UTC)).total_seconds())


class Verdict(StrEnum):
    """JobWatch's answer to one status of an unfinished store job."""

    WAIT = "wait"
    RESUME = "resume"  # POST /jobs/{id}/resume
    CANCEL = "cancel"  # POST /jobs/{id}/cancel, then record the failure (JobWatch.reason)


class JobWatch:
    """What to do about one unfinished Orthanc store job, status after status.

    The policy per state (docs/architecture.md, "Orthanc job states"):

    - Pending, Running, Retry: wait, up to `send_deadline` of the job's size, counted
      from the job's creation in Orthanc, without the time it spent paused. Orthanc's
      Retry is its own retry of a step and is left to it. Past the deadline: cancel.
      The deadline starts from the instance count (in the job's content, free); only a
      job that outlives it costs GET /series/{id}/statistics, once, to take its
      megabytes into account (few large instances, such as tomosynthesis).
    - Paused: somebody paused the job in Orthanc (Explorer or REST). The hub owns its
      stores, and a held destination (./orthanc hold) is how sends are stopped, so the
      first pause is undone at once (resume). A job paused again, or that stays paused
      though resumed, is cancelled once paused for SEND_PAUSED_GRACE_S: whoever paused
      it twice meant it, and the jobs go through the normal retry and backoff.

    A cancelled job is recorded as a failed store (Dispatcher._store_failed): a counted
    attempt, or an outage hold if the destination stopped answering C-ECHO. It may have
    sent part of the batch; the retry sends the batch again, as after any failed store.
    `size_mb` gives the job's size in megabytes, or None when Orthanc cannot tell.
    """

    def __init__(self, job_id: str, settings: Settings, *, age_s: float, size_mb: Callable[[], float | None],
                 clock: Callable[[], float] = time.monotonic):
        self.job_id = job_id
        self.settings = settings
        self.clock = clock
        self.created = clock() - max(0.0, age_s)
        self._size_mb = size_mb
        self.size: float | None = None
        self.sized = False
        self.paused_s = 0.0  # time seen paused, not counted against the deadline
        self.paused_since: float | None = None
        self.resumed = False
        self.reason = ""

    def see(self, status: dict[str, Any]) -> Verdict:
        """The verdict on the job's latest status (not Success or Failure)."""
        now = self.clock()
        state = status.get("State")
        if state == OrthancJobState.PAUSED:
            if self.paused_since is None:
                self.paused_since = now
            if not self.resumed:
                self.resumed = True
                return Verdict.RESUME
            paused = now - self.paused_since
            if paused < self.settings.send_paused_grace_s:
                return Verdict.WAIT
            self.reason = (f"Orthanc job {self.job_id} paused for {paused:.0f} s after the worker had resumed it "
                           "once (to stop sends, hold the destination)")
            return Verdict.CANCEL
        if self.paused_since is not None:
            self.paused_s += now - self.paused_since
            self.paused_since = None
        elapsed = now - self.created - self.paused_s
        instances = int((status.get("Content") or {}).get("InstancesCount") or 0)
        deadline = send_deadline(self.settings, instances, self.size)
        if elapsed > deadline and not self.sized:
            self.sized = True
            self.size = self._size_mb()
            deadline = send_deadline(self.settings, instances, self.size)
        if elapsed <= deadline:
            return Verdict.WAIT
        size = f", {self.size:.1f} MB" if self.size is not None else ""
        self.reason = (f"Orthanc job {self.job_id} still {state} after {elapsed:.0f} s "
                       f"(deadline {deadline:.0f} s for {instances} instances{size})")
        return Verdict.CANCEL


class Dispatcher:
    """Claims due jobs and runs each one to its outcome in a thread pool."""

    clock: Callable[[], float] = staticmethod(time.monotonic)  # JobWatch's clock (tests may replace it)

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

        Orphans are `sending` jobs of workers that are not alive (no liveness lock, or a
        stale heartbeat), and our own `sending` jobs that are not in flight here: a send
        whose outcome or release could not be written (the database went away) leaves
        them claimed by a worker that is alive, so nobody else would ever adopt them.
        A held destination's jobs are not claimed for a new send; those already in
        Orthanc's hands (a job id or an intent) are, to follow them to their outcome.
        """
        now = datetime.now(UTC)
        with self._lock:
            mine = list(self.inflight)
        with self.engine.begin() as conn:
            claimed = recorder.claim_jobs(
                conn, worker_id=self.worker_id, now=now, limit=limit, in_flight=mine,
                per_destination=self.settings.dest_concurrency * self.settings.send_batch,
                claim_lock_key=CLAIM_LOCK_KEY, liveness_ns=LIVENESS_LOCK_NS, stale_s=HEARTBEAT_STALE_S)
        if claimed:
            failpoints.hit(Failpoint.AFTER_CLAIM, claimed[0].destination)
        return sorted((ClaimedJob(*row) for row in claimed), key=lambda j: j.id)

    def _run_guarded(self, batch: list[ClaimedJob]) -> None:
        try:
            self.run(batch)
        except Exception as exc:  # a batch must never take the pool thread down; its jobs are re-adopted later
            if isinstance(exc, OrthancUnavailable):
                log.warning("Orthanc unreachable during a send; the jobs will be adopted again",
                            extra={"fields": {"jobs": _ids(batch), "error": str(exc)[:200]}})
            else:
                log.exception("send crashed; the jobs will be adopted again", extra={"fields": {"jobs": _ids(batch)}})
            self.stopping.wait(1.0)  # whatever broke, do not adopt and fail again in a tight loop
            self._release([j.id for j in batch])
        finally:
            with self._lock:
                self.slots.discard(batch[0].id)
                self.inflight.difference_update(j.id for j in batch)
            self.wake.set()

    def run(self, batch: list[ClaimedJob]) -> None:
        """Take a batch through the send protocol: adopt its store if one exists, else send it."""
        start = time.monotonic()
        orthanc_job = batch[0].orthanc_job_id
        if orthanc_job is None and batch[0].send_intent_at is not None:
            adopted = self._adopt_store(batch)
            if adopted is False:
                return  # handed back: shutting down
            orthanc_job = adopted or self._recorded_job(batch)
            if orthanc_job is None and self._held(batch[0].destination):
                self._write(lambda conn: recorder.jobs_waiting(
                    conn, _ids(batch), at=datetime.now(UTC), error="destination on hold", code=None, uncount=False))
                return
        if orthanc_job is None:
            orthanc_job = self._send(batch, start)
            if orthanc_job is None:
                return
        self._poll(batch, orthanc_job, start)

    def _adopt_store(self, batch: list[ClaimedJob]) -> str | Literal[False]:
        """Find the store a dead sender may have started for this batch; record and return its id.

        Returns "" (falsy) when Orthanc has no such job and the intent is old enough
        (INTENT_SETTLE_S) that the request cannot still be on its way: the batch may
        then be sent. Returns False when shutdown began while waiting (jobs handed back).
        """
        intent = min(j.send_intent_at for j in batch if j.send_intent_at is not None)
        destination = batch[0].destination
        resources = set(self._resources(_ids(batch)))
        aet = self.orthanc.modality_aet(destination)
        while True:
            found = self._find_store(aet, resources, intent)
            if found is not None:
                job_id = str(found["ID"])
                self._record_adopted(batch, job_id, parse_orthanc_time(found.get("CreationTime")))
                log.info("adopted a store a dead worker had started", extra={"fields": {
                    "jobs": _ids(batch), "destination": destination, "orthanc_job": job_id}})
                return job_id
            waited = (datetime.now(UTC) - intent).total_seconds()
            if waited >= INTENT_SETTLE_S:
                return ""
            if self.stopping.is_set():
                self._release(_ids(batch))
                return False
            time.sleep(min(1.0, INTENT_SETTLE_S - waited))

    def _record_adopted(self, batch: list[ClaimedJob], job_id: str, created: datetime | None) -> None:
        """Record the found store on every job of the dead sender's batch, claimed here or not.

        A claim may have split that batch; its other jobs then poll this store when
        adopted, instead of finding it already recorded and sending again.
        """
        at = created or datetime.now(UTC)
        self._write(lambda conn: recorder.store_adopted(
            conn, _ids(batch), destination=batch[0].destination, intent=batch[0].send_intent_at,
            orthanc_job_id=job_id, at=at))

    def _recorded_job(self, batch: list[ClaimedJob]) -> str | None:
        """An Orthanc job id another adopter recorded on these jobs meanwhile (it found their store)."""
        with self.engine.connect() as conn:
            return conn.execute(
                text("SELECT orthanc_job_id FROM routing_jobs WHERE id = ANY(:ids) AND orthanc_job_id IS NOT NULL "
                     "LIMIT 1"), {"ids": _ids(batch)},
            ).scalar()

    def _find_store(self, aet: str, resources: set[str], intent: datetime) -> dict[str, Any] | None:
        """The earliest store job to `aet` carrying `resources`, created since `intent`, not yet recorded.

        A cancelled job is never adopted: the worker cancels only stores it had recorded,
        and records them as failed (JobWatch); one an operator cancelled sends nothing
        more. Either way the batch is sent again, as after any failed store.
        """
        since = intent - timedelta(seconds=INTENT_CLOCK_SLACK_S)
        with self.engine.connect() as conn:
            recorded = set(conn.execute(
                text("SELECT detail->>'orthanc_job' FROM events WHERE type = :started AND at >= :since"),
                {"since": since, "started": EventType.DELIVERY_STARTED},
            ).scalars())
        matches = []
        for job in self.orthanc.jobs():
            content = job.get("Content") or {}
            created = parse_orthanc_time(job.get("CreationTime"))
            cancelled = job.get("State") == OrthancJobState.FAILURE and job.get("ErrorCode") == CANCELED_JOB_ERROR
            if (job.get("Type") == "DicomModalityStore" and content.get("RemoteAet") == aet
                    and resources <= set(content.get("ParentResources") or ())
                    and created is not None and created >= since.replace(microsecond=0)
                    and job.get("ID") not in recorded and not cancelled):
                matches.append((created, job))
        return min(matches, key=lambda m: m[0])[1] if matches else None

    def _held(self, destination: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT EXISTS (SELECT 1 FROM destination_holds WHERE destination = :d)"),
                                {"d": destination}).scalar_one()

    def _send(self, batch: list[ClaimedJob], start: float) -> str | None:
        """Record the intent, ask Orthanc to store, record its job id; None when no store started."""
        ids = _ids(batch)
        destination = batch[0].destination
        resources = self._resources(ids)
        # The send starts when the request leaves, not when Orthanc's answer is back: under
        # load Orthanc may be storing before it answers, and a later stamp would shorten
        # every duration measured from `delivery_started` (the AI round trip of a resend).
        intended = datetime.now(UTC)
        self._write(lambda conn: recorder.jobs_intended(conn, ids, at=intended))
        try:
            orthanc_job = self.orthanc.store_async(destination, resources)
        except OrthancUnavailable as exc:  # the request may have reached Orthanc: keep the intent
            self._wait_for_orthanc(ids, str(exc), None, uncount=False, keep_intent=True)
            return None
        except OrthancError as exc:  # Orthanc answered and refused: no job exists
            self._fail(batch, str(exc), exc.orthanc_status, start, count_attempt=True)
            return None
        failpoints.hit(Failpoint.AFTER_STORE_ACCEPTED, destination)
        self._write(lambda conn: recorder.jobs_started(conn, ids, orthanc_job_id=orthanc_job, at=intended))
        return orthanc_job

    def _poll(self, batch: list[ClaimedJob], orthanc_job: str, start: float) -> None:
        """Follow Orthanc's store job to its outcome and record it.

        A job that would not finish by itself (JobWatch: paused twice, or past its
        deadline) is cancelled in Orthanc; its outcome is recorded once Orthanc has
        stopped it: a failed store with the reason, or a success if its last instance
        went out before the cancel took effect.
        """
        delay = POLL_FIRST_S
        watch: JobWatch | None = None
        cancelled: str | None = None  # why the worker cancelled the job in Orthanc
        settle_until = 0.0
        while True:
            if self.stopping.is_set() and not self._grace_left():
                self._release([j.id for j in batch])
                return
            try:
                status = self.orthanc.job(orthanc_job)
            except OrthancError as exc:
                if exc.status == 404:  # Orthanc restarted (SaveJobs is off): the store is gone, send again
                    self._write(lambda conn: recorder.jobs_waiting(
                        conn, _ids(batch), at=datetime.now(UTC), error=f"Orthanc no longer knows job {orthanc_job}",
                        code=None, uncount=True))
                    return
                time.sleep(1)
                continue
            state = status["State"]
            if state == OrthancJobState.SUCCESS:
                failpoints.hit(Failpoint.AFTER_STORE_SUCCESS, batch[0].destination)
                self._succeed(batch, status, start)
                return
            if state == OrthancJobState.FAILURE:
                detail = status.get("ErrorDetails") or status.get("ErrorDescription") or "store failed"
                error = cancelled or f"{status.get('ErrorDescription', '')}: {detail}".strip(": ")
                self._store_failed(batch, error, status.get("ErrorCode"), start)
                return
            if cancelled is not None:
                if self.clock() >= settle_until:  # still sending its last instance: record it now anyway
                    self._store_failed(batch, f"{cancelled}; not stopped {CANCEL_SETTLE_S:.0f} s later", None, start)
                    return
            else:
                if watch is None:
                    resources = list((status.get("Content") or {}).get("ParentResources") or ())
                    watch = JobWatch(orthanc_job, self.settings, age_s=job_age_s(status), clock=self.clock,
                                     size_mb=functools.partial(self._size_mb, resources))
                verdict = watch.see(status)
                if verdict is Verdict.RESUME:
                    self._resume(batch, orthanc_job)
                elif verdict is Verdict.CANCEL:
                    cancelled = f"{watch.reason}: cancelled in Orthanc"
                    self._cancel(batch, orthanc_job, cancelled)
                    settle_until = self.clock() + CANCEL_SETTLE_S
                    delay = POLL_FIRST_S
                    continue
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)

    def _resume(self, batch: list[ClaimedJob], orthanc_job: str) -> None:
        log.warning("Orthanc store job was paused; resuming it (a second pause cancels it)",
                    extra={"fields": {"jobs": _ids(batch), "destination": batch[0].destination,
                                      "orthanc_job": orthanc_job}})
        try:
            self.orthanc.resume_job(orthanc_job)
        except OrthancUnavailable:
            raise
        except OrthancError as exc:  # it finished or was cancelled meanwhile: its next status says
            log.info("could not resume the Orthanc job", extra={"fields": {"orthanc_job": orthanc_job,
                                                                           "error": str(exc)[:200]}})

    def _cancel(self, batch: list[ClaimedJob], orthanc_job: str, reason: str) -> None:
        log.warning("cancelling an Orthanc store job", extra={"fields": {
            "jobs": _ids(batch), "destination": batch[0].destination, "orthanc_job": orthanc_job, "reason": reason}})
        try:
            self.orthanc.cancel_job(orthanc_job)
        except OrthancUnavailable:
            raise
        except OrthancError as exc:  # it finished meanwhile, or Orthanc forgot it: its next status says
            log.info("could not cancel the Orthanc job", extra={"fields": {"orthanc_job": orthanc_job,
                                                                           "error": str(exc)[:200]}})

    def _size_mb(self, series: list[str]) -> float | None:
        """Megabytes of these series in Orthanc's storage; None when Orthanc cannot tell."""
        try:
            return sum(self.orthanc.series_disk_size(s) for s in series) / 2**20 if series else None
        except OrthancError:
            return None

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

    def _store_failed(self, batch: list[ClaimedJob], error: str, code: int | None, start: float) -> None:
        """Orthanc's store job failed: a counted attempt if the destination answers C-ECHO, else an outage.

        A destination that does not answer is put on an outage hold and the batch waits,
        its attempt taken back: an outage of any length then never makes a job `dead`.
        So is one Orthanc could not even connect to (UNREACHABLE in the error), whatever
        the echo says: a peer that was down when the store ran and is back for the echo
        (a restart, a flapping link) must not spend an attempt; the prober's first echo
        then lifts the hold.
        """
        destination = batch[0].destination
        ids = _ids(batch)
        try:
            echo = self.orthanc.echo(destination, timeout=ECHO_TIMEOUT_S, raise_unreachable=True)
        except OrthancUnavailable as exc:
            self._wait_for_orthanc(ids, f"{error}; then {exc}", code, uncount=True, keep_intent=False)
            return
        if echo.ok and UNREACHABLE not in error:
            self._fail(batch, error, code, start)
            return
        now = datetime.now(UTC)
        why = "not answering C-ECHO" if not echo.ok else "could not be connected to"

        def hold(conn: Connection) -> bool:
            new = recorder.outage_started(conn, destination, at=now, error=echo.error or error, reason=why,
                                          next_probe_at=now + timedelta(seconds=first_probe_delay(self.settings)))
            recorder.jobs_waiting(conn, ids, at=now, error=f"{error} ({why}: outage hold)", code=code, uncount=True)
            return new

        if self._write(hold):
            log.warning(f"destination {why}: outage hold, its jobs wait",
                        extra={"fields": {"destination": destination, "error": (echo.error or error)[:300]}})
        SEND_SECONDS.labels(destination, "failure").observe(time.monotonic() - start)
        FAILURES.labels(destination).inc(len(batch))

    def _wait_for_orthanc(self, ids: list[int], error: str, code: int | None, *, uncount: bool,
                          keep_intent: bool) -> None:
        """Orthanc itself is unreachable: the jobs try again soon, without spending an attempt."""
        now = datetime.now(UTC)
        retry_at = now + timedelta(seconds=ORTHANC_DOWN_RETRY_S)
        self._write(lambda conn: recorder.jobs_waiting(
            conn, ids, at=now, error=error, code=code, uncount=uncount, retry_at=retry_at, keep_intent=keep_intent))

    def _fail(self, batch: list[ClaimedJob], error: str, code: int | None, start: float,
              count_attempt: bool = False) -> None:
        """Record a counted failed attempt for every job of the batch; each retries on its own schedule.

        `count_attempt` is set when Orthanc refused the store before a job started
        (otherwise `jobs_started` counted the attempt already).
        """
        now = datetime.now(UTC)

        def retry_at(attempts: int) -> datetime | None:
            if attempts >= self.settings.retry_max_attempts:
                return None
            return now + timedelta(seconds=backoff_delay(attempts, self.settings.retry_base, self.settings.retry_cap))

        dead = self._write(lambda conn: recorder.jobs_failed(
            conn, _ids(batch), at=now, error=error, error_code=code, count_attempt=count_attempt, retry_at=retry_at))
        SEND_SECONDS.labels(batch[0].destination, "failure").observe(time.monotonic() - start)
        FAILURES.labels(batch[0].destination).inc(len(batch))
        log.warning("send failed", extra={"fields": {"jobs": _ids(batch), "destination": batch[0].destination,
                                                     "error": error[:300], "dead": dead}})

    def _release(self, job_ids: list[int]) -> None:
        """Hand unfinished jobs back: they keep their Orthanc job id, so they are adopted, not resent."""
        self._write(lambda conn: recorder.jobs_released(conn, job_ids, worker_id=self.worker_id))

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
