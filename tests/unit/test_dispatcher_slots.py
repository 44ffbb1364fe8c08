"""The dispatcher fills free send slots and hands back what does not fit (pure slot logic)."""

from __future__ import annotations

from pathlib import Path

from core.envfile import ensure_env_file, read_env_file
from core.settings import DEFAULTS_FILE, settings_from_values
from worker.dispatcher import ClaimedJob, Dispatcher


class SlotOnlyDispatcher(Dispatcher):
    """Dispatcher whose database and thread pool are replaced by lists, to watch the slot logic."""

    def __init__(self, settings, claimable: list[ClaimedJob]):
        super().__init__(settings, engine=None, orthanc=None, worker_id="w")
        self.claimable = claimable
        self.released: list[int] = []
        self.submitted: list[list[int]] = []
        self.pool.submit = lambda _fn, batch: self.submitted.append([j.id for j in batch])  # type: ignore[method-assign]

    def claim(self, limit: int) -> list[ClaimedJob]:
        return self.claimable[:limit]

    def _release(self, job_ids: list[int]) -> None:
        self.released.extend(job_ids)


def settings(tmp_path: Path, **overrides: str):
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    values = read_env_file(DEFAULTS_FILE) | read_env_file(env) | overrides
    return settings_from_values(values)


def test_retries_beyond_the_free_slots_are_handed_back(tmp_path):
    retries = [ClaimedJob(i, i, "PACS", "delivery", None, 1) for i in range(1, 8)]
    dispatcher = SlotOnlyDispatcher(settings(tmp_path, WORKER_CONCURRENCY="3", SEND_BATCH="5"), retries)
    assert dispatcher.tick() == 3
    assert dispatcher.submitted == [[1], [2], [3]]
    assert dispatcher.released == [4, 5, 6, 7]
    assert dispatcher.inflight == {1, 2, 3}


def test_first_sends_share_a_slot(tmp_path):
    fresh = [ClaimedJob(i, i, "PACS", "delivery", None, 0) for i in range(1, 8)]
    dispatcher = SlotOnlyDispatcher(settings(tmp_path, WORKER_CONCURRENCY="2", SEND_BATCH="5"), fresh)
    assert dispatcher.tick() == 7
    assert dispatcher.submitted == [[1, 2, 3, 4, 5], [6, 7]] and dispatcher.released == []
