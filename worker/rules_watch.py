"""Hot reload of routing.yml: the last good rules stay active when a new file is invalid.

Each good load is written to `config_status` so the app can show the active rules and
the last reload time. A refused file is loud once, never a flood (issue 15): one log
line per distinct file content in each worker, one status and one audit entry per
distinct content across all workers (`config_status.error_checksum`), and a degraded
state in /health, `make status`, `./orthanc status` and the app's Overview
(core/rules_status.py). A worker that starts while the file is refused runs on the last
good rules recorded in `config_status`, not on none.

Only events that can change the file trigger a reload. Reading the file makes inotify
report `opened` and `closed_no_write`; reacting to those made every reload trigger the
next, which wrote 'routing rules refused' 9,319 times in 81 s (and kept a core busy
re-reading even a valid file).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from core import recorder
from core.recorder import audit
from core.rules import RulesError, RuleSet, RulesFile, parse_rules
from core.rules_status import STATUS_NAME, error_line, rules_problem
from core.states import AuditSource
from worker.metrics import RULES_REFUSED

log = logging.getLogger(__name__)
# watchdog event types that may mean new content (created, written, renamed over, removed).
RELOAD_EVENTS = frozenset({"created", "modified", "moved", "closed", "deleted"})
# Editors write a file in several steps; reload once it has been quiet this long.
SETTLE_S = 0.3


class RulesHolder:
    """Holds the active RuleSet; `reload()` swaps it only when the file is valid."""

    def __init__(self, path: Path, engine: Engine):
        self.path = path
        self.engine = engine
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # the watcher and the main loop may both reload
        self._rules = RuleSet()
        self._checksum: str | None = None  # content of the active rules
        self._refused: str | None = None  # content whose refusal is recorded in the database
        self._logged: str | None = None  # content whose refusal this process has logged
        self.last_error: str | None = None
        self.loaded_at: datetime | None = None  # when the active rules were loaded (None: no rules)

    @property
    def rules(self) -> RuleSet:
        with self._lock:
            return self._rules

    def problem(self, zone: ZoneInfo) -> str | None:
        """'routing.yml refused at line N, running on rules of HH:MM', or None when all is well."""
        return rules_problem(self.last_error, self.loaded_at, zone, file_name=self.path.name)

    def reload(self) -> bool:
        """Load the file; True when new rules became active.

        A content already refused and recorded is not parsed, logged or written again.
        """
        with self._reload_lock:
            now = datetime.now(UTC)
            try:
                content = self.path.read_text(encoding="utf-8")
            except OSError as exc:
                return self._refuse(f"{self.path.name}: cannot read: {exc.strerror}", f"unreadable:{exc.errno}", now)
            checksum = hashlib.sha256(content.encode()).hexdigest()
            if checksum == self._checksum and self.last_error is None:
                return False
            if checksum == self._refused:  # refused and recorded already: stay quiet
                return False
            try:
                rules = parse_rules(content, self.path.name)
            except RulesError as exc:
                return self._refuse(str(exc), checksum, now)
            with self.engine.begin() as conn:
                recorder.config_loaded(conn, STATUS_NAME, at=now, checksum=checksum,
                                       content=[r.model_dump() for r in rules.rules])
            with self._lock:
                self._rules, self.last_error, self.loaded_at = rules, None, now
            # Only once recorded: a failed write is retried by the next reload.
            self._checksum, self._refused, self._logged = checksum, None, None
            RULES_REFUSED.set(0)
            log.info("routing rules loaded", extra={"fields": {"rules": len(rules.rules), "checksum": checksum[:12]}})
            return True

    def _refuse(self, error: str, key: str, now: datetime) -> bool:
        """Keep the last good rules; log, record and audit this content's refusal once."""
        if key == self._refused:  # an unreadable file, seen again
            return False
        if self._checksum is None and self.loaded_at is None:
            self._restore_last_good()
        self.last_error = error
        RULES_REFUSED.set(1)
        if key != self._logged:
            self._logged = key
            log.error("routing rules refused; keeping the last good rules",
                      extra={"fields": {"error": error, "running_on": self.loaded_at.isoformat()
                                        if self.loaded_at else None}})
        with self.engine.begin() as conn:
            # False when another worker recorded this very content already
            if recorder.config_refused(conn, STATUS_NAME, at=now, error=error, key=key):
                audit(conn, actor="worker", source=AuditSource.WORKER, action="rules.refused", target=self.path.name,
                      after={"error": error[:2000], "line": error_line(error), "checksum": key[:12],
                             "running_on": self.loaded_at})
        self._refused = key
        return False

    def _restore_last_good(self) -> None:
        """At start-up with a refused file: run on the rules config_status last recorded as good."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(text("SELECT loaded_at, checksum, content FROM config_status WHERE name = :n"),
                                   {"n": STATUS_NAME}).first()
        except SQLAlchemyError:
            return
        if row is None or row.content is None or row.loaded_at is None:
            return
        try:
            rules = RuleSet(list(RulesFile.model_validate({"rules": row.content}).rules))
        except ValidationError:
            log.warning("the last good routing rules in config_status no longer validate; running on none")
            return
        with self._lock:
            self._rules, self.loaded_at = rules, row.loaded_at
        self._checksum = row.checksum
        log.warning("routing rules restored from the last good load",
                    extra={"fields": {"rules": len(rules.rules), "loaded_at": row.loaded_at.isoformat()}})



class _Handler(FileSystemEventHandler):
    """Reloads once the rules file has been quiet for SETTLE_S after an event that may change it."""

    def __init__(self, holder: RulesHolder):
        self.holder = holder
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in RELOAD_EVENTS:  # opened / closed_no_write: our own reads
            return
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if str(self.holder.path) not in paths:
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(SETTLE_S, self._reload)
            self._timer.daemon = True
            self._timer.start()

    def _reload(self) -> None:
        try:
            self.holder.reload()
        except SQLAlchemyError as exc:  # the next change, or the worker's restart, records it
            log.warning("routing rules status not recorded: database unavailable",
                        extra={"fields": {"error": type(getattr(exc, "orig", exc)).__name__}})


def watch(holder: RulesHolder) -> BaseObserver:
    """Start watching the rules file's directory (editors replace files by rename)."""
    observer = Observer()
    observer.schedule(_Handler(holder), str(holder.path.parent), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
