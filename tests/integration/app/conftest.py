"""Fixtures for the app's AppTest suite: a fresh QI database, real Orthanc, seeded users.

Pages run in-process through streamlit.testing.v1.AppTest from app/main.py, so
navigation, the login gate and the role checks are the real ones. The app reads its
settings from HUB_ENV_FILE and caches the engine and clients per process, so each
test points HUB_ENV_FILE at its own database and clears those caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine, text
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from core import auth
from core.db import make_engine
from core.settings import PROJECT_ROOT, Settings, settings_from_values
from testkit import app_flows
from testkit.harness.stack import OrthancServer, QiDatabase, write_env

MAIN = PROJECT_ROOT / "app" / "main.py"
# One user per role (not named after APP_ADMIN_USERNAME, which ensure_admin creates).
USERS = {"viewer": "vera", "operator": "oscar", "admin": "ada"}
PASSWORDS = {"vera": "viewer-password-1", "oscar": "operator-password-1", "ada": "admin-password-01"}


def clear_app_caches() -> None:
    """Forget the cached settings, engine and clients of a previous test."""
    try:
        from app.context import get_engine

        get_engine().dispose()
    except Exception:  # noqa: BLE001 - nothing cached, or settings of a dropped database
        pass
    st.cache_resource.clear()
    st.cache_data.clear()


class AppEnv:
    """One test's app configuration: its .env, settings, engine and the Orthanc it talks to."""

    def __init__(self, qi_db: QiDatabase, orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch, tmp: Path):
        self.qi_db = qi_db
        self.orthanc = orthanc
        self.monkeypatch = monkeypatch
        self.tmp = tmp
        self.values: dict[str, str] = {}
        self.settings: Settings = qi_db.settings
        self.engine: Engine = make_engine(qi_db.url)
        self.use(qi_db.env_file)

    def use(self, env_file: Path) -> None:
        self.monkeypatch.setenv("HUB_ENV_FILE", str(env_file))
        clear_app_caches()

    def reconfigure(self, **overrides: str) -> Settings:
        """Write a .env with these overrides (e.g. a dead ORTHANC_WEB_PORT) and use it."""
        from core.envfile import read_env_file

        values = {**read_env_file(self.qi_db.env_file), **overrides}
        path = write_env(values, self.tmp / f"override-{len(overrides)}-{time.monotonic_ns()}.env")
        self.settings = settings_from_values({**_defaults(), **values})
        self.use(path)
        return self.settings

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def sql_exec(self, query: str, **params: Any) -> None:
        """A write the recorder has no function for (e.g. ageing a heartbeat)."""
        with self.engine.begin() as conn:
            conn.execute(text(query), params)

    def scalar(self, query: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).scalar()

    def audit(self, action: str) -> list[Any]:
        return self.sql("SELECT actor, source, action, target, before, after FROM audit_log "
                        "WHERE action = :a ORDER BY id", a=action)


def _defaults() -> dict[str, str]:
    from core.envfile import read_env_file
    from core.settings import DEFAULTS_FILE

    return read_env_file(DEFAULTS_FILE)


@pytest.fixture(autouse=True)
def navigation_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every AppTest run as the server runs all but its first: through app/main.py.

    AppTest resets Streamlit's "pages folder" flag before each run; the server's is
    switched off for good by the first st.navigation call (and by the app's own
    use_navigation_mode). Without this, every AppTest run would be a first run.
    """
    original = PagesManager.__init__

    def init(self: PagesManager, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def app_env(
    qi_db: QiDatabase, clean_orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[AppEnv]:
    env = AppEnv(qi_db, clean_orthanc, monkeypatch, tmp_path)
    with env.engine.begin() as conn:
        for role, username in USERS.items():
            auth.create_user(conn, username, PASSWORDS[username], role, actor="test", source="setup", rounds=4)
    try:
        yield env
    finally:
        clear_app_caches()
        env.engine.dispose()


@pytest.fixture
def flows(app_env: AppEnv) -> dict[str, app_flows.Flow]:
    """One study in each workflow state, recorded with core.recorder."""
    with app_env.engine.begin() as conn:
        return app_flows.standard_set(conn, datetime.now(UTC))


def open_session(username: str, **kwargs: Any) -> str:
    """A real app session for `username` (core.auth.start_session), as /login opens one; the raw id."""
    from app.context import get_engine, get_settings

    with get_engine().begin() as conn:
        return auth.start_session(conn, username, ttl_s=get_settings().app_session_ttl, **kwargs)


def recheck_due(at: AppTest) -> None:
    """Make the next run check the session in the database (it is re-checked every 2 s)."""
    from app.components.access import CHECKED_KEY, TOUCHED_KEY

    at.session_state[CHECKED_KEY] = at.session_state[TOUCHED_KEY] = 0.0


def new_app(role: str | None = None) -> AppTest:
    """The app from app/main.py, optionally with a session of that role's user logged in.

    AppTest has no browser to hold the cookie, so the raw session id goes where
    app.components.access.session_id looks when there is none; the session is checked
    against app_sessions exactly as the cookie's is.
    """
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    if role:
        at.session_state["_session_id"] = open_session(USERS[role])
    return at


@pytest.fixture
def open_page() -> Callable[..., AppTest]:
    """`open_page("studies", as_="viewer")`: a logged-in session on that page, rendered."""

    def go(page: str, as_: str = "admin") -> AppTest:
        at = new_app(as_)
        at.run()
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
        return at

    return go


def assert_clean(at: AppTest) -> None:
    """No uncaught exception rendered by the page."""
    assert not at.exception, [e.value for e in at.exception]


def frame_text(at: AppTest) -> str:
    """Everything the page's tables and texts show, for PHI and content checks."""
    parts: list[str] = []
    for df in at.dataframe:
        parts.append(df.value.to_csv())
    for kind in ("markdown", "caption", "title", "subheader", "info", "warning", "error", "success", "code"):
        parts.extend(str(e.value) for e in at.get(kind))
    return "\n".join(parts)


def study_no(row: dict[str, Any]) -> int:
    """The study number of a Studies row: its "Study #" cell links to the study (study_detail?study=N)."""
    return int(str(row["Study #"]).rsplit("=", 1)[-1])


def table_rows(at: AppTest, column: str) -> list[dict[str, Any]]:
    """Rows of the first table that has `column` (AppTest does not expose dataframe keys).

    A column of times is found by its name alone too: app.components.fmt.table adds the
    zone to its header ("Last used (America/Los_Angeles)"); the rows keep the full header.
    """
    for df in at.dataframe:
        if any(c == column or str(c).startswith(f"{column} (") for c in df.value.columns):
            return df.value.to_dict("records")
    raise AssertionError(f"no table with a {column!r} column; tables: {[list(d.value.columns) for d in at.dataframe]}")
