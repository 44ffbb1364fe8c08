"""The worker daemon: tail /changes (when it owns the cursor), dispatch jobs, heartbeat.

Several workers may run against one database: all of them dispatch; the one holding
the advisory lock tails /changes and raises AI-overdue events. SIGTERM stops claiming,
lets in-flight sends finish for a grace period, and leaves every job consistent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core import qi, recorder, retention
from core.db import engine_for
from core.logs import setup_logging
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import Settings, SettingsError, load_settings
from worker import health
from worker.alerter import ALERTER_LOCK_KEY, Alerter
from worker.dispatcher import LIVENESS_LOCK_NS, Dispatcher
from worker.outages import OutageProber
from worker.retention import Retention
from worker.rules_watch import RulesHolder, watch
from worker.storage import StorageWatch
from worker.tailer import CURSOR_LOCK_KEY, ChangeFailed, Tailer, check_ai_overdue
from worker.wakeup import WorkListener

log = logging.getLogger("worker")
HEARTBEAT_S = 2.0
OVERDUE_CHECK_S = 5.0
STABILITY_SWEEP_S = 15.0  # see Tailer.sweep_missed_stability
QI_REFRESH_S = 30.0
SHUTDOWN_GRACE_S = 20.0
MAX_BACKOFF_S = 30.0


class SessionLock:
    """Session-level advisory lock on a dedicated connection: held while the connection lives.

    `keys` is one bigint or two int4 values, as pg_try_advisory_lock takes them.
    """

    def __init__(self, engine: Engine, *keys: int):
        self.engine = engine
        self.keys = keys
        self.conn: Connection | None = None

    def held(self) -> bool:
        if self.conn is not None:
            try:
                self.conn.execute(text("SELECT 1"))
                return True
            except DBAPIError:
                self.release()
        self.conn = self.engine.connect()
        args = ", ".join(f":k{i}" for i in range(len(self.keys)))
        if self.conn.execute(text(f"SELECT pg_try_advisory_lock({args})"),
                             {f"k{i}": k for i, k in enumerate(self.keys)}).scalar_one():
            self.conn.commit()
            return True
        self.release()
        return False

    def release(self) -> None:
        """Give the lock up by ending the connection's session: closing alone would return the
        connection to the pool with the session lock still held."""
        if self.conn is not None:
            with contextlib.suppress(DBAPIError):
                self.conn.invalidate()
                self.conn.close()
            self.conn = None


class Worker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = engine_for(settings, pool_size=settings.worker_concurrency + 4)
        self.orthanc = OrthancClient.from_settings(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.rules = RulesHolder(settings.routing_rules, self.engine)
        self.tailer = Tailer(settings, self.engine, self.orthanc, self.rules)
        self.dispatcher = Dispatcher(settings, self.engine, self.orthanc, self.worker_id)
        self.cursor_lock = SessionLock(self.engine, CURSOR_LOCK_KEY)
        # Held for the worker's whole life: the moment it dies, PostgreSQL frees it and
        # other workers adopt its jobs (worker/dispatcher.py, claim).
        self.lock_key = secrets.randbelow(2**31 - 1) + 1
        self.liveness = SessionLock(self.engine, LIVENESS_LOCK_NS, self.lock_key)
        self.prober = OutageProber(settings, self.engine, self.orthanc, self.dispatcher.wake.set)
        self.storage = StorageWatch(settings.dicom_storage, settings.disk_free_warn_mb)
        # Every worker runs an alerter; the one holding ALERTER_LOCK_KEY sends (worker/alerter.py).
        self.alerter = Alerter(settings, self.engine, self.orthanc, SessionLock(self.engine, ALERTER_LOCK_KEY),
                               self.storage.check)
        # Likewise one worker at a time runs retention: the holder of RETENTION_LOCK_KEY (worker/retention.py).
        self.retention = Retention(settings, self.engine, self.orthanc,
                                   SessionLock(self.engine, retention.RETENTION_LOCK_KEY))
        self.tailer.on_commit = self.dispatcher.wake.set
        self.listener = WorkListener(self.engine, self.dispatcher.wake.set)
        self.stop = threading.Event()
        self.started_at = datetime.now(UTC)
        self.owns_cursor = False
        self.orthanc_ok: bool | None = None
        self.db_ok: bool | None = None
        self.last_heartbeat = 0.0

    # --- health ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        age = time.monotonic() - self.last_heartbeat if self.last_heartbeat else None
        ok = bool(self.orthanc_ok and self.db_ok and age is not None and age < 5 * HEARTBEAT_S + 10)
        # A refused routing.yml degrades the hub even though everything answers: it routes on old rules.
        problems = [p for p in (self.rules.problem(self.settings.zone),) if p]
        return {
            "status": "ok" if ok and not problems else "degraded",
            "problems": problems,
            "worker_id": self.worker_id,
            "orthanc": self.orthanc_ok,
            "database": self.db_ok,
            "owns_cursor": self.owns_cursor,
            "cursor": self.tailer.cursor,
            "orthanc_last": self.tailer.last_seen,
            "cursor_lag": max(0, self.tailer.last_seen - self.tailer.cursor) if self.owns_cursor else None,
            "heartbeat_age_s": round(age, 1) if age is not None else None,
            "rules_error": self.rules.last_error,
            # Reported, not part of "status": the worker still delivers from a full disk;
            # it is Orthanc that refuses new studies (docs/operations.md).
            "storage": self.storage.check().as_dict(),
        }

    def heartbeat(self) -> None:
        """Hold the liveness lock (again, after a database restart) and publish its key with a fresh beat."""
        if not self.liveness.held():
            log.warning("liveness lock key taken; choosing another", extra={"fields": {"key": self.lock_key}})
            self.lock_key = secrets.randbelow(2**31 - 1) + 1
            self.liveness = SessionLock(self.engine, LIVENESS_LOCK_NS, self.lock_key)
            return
        now = datetime.now(UTC)
        beat = recorder.Heartbeat(
            worker_id=self.worker_id, hostname=socket.gethostname(), pid=os.getpid(), started_at=self.started_at,
            owns_cursor=self.owns_cursor, orthanc_ok=self.orthanc_ok, cursor_lag=self.health()["cursor_lag"],
            info={"cursor": self.tailer.cursor, "inflight": len(self.dispatcher.inflight)}, lock_key=self.lock_key,
        )
        with self.engine.begin() as conn:
            recorder.heartbeat(conn, beat, at=now)
        self.last_heartbeat = time.monotonic()

    def _heartbeat_loop(self) -> None:
        """Heartbeats on their own thread: a long /changes page must not make us look dead."""
        while not self.stop.is_set():
            self.storage.check()  # keeps the /metrics gauges current and logs a low disk once
            try:
                self.heartbeat()
            except DBAPIError:
                self.db_ok = False
            self.stop.wait(HEARTBEAT_S)

    def _dispatch_after_first_heartbeat(self) -> None:
        """Claims only start once our heartbeat is visible, so our own sends never look orphaned."""
        while not self.stop.is_set() and not self.last_heartbeat:
            self.stop.wait(0.1)
        self.dispatcher.run_forever(self.settings.poll_interval)

    # --- main loop -------------------------------------------------------------

    def run(self) -> None:
        # Loopback natively: the API (api/, on ROUTING_API_PORT) serves /health and /metrics to others.
        server = health.serve(self.settings.worker_health_host, self.settings.worker_health_port, self.engine,
                              self.health)
        beats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beats.start()
        sender = threading.Thread(target=self._dispatch_after_first_heartbeat, name="dispatcher", daemon=True)
        sender.start()
        prober = threading.Thread(target=self.prober.run_forever, args=(self.stop,), name="outages", daemon=True)
        prober.start()
        alerter = threading.Thread(target=self.alerter.run_forever, args=(self.stop,), name="alerter", daemon=True)
        alerter.start()
        purger = threading.Thread(target=self.retention.run_forever, args=(self.stop,), name="retention", daemon=True)
        purger.start()
        listener = threading.Thread(target=self.listener.run_forever, args=(self.stop,), name="wakeup", daemon=True)
        listener.start()
        observer = None
        backoff = 1.0
        last_overdue = 0.0
        last_sweep = 0.0
        last_qi_refresh = 0.0
        qi_synced = False
        log.info("worker started", extra={"fields": {"worker_id": self.worker_id}})
        while not self.stop.is_set():
            try:
                if observer is None:
                    self.rules.reload()
                    observer = watch(self.rules)
                if not qi_synced:
                    with self.engine.begin() as conn:
                        qi.sync_qi_settings(conn, self.settings)
                    qi_synced = True
                behind = False  # changes are waiting: step again without the poll's wait
                self.owns_cursor = self.cursor_lock.held()
                self.db_ok = True
                if not self.owns_cursor:
                    self.orthanc.system()  # only the dispatcher talks to Orthanc here: check it for /health
                else:
                    consumed = self.tailer.step()
                    behind = self.tailer.behind
                    if time.monotonic() - last_overdue >= OVERDUE_CHECK_S:
                        check_ai_overdue(self.engine, self.settings.ai_result_timeout)
                        last_overdue = time.monotonic()
                    if not consumed and time.monotonic() - last_sweep >= STABILITY_SWEEP_S:
                        self.tailer.sweep_missed_stability()
                        last_sweep = time.monotonic()
                    if time.monotonic() - last_qi_refresh >= QI_REFRESH_S:
                        with self.engine.begin() as conn:  # keeps the QI cache warm for Grafana
                            qi.refresh(conn)
                        last_qi_refresh = time.monotonic()
                self.orthanc_ok = True
                backoff = 1.0
                if not behind:
                    self.stop.wait(self.settings.poll_interval)
            except ChangeFailed:
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            except (OperationalError, InterfaceError) as exc:
                self.db_ok = False
                self.owns_cursor = False
                self.cursor_lock.release()
                log.warning("database unavailable; backing off",
                            extra={"fields": {"retry_in_s": backoff, "error": type(exc.orig).__name__}})
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            except OrthancError as exc:
                self.orthanc_ok = False
                log.warning("Orthanc unavailable; backing off",
                            extra={"fields": {"retry_in_s": backoff, "error": str(exc)[:200]}})
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            except Exception:  # the daemon must outlive any single bad iteration
                log.exception("unexpected error in the worker loop; backing off")
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
        log.info("worker stopping: finishing in-flight sends")
        self.dispatcher.shutdown(SHUTDOWN_GRACE_S, sender)
        beats.join(HEARTBEAT_S + 5)
        if observer is not None:
            observer.stop()
        server.shutdown()
        prober.join(10)
        alerter.join(10)
        purger.join(30)
        listener.join(10)
        self.cursor_lock.release()
        self.liveness.release()
        try:
            with self.engine.begin() as conn:
                recorder.worker_stopped(conn, self.worker_id)
        except DBAPIError:
            pass
        self.orthanc.close()
        self.engine.dispose()
        log.info("worker stopped")


def main() -> int:
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    worker = Worker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    worker.run()
    return 0
