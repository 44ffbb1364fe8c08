"""Hot reload of routing.yml: the last good rules stay active when a new file is invalid.

Each load (good or bad) is written to `config_status` so the app can show the active
rules, the last reload time and the current error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from hub.jsonutil import jsonable
from worker.rules import RulesError, RuleSet, parse_rules

log = logging.getLogger(__name__)
STATUS_NAME = "routing_rules"


class RulesHolder:
    """Holds the active RuleSet; `reload()` swaps it only when the file is valid."""

    def __init__(self, path: Path, engine: Engine):
        self.path = path
        self.engine = engine
        self._lock = threading.Lock()
        self._rules = RuleSet()
        self._checksum: str | None = None
        self.last_error: str | None = None

    @property
    def rules(self) -> RuleSet:
        with self._lock:
            return self._rules

    def reload(self) -> bool:
        """Load the file; True when new rules became active."""
        now = datetime.now(UTC)
        try:
            content = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            return self._refuse(f"{self.path}: cannot read: {exc.strerror}", now)
        checksum = hashlib.sha256(content.encode()).hexdigest()
        if checksum == self._checksum and self.last_error is None:
            return False
        try:
            rules = parse_rules(content, self.path.name)
        except RulesError as exc:
            return self._refuse(str(exc), now)
        with self._lock:
            self._rules, self.last_error = rules, None
        self._write_status(
            "UPDATE config_status SET loaded_at = :now, checksum = :sum, error = NULL, error_at = NULL, "
            "content = CAST(:content AS jsonb) WHERE name = :name",
            {"now": now, "sum": checksum, "content": jsonable([r.model_dump() for r in rules.rules])},
        )
        self._checksum = checksum  # only once recorded: a failed write is retried by the next reload
        log.info("routing rules loaded", extra={"fields": {"rules": len(rules.rules), "checksum": checksum[:12]}})
        return True

    def _refuse(self, error: str, now: datetime) -> bool:
        self.last_error = error
        self._write_status(
            "UPDATE config_status SET error = :err, error_at = :now WHERE name = :name",
            {"err": error, "now": now},
        )
        log.error("routing rules refused; keeping the last good rules", extra={"fields": {"error": error}})
        return False

    def _write_status(self, update: str, params: dict[str, object]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO config_status (name) VALUES (:name) ON CONFLICT DO NOTHING"),
                {"name": STATUS_NAME},
            )
            conn.execute(text(update), {**params, "name": STATUS_NAME})


class _Handler(FileSystemEventHandler):
    def __init__(self, holder: RulesHolder):
        self.holder = holder

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if str(self.holder.path) in paths:
            self.holder.reload()


def watch(holder: RulesHolder) -> Observer:
    """Start watching the rules file's directory (editors replace files by rename)."""
    observer = Observer()
    observer.schedule(_Handler(holder), str(holder.path.parent), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
