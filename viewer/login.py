"""The gateway's login form and logout: the app's accounts, the app's session.

The session is the app's (core.auth: start_session, session_user, end_session over
app_sessions) and so is its cookie, SESSION_COOKIE: a browser sends a host's cookies to
every port of that host, so a user logged in to the app on OPERATOR_UI_PORT opens the
viewer without logging in again, and a login here also logs in to the app. The form is
the app's (core/login_pages.py), with this gateway's title, its own double-submit
cookie (named apart from the app's so the two forms never overwrite each other's),
audit source `viewer`, and a logout that also drops the session from the gateway's
cache of checked sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from core.login_pages import LoginPages
from core.settings import Settings
from core.states import AuditSource

log = logging.getLogger("viewer.login")

CSRF_COOKIE = "hub_viewer_csrf"


def login_pages(settings: Settings, engine: Engine, forget: Callable[[str], None]) -> LoginPages:
    """GET/POST /login and /logout of the gateway; `forget` drops a session from its cache."""
    return LoginPages(title="Study viewer", hint="Log in with your routing hub account.", csrf_cookie=CSRF_COOKIE,
                      source=AuditSource.VIEWER, engine=lambda: engine, settings=lambda: settings, log=log,
                      forget=forget)
