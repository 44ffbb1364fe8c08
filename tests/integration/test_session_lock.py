"""worker.main.SessionLock against a real PostgreSQL: released means another session can take it."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from core.db import make_engine
from testkit.harness.stack import QiDatabase
from worker.main import SessionLock

pytestmark = pytest.mark.integration

KEY = 0x0A7C_7E57


def test_a_released_lock_is_free_for_another_session_even_on_a_pooled_engine(db: Engine, qi_db: QiDatabase) -> None:
    other = make_engine(qi_db.url)
    try:
        mine, theirs = SessionLock(db, KEY), SessionLock(other, KEY)
        assert mine.held()
        assert mine.held()  # held again: the same session, no second lock
        assert not theirs.held()
        mine.release()
        assert theirs.held(), "the released lock stayed with the connection returned to the pool"
        assert not mine.held()
        theirs.release()
    finally:
        other.dispose()
