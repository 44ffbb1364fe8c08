"""The worker's retention thread: every RETENTION_CHECK_S, one worker deletes what core/retention.py says.

Every worker runs one; only the holder of the advisory lock RETENTION_LOCK_KEY (a
session lock on a connection of its own, like the alerter's: when its worker dies,
PostgreSQL frees it and another takes over) runs retention, so two workers never
delete the same studies and an operator's `./orthanc retention --run` waits its turn.
It is a thread of its own, not a step of the main loop: a large first run (thousands of
studies past their days) must not hold up the tailer. With no policy set (no days,
no disk watermark, no rule keep_days) it reads nothing and deletes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core import retention
from core.orthanc_client import OrthancClient
from core.settings import Settings
from core.states import AuditSource
from worker.alerter import Lease
from worker.metrics import RETENTION_PURGED

log = logging.getLogger(__name__)
ACTOR = "worker"


class Retention:
    def __init__(self, settings: Settings, engine: Engine, orthanc: OrthancClient, lease: Lease,
                 clock: Callable[[], datetime] | None = None):
        self.settings = settings
        self.engine = engine
        self.orthanc = orthanc
        self.lease = lease
        self.clock = clock  # the policy's clock; None: the real one

    def enabled(self) -> bool:
        """Whether any policy can delete: days, the disk watermark, or a rule's keep_days."""
        s = self.settings
        if s.retention_days_after_delivery or s.retention_disk_low_mb:
            return True
        with self.engine.connect() as conn:
            return bool(retention.rule_keep_days(conn, s))

    def run_forever(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(self.settings.retention_check_s):
                try:
                    self.run_once(stop)
                except DBAPIError as exc:
                    log.warning("retention skipped: database unavailable",
                                extra={"fields": {"error": type(exc.orig).__name__ if exc.orig else type(exc).__name__}})
                except Exception:  # retention must never stop routing
                    log.exception("retention run failed; trying again at the next one")
        finally:
            self.lease.release()

    def run_once(self, stop: threading.Event | None = None) -> retention.RunResult | None:
        """One run when this worker holds the lease and a policy is set; None otherwise."""
        if not self.lease.held() or not self.enabled():
            return None
        result = retention.run(self.engine, self.orthanc, self.settings, actor=ACTOR, source=AuditSource.WORKER,
                               now=self.clock() if self.clock else None,
                               stop=(stop.is_set if stop is not None else lambda: False))
        RETENTION_PURGED.inc(len(result.purged))
        if result.purged or result.failed:
            log.info("retention run", extra={"fields": result.summary()})
        return result
