"""The worker's watch on DICOM_STORAGE: /health item, /metrics gauges, one log line per change.

The worker runs beside Orthanc (natively on the same host; in compose with the storage
mounted read-only), so it measures the filesystem itself rather than asking Orthanc,
which has no free-space figure in 1.10.1.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from core.disk import StorageStatus, storage_status
from worker.metrics import STORAGE_FREE, STORAGE_TOTAL

log = logging.getLogger(__name__)


class StorageWatch:
    """Measures on demand; logs a warning when the storage turns low, not at every poll."""

    def __init__(self, path: Path, warn_below_mb: int):
        self.path = path
        self.warn_below_mb = warn_below_mb
        self._lock = threading.Lock()
        self._last: str | None = None

    def check(self) -> StorageStatus:
        status = storage_status(self.path, self.warn_below_mb)
        if status.free_bytes is not None and status.total_bytes is not None:
            STORAGE_FREE.set(status.free_bytes)
            STORAGE_TOTAL.set(status.total_bytes)
        with self._lock:
            previous, self._last = self._last, status.status
        fields = {"fields": {"storage": status.status, "free_bytes": status.free_bytes}}
        if status.status != previous and not status.ok:
            log.warning(status.message, extra=fields)
        elif status.ok and previous not in (None, "ok"):
            log.info("DICOM_STORAGE has enough free space again", extra=fields)
        return status
