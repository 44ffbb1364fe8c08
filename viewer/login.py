"""The gateway's login form and logout: the app's accounts, the app's session.

The session is the app's (core.auth: start_session, session_user, end_session over
app_sessions) and so is its cookie, SESSION_COOKIE: a browser sends a host's cookies to
every port of that host, so a user logged in to the app on OPERATOR_UI_PORT opens the
viewer without logging in again, and a login here also logs in to the app. The form is
the app's in its essentials (app/auth_routes.py): no script, a double-submit token
against cross-site posts (its own cookie, named apart from the app's so the two forms
never overwrite each other's), the password checked by core.auth.authenticate (lockout,
audit with source `viewer`), a new session at each login, and a return only to a path
of this gateway.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from core.auth import SESSION_COOKIE, authenticate, end_session, start_session
from core.recorder import audit
from core.settings import Settings
from core.states import AuditSource

log = logging.getLogger("viewer.login")

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
CSRF_COOKIE = "hub_viewer_csrf"
MAX_FORM_BYTES = 8192
MAX_NEXT_CHARS = 2000
REASONS = {
    "expired": "Your session has ended (it was idle too long, reached its time limit, or was ended). "
               "Please log in again.",
    "logged_out": "You have logged out.",
    "unavailable": "The database cannot be reached, so no login can be checked now. Try again shortly.",
}
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Study viewer</title>
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
<h1>Study viewer</h1>
<p class="hint">Log in with your routing hub account.</p>
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


def safe_next(value: str | None) -> str:
    """A path of this gateway to return to after logging in; anything else becomes the viewer's root."""
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


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def set_cookie(response: Response, name: str, value: str, max_age: int, *, secure: bool, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict")


def clear_cookie(response: Response, name: str, *, secure: bool, path: str = "/") -> None:
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="strict")


class LoginRoutes:
    """GET/POST /login and /logout, over the hub's database."""

    def __init__(self, settings: Settings, engine: Engine, forget: Callable[[str], None]) -> None:
        self.settings = settings
        self.engine = engine
        self.forget = forget  # drops a session from the gateway's cache of checked sessions

    def _form(self, request: Request, next_url: str, *, info: str = "", error: str = "", username: str = "",
              status: int = 200) -> HTMLResponse:
        csrf = secrets.token_urlsafe(24)
        message = ""
        if error:
            message = f'<div class="msg error" role="alert">{html.escape(error)}</div>'
        elif info:
            message = f'<div class="msg info" role="status">{html.escape(info)}</div>'
        body = _PAGE.format(message=message, action=LOGIN_PATH, next=html.escape(next_url, quote=True),
                            csrf=html.escape(csrf, quote=True), username=html.escape(username, quote=True))
        response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
        set_cookie(response, CSRF_COOKIE, csrf, 3600, secure=request.url.scheme == "https", path=LOGIN_PATH)
        return response

    async def _fields(self, request: Request) -> dict[str, str] | None:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return None
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
        return {key: values[0] for key, values in parsed.items() if values}

    def _check(self, username: str, password: str, previous: str | None) -> tuple[str | None, str]:
        """(raw session id, "") after a good login, else (None, message). Commits either way."""
        with self.engine.begin() as conn:
            result = authenticate(conn, username, password, source=AuditSource.VIEWER)
            if result.user is None:
                return None, result.message
            if previous:
                end_session(conn, previous)
            return start_session(conn, result.user.username, ttl_s=self.settings.app_session_ttl), ""

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._form(request, safe_next(request.query_params.get("next")),
                              info=REASONS.get(request.query_params.get("reason") or "", ""))
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "GET, POST"})
        fields = await self._fields(request)
        if fields is None:
            return self._form(request, "/", error="The login form could not be read. Please try again.", status=400)
        next_url = safe_next(fields.get("next"))
        username = fields.get("username", "").strip()
        token, cookie = fields.get("csrf", ""), request.cookies.get(CSRF_COOKIE, "")
        if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
            return self._form(request, next_url, error="The login form expired. Please enter your password again.",
                              username=username, status=400)
        password = fields.get("password", "")
        if not username or not password:
            return self._form(request, next_url, error="Enter your user name and password.", username=username)
        previous = request.cookies.get(SESSION_COOKIE)
        try:
            raw, message = await run_in_threadpool(self._check, username, password, previous)
        except SQLAlchemyError as exc:
            log.warning("login failed: database error %s", type(exc).__name__)
            return self._form(request, next_url, error=REASONS["unavailable"], username=username, status=503)
        if raw is None:
            return self._form(request, next_url, error=message, username=username)
        if previous:
            self.forget(previous)
        secure = request.url.scheme == "https"
        response = redirect(next_url)
        set_cookie(response, SESSION_COOKIE, raw, self.settings.app_session_ttl, secure=secure)
        clear_cookie(response, CSRF_COOKIE, secure=secure, path=LOGIN_PATH)
        return response

    def _end(self, raw_id: str) -> None:
        with self.engine.begin() as conn:
            username = end_session(conn, raw_id)
            if username:
                audit(conn, actor=username, source=AuditSource.VIEWER, action="auth.logout",
                      target=f"user:{username}")

    async def logout(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return Response(status_code=405, headers={"Allow": "GET, POST"})
        raw = request.cookies.get(SESSION_COOKIE)
        response = redirect(login_url(reason="logged_out"))
        if raw:
            self.forget(raw)
            try:
                await run_in_threadpool(self._end, raw)
            except SQLAlchemyError as exc:
                log.warning("logout: database error %s; the cookie is cleared anyway", type(exc).__name__)
            clear_cookie(response, SESSION_COOKIE, secure=request.url.scheme == "https")
        return response
