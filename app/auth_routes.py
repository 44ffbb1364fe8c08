"""The app's login form, logout and session cookie, served beside Streamlit by app/server.py.

Why HTTP routes and not a Streamlit form: a Streamlit script talks to the browser over a
websocket and cannot set a cookie, and a cookie written by JavaScript (the
"cookie manager" components) cannot be HttpOnly, so any script that got into the page
could read it. Streamlit 1.67 runs on Starlette, and `st.App` (app/server.py) mounts
routes in the same process and on the same port as the app, so the simplest robust
design needs no proxy and no extra service:

- `GET /login` answers a small HTML form (core/login_pages.py, shared with the OHIF
  gateway); `POST /login` checks the password with
  core.auth.authenticate (lockout and audit included), opens a session
  (core.auth.start_session) and sets the cookie itself: HttpOnly, SameSite=Strict,
  Path=/, Max-Age APP_SESSION_TTL, Secure when the request came over HTTPS. The cookie
  holds 256 random bits; the database keeps only their SHA-256. The form is protected
  against cross-site posting by a double-submit token (its own SameSite=Strict cookie).
- `GET /logout` ends the session in the database and clears the cookie.
- `SessionGate` stands in front of page requests (a browser asking for HTML): without a
  live session it answers 303 to `/login?next=<the page and its query>`, so that the
  user lands back on e.g. /study_detail?study=14 after logging in.

The Streamlit script reads the cookie back with st.context.cookies and checks it
against app_sessions on every run (app/components/access.py): the database, not the
cookie, says who is logged in, so a revoked, expired or idle session is refused
wherever it is presented.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.context import get_engine, get_settings
from core.auth import SESSION_COOKIE, session_user
from core.login_pages import LOGIN_PATH, LOGOUT_PATH, LoginPages, clear_cookie, is_secure, redirect
from core.states import AuditSource

log = logging.getLogger("hub.app.auth")

COOKIE = SESSION_COOKIE  # shared with the OHIF gateway on OHIF_PORT (viewer/login.py)
CSRF_COOKIE = "hub_login_csrf"
# Paths that are never a page: Streamlit's own (its API, assets, media, components) and ours.
NOT_PAGES = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/", "/auth/", LOGIN_PATH, LOGOUT_PATH)
PAGES = LoginPages(title="Routing hub", hint="Log in to the operations app.", csrf_cookie=CSRF_COOKIE,
                   source=AuditSource.UI, engine=get_engine, settings=get_settings, log=log)
safe_next = PAGES.safe_next
login_url = PAGES.login_url
end_and_audit = PAGES.end_and_audit
_mounted = False


def mounted() -> bool:
    """Whether this process serves /login (started through app/server.py, not app/main.py alone)."""
    return _mounted


def routes() -> list[Route]:
    """The /login and /logout routes (core/login_pages.py), for st.App (app/server.py)."""
    global _mounted
    _mounted = True
    return [
        Route(LOGIN_PATH, PAGES.login, methods=["GET", "POST"]),
        Route(LOGOUT_PATH, PAGES.logout, methods=["GET", "POST"]),
    ]


# --- the gate ---------------------------------------------------------------------------


def _session_state(raw_id: str) -> str:
    """"live", "ended" or "unavailable" (the database did not answer). A page load is the
    user's activity, so it refreshes the session's last_seen_at."""
    settings = get_settings()
    try:
        with get_engine().begin() as conn:
            user = session_user(conn, raw_id, idle_timeout_s=settings.app_idle_timeout)
    except SQLAlchemyError as exc:
        log.warning("session check failed: database error %s", type(exc).__name__)
        return "unavailable"
    return "live" if user is not None else "ended"


def _is_page(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    if path.startswith(NOT_PAGES) or path in (LOGIN_PATH, LOGOUT_PATH):
        return False
    accept = dict(scope.get("headers") or []).get(b"accept", b"")
    return b"text/html" in accept


class SessionGate:
    """ASGI middleware: a page request without a live session goes to the login form.

    Only navigations (GET/HEAD asking for HTML) are gated; Streamlit's websocket, API and
    assets pass untouched, and the script checks the session itself on every run.
    """

    def __init__(self, app: ASGIApp, check: Callable[[str], str] | None = None) -> None:
        self.app = app
        self.check = check or _session_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_page(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        raw = request.cookies.get(COOKIE)
        state = await run_in_threadpool(self.check, raw) if raw else "none"
        if state == "live":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        wanted = scope["path"] + ("?" + query if query else "")
        reason = {"ended": "expired", "unavailable": "unavailable"}.get(state)
        response = redirect(login_url(wanted, reason))
        if state == "ended":
            clear_cookie(response, COOKIE, secure=is_secure(request))
        await response(scope, receive, send)


def asgi_middleware() -> list[Any]:
    """The middleware list for st.App."""
    from starlette.middleware import Middleware

    return [Middleware(SessionGate)]
