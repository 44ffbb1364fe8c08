"""The app's login form, logout and session cookie, served beside Streamlit by app/server.py.

Why HTTP routes and not a Streamlit form: a Streamlit script talks to the browser over a
websocket and cannot set a cookie, and a cookie written by JavaScript (the
"cookie manager" components) cannot be HttpOnly, so any script that got into the page
could read it. Streamlit 1.67 runs on Starlette, and `st.App` (app/server.py) mounts
routes in the same process and on the same port as the app, so the simplest robust
design needs no proxy and no extra service:

- `GET /login` answers a small HTML form; `POST /login` checks the password with
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

import hmac
import html
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.context import get_engine, get_settings
from core.auth import SESSION_COOKIE, authenticate, end_session, session_user, start_session
from core.recorder import audit
from core.states import AuditSource

log = logging.getLogger("hub.app.auth")

COOKIE = SESSION_COOKIE  # shared with the OHIF gateway on OHIF_PORT (viewer/login.py)
CSRF_COOKIE = "hub_login_csrf"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
MAX_FORM_BYTES = 8192
MAX_NEXT_CHARS = 2000
# Paths that are never a page: Streamlit's own (its API, assets, media, components) and ours.
NOT_PAGES = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/", "/auth/", LOGIN_PATH, LOGOUT_PATH)
# Why the login form is shown, by the `reason` of /login?reason=...: fixed texts, nothing reflected.
REASONS = {
    "expired": "Your session has ended (it was idle too long, reached its time limit, or was ended). "
               "Please log in again.",
    "logged_out": "You have logged out.",
    "unavailable": "The database cannot be reached, so no login can be checked now. Try again shortly.",
}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_mounted = False


def mounted() -> bool:
    """Whether this process serves /login (started through app/server.py, not app/main.py alone)."""
    return _mounted


def routes() -> list[Route]:
    """The /login and /logout routes, for st.App (app/server.py)."""
    global _mounted
    _mounted = True
    return [
        Route(LOGIN_PATH, login, methods=["GET", "POST"]),
        Route(LOGOUT_PATH, logout, methods=["GET", "POST"]),
    ]


def safe_next(value: str | None) -> str:
    """A same-site path to return to after logging in; anything else (another host, a scheme,
    the login pages themselves, control characters) becomes "/"."""
    if not value or len(value) > MAX_NEXT_CHARS or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in (LOGIN_PATH, LOGOUT_PATH):
        return "/"
    return value


def login_url(next_url: str | None = None, reason: str | None = None) -> str:
    params = {"next": safe_next(next_url)} if next_url and safe_next(next_url) != "/" else {}
    if reason in REASONS:
        params["reason"] = str(reason)
    return LOGIN_PATH + ("?" + urlencode(params) if params else "")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(response: Response, name: str, value: str, max_age: int, *, secure: bool, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict")


def _clear_cookie(response: Response, name: str, *, secure: bool, path: str = "/") -> None:
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="strict")


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


# --- the form ---------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Routing hub</title>
<style>
body {{ font-family: sans-serif; background: #f6f7f9; color: #1f2328; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.6rem; margin: 0 0 .25rem; }}
p.hint {{ color: #59636e; margin: 0 0 1.25rem; }}
label {{ display: block; font-weight: 600; margin: .75rem 0 .25rem; }}
input[type=text], input[type=password] {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem;
       border: 1px solid #c8ccd1; border-radius: 4px; }}
button {{ margin-top: 1.25rem; width: 100%; padding: .6rem; font-size: 1rem; color: #fff; background: #0b6e99;
       border: 0; border-radius: 4px; cursor: pointer; }}
.msg {{ padding: .6rem .75rem; border-radius: 4px; margin-bottom: 1rem; }}
.info {{ background: #e7f3fb; }} .error {{ background: #fdecea; color: #8a1c12; }}
</style></head>
<body><main>
<h1>Routing hub</h1>
<p class="hint">Log in to the operations app.</p>
{message}
<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<input type="hidden" name="csrf" value="{csrf}">
<label for="username">User name</label>
<input id="username" name="username" type="text" autocomplete="username" value="{username}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
</form>
</main></body></html>
"""


def _form(request: Request, next_url: str, *, info: str = "", error: str = "", username: str = "",
          status: int = 200) -> HTMLResponse:
    csrf = secrets.token_urlsafe(24)
    message = ""
    if error:
        message = f'<div class="msg error" role="alert">{html.escape(error)}</div>'
    elif info:
        message = f'<div class="msg info" role="status">{html.escape(info)}</div>'
    body = _PAGE.format(message=message, action=LOGIN_PATH, next=html.escape(next_url, quote=True),
                        csrf=html.escape(csrf, quote=True), username=html.escape(username, quote=True))
    response = HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)
    _set_cookie(response, CSRF_COOKIE, csrf, 3600, secure=_secure(request), path=LOGIN_PATH)
    return response


async def _form_fields(request: Request) -> dict[str, str] | None:
    """The url-encoded form, or None when it is too large or not a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
    return {key: values[0] for key, values in parsed.items() if values}


def _check_login(username: str, password: str, previous: str | None) -> tuple[str | None, str]:
    """(raw session id, "") after a good login, else (None, message for the form). Commits either way:
    a failed attempt must be counted and audited. A session the browser still held is ended:
    a login always starts a new one (no id chosen before the login survives it)."""
    settings = get_settings()
    with get_engine().begin() as conn:
        result = authenticate(conn, username, password, source=AuditSource.UI)
        if result.user is None:
            return None, result.message
        if previous:
            end_session(conn, previous)
        return start_session(conn, result.user.username, ttl_s=settings.app_session_ttl), ""


async def login(request: Request) -> Response:
    if request.method == "GET":
        next_url = safe_next(request.query_params.get("next"))
        return _form(request, next_url, info=REASONS.get(request.query_params.get("reason") or "", ""))
    fields = await _form_fields(request)
    if fields is None:
        return _form(request, "/", error="The login form could not be read. Please try again.", status=400)
    next_url = safe_next(fields.get("next"))
    username = fields.get("username", "").strip()
    token, cookie = fields.get("csrf", ""), request.cookies.get(CSRF_COOKIE, "")
    if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
        return _form(request, next_url, error="The login form expired. Please enter your password again.",
                     username=username, status=400)
    password = fields.get("password", "")
    if not username or not password:
        return _form(request, next_url, error="Enter your user name and password.", username=username)
    try:
        raw, message = await run_in_threadpool(_check_login, username, password, request.cookies.get(COOKIE))
    except SQLAlchemyError as exc:
        log.warning("login failed: database error %s", type(exc).__name__)
        return _form(request, next_url, error=REASONS["unavailable"], username=username, status=503)
    if raw is None:
        return _form(request, next_url, error=message, username=username)
    response = _redirect(next_url)
    _set_cookie(response, COOKIE, raw, get_settings().app_session_ttl, secure=_secure(request))
    _clear_cookie(response, CSRF_COOKIE, secure=_secure(request), path=LOGIN_PATH)
    return response


def end_and_audit(raw_id: str) -> None:
    """End a session and audit the logout (once: an ended session is not ended again)."""
    with get_engine().begin() as conn:
        username = end_session(conn, raw_id)
        if username:
            audit(conn, actor=username, source=AuditSource.UI, action="auth.logout", target=f"user:{username}")


async def logout(request: Request) -> Response:
    raw = request.cookies.get(COOKIE)
    response = _redirect(login_url(reason="logged_out"))
    if raw:
        try:
            await run_in_threadpool(end_and_audit, raw)
        except SQLAlchemyError as exc:
            log.warning("logout: database error %s; the cookie is cleared anyway", type(exc).__name__)
        _clear_cookie(response, COOKIE, secure=_secure(request))
    return response


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
        response = _redirect(login_url(wanted, reason))
        if state == "ended":
            _clear_cookie(response, COOKIE, secure=_secure(request))
        await response(scope, receive, send)


def asgi_middleware() -> list[Any]:
    """The middleware list for st.App."""
    from starlette.middleware import Middleware

    return [Middleware(SessionGate)]
