"""Structured (JSON lines) logging for the worker and the stack scripts.

Log records carry identifiers (Orthanc ids, job ids, destinations), never patient
names or other demographics: callers pass `extra={"fields": {...}}` with safe values.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            # UTC with a 'Z', like Orthanc's lines (ops/logredact.py) and PostgreSQL's (log_timezone).
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "pynetdicom", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
