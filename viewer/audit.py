"""Who opened which study, and when: one audit entry per study per session and minute.

OHIF reads a study with dozens to thousands of requests (a search, the series, their
metadata, every frame). The first read of a study in a session writes one entry
through core.recorder.audit, source `viewer`:

    actor      the user name
    action     viewer.study_open
    target     study:<the hub's study id>, or study_uid:<UID> for a study the hub has not recorded
    after      {"study_instance_uid", "study_id", "session"}  (session: the first 12 hex digits of
               the session's SHA-256, as stored in app_sessions.id_hash)
    at         when (the audit log's own column)

Further reads of the same study in the same session write nothing for WINDOW_S (60 s)
after that entry; a read after that writes a new one, so a study kept open and read
again later is recorded again. A search across studies (QIDO-RS without a
StudyInstanceUID, which lists patients) is recorded the same way as `viewer.search`,
with its level and the names (not the values) of its filters.

The entry is written *before* the data is forwarded: when it cannot be written the read
is refused (503), so no study is shown unrecorded. Concurrent first reads of a study wait
for the one write. The memory of what was recorded lives in the gateway's process: after
a restart the next read of an open study writes one more entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from core.recorder import audit
from core.states import AuditSource

WINDOW_S = 60.0
MAX_KEYS = 50_000
ACTION_OPEN = "viewer.study_open"
ACTION_SEARCH = "viewer.search"


class StudyAudit:
    def __init__(self, engine: Engine, *, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.window_s = window_s
        self.clock = clock
        self._recorded: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def record(self, username: str, session_key: str, study_uid: str | None, *,
                     level: str = "studies", filters: tuple[str, ...] = ()) -> None:
        """Make sure this read is on record (an entry within the window); raises if it cannot be written."""
        key = (session_key, study_uid or f"search:{level}")
        last = self._recorded.get(key)
        if last is not None and self.clock() - last < self.window_s:
            return
        task = self._pending.get(key)
        if task is None:  # the first read: write; concurrent reads of the same study wait for this write
            task = asyncio.create_task(self._record(key, username, session_key, study_uid, level, filters))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, even if nobody waits
            self._pending[key] = task
        await asyncio.shield(task)  # a client that goes away does not cancel the write

    async def _record(self, key: tuple[str, str], username: str, session_key: str, study_uid: str | None,
                      level: str, filters: tuple[str, ...]) -> None:
        try:
            await run_in_threadpool(self._write, username, session_key, study_uid, level, filters)
            self._remember(key)
        finally:
            self._pending.pop(key, None)

    def _remember(self, key: tuple[str, str]) -> None:
        now = self.clock()
        if len(self._recorded) >= MAX_KEYS:
            self._recorded = {k: t for k, t in self._recorded.items() if now - t < self.window_s}
        self._recorded[key] = now

    def _write(self, username: str, session_key: str, study_uid: str | None, level: str,
               filters: tuple[str, ...]) -> None:
        session = session_key[:12]
        with self.engine.begin() as conn:
            if study_uid is None:
                audit(conn, actor=username, source=AuditSource.VIEWER, action=ACTION_SEARCH, target=None,
                      after={"level": level, "filters": sorted(set(filters)), "session": session})
                return
            study_id = conn.execute(text("SELECT id FROM studies WHERE study_uid = :uid"),
                                    {"uid": study_uid}).scalar()
            after: dict[str, Any] = {"study_instance_uid": study_uid, "study_id": study_id, "session": session}
            target = f"study:{study_id}" if study_id is not None else f"study_uid:{study_uid}"
            audit(conn, actor=username, source=AuditSource.VIEWER, action=ACTION_OPEN, target=target, after=after)
