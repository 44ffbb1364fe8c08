"""The login form and logout that the app (app/auth_routes.py) and the OHIF gateway (viewer/login.py) serve.

One form for both, so a fix to either is a fix to both: no script, security headers that
let the page reach nothing, a double-submit token against cross-site posts (its own
SameSite=Strict cookie, named per surface so the two forms never overwrite each other's
token), the password checked by core.auth.authenticate (lockout and audit, with the
surface's AuditSource), a new session at each login (the one the browser held is ended),
and a return only to a path of the same server. The session and its cookie,
SESSION_COOKIE, are the app's (core.auth): a browser sends a host's cookies to every port
of that host, so one login serves the app and the viewer.

Starlette, not FastAPI or Streamlit: the app mounts these routes beside Streamlit (which
runs on Starlette) and the gateway is a Starlette application.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
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

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
MAX_FORM_BYTES = 8192
MAX_NEXT_CHARS = 2000
CSRF_MAX_AGE_S = 3600
# Why the login form is shown, by the `reason` of /login?reason=...: fixed texts, nothing reflected.
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
<title>Log in · {title}</title>
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
<h1>{title}</h1>
<p class="hint">{hint}</p>
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


def safe_next(value: str | None, not_next: tuple[str, ...] = (LOGIN_PATH, LOGOUT_PATH)) -> str:
    """A same-site path to return to after logging in; anything else (another host, a scheme,
    a path of `not_next` such as the login pages themselves, control characters) becomes "/"."""
    if not value or len(value) > MAX_NEXT_CHARS or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in not_next:
        return "/"
    return value


def login_url(next_url: str | None = None, reason: str | None = None,
              not_next: tuple[str, ...] = (LOGIN_PATH, LOGOUT_PATH)) -> str:
    """/login with the page to come back to (when it is a safe one) and why the form is shown."""
    back = safe_next(next_url, not_next)
    params = {"next": back} if next_url and back != "/" else {}
    if reason in REASONS:
        params["reason"] = str(reason)
    return LOGIN_PATH + ("?" + urlencode(params) if params else "")


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def set_cookie(response: Response, name: str, value: str, max_age: int, *, secure: bool, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict")


def clear_cookie(response: Response, name: str, *, secure: bool, path: str = "/") -> None:
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="strict")


async def form_fields(request: Request) -> dict[str, str] | None:
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


def _nothing(_raw_id: str) -> None:
    """The default `forget`: a surface without a cache of checked sessions has nothing to drop."""


@dataclass(frozen=True)
class LoginPages:
    """GET/POST /login and /logout of one surface, over the hub's database.

    `engine` and `settings` are called when a request needs them (the app's are Streamlit
    resources, made on first use); `forget` drops a session id the surface may have
    cached as checked, at logout and when a login replaces it.
    """

    title: str
    hint: str
    csrf_cookie: str
    source: AuditSource
    engine: Callable[[], Engine]
    settings: Callable[[], Settings]
    log: logging.Logger
    not_next: tuple[str, ...] = (LOGIN_PATH, LOGOUT_PATH)
    forget: Callable[[str], None] = field(default=_nothing)

    def safe_next(self, value: str | None) -> str:
        return safe_next(value, self.not_next)

    def login_url(self, next_url: str | None = None, reason: str | None = None) -> str:
        return login_url(next_url, reason, self.not_next)

    def form(self, request: Request, next_url: str, *, info: str = "", error: str = "", username: str = "",
             status: int = 200) -> HTMLResponse:
        csrf = secrets.token_urlsafe(24)
        message = ""
        if error:
            message = f'<div class="msg error" role="alert">{html.escape(error)}</div>'
        elif info:
            message = f'<div class="msg info" role="status">{html.escape(info)}</div>'
        body = _PAGE.format(title=html.escape(self.title), hint=html.escape(self.hint), message=message,
                            action=LOGIN_PATH, next=html.escape(next_url, quote=True),
                            csrf=html.escape(csrf, quote=True), username=html.escape(username, quote=True))
        response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
        set_cookie(response, self.csrf_cookie, csrf, CSRF_MAX_AGE_S, secure=is_secure(request), path=LOGIN_PATH)
        return response

    def check(self, username: str, password: str, previous: str | None) -> tuple[str | None, str]:
        """(raw session id, "") after a good login, else (None, message for the form). Commits either way:
        a failed attempt must be counted and audited. A session the browser still held is ended:
        a login always starts a new one (no id chosen before the login survives it)."""
        with self.engine().begin() as conn:
            result = authenticate(conn, username, password, source=self.source)
            if result.user is None:
                return None, result.message
            if previous:
                end_session(conn, previous)
            return start_session(conn, result.user.username, ttl_s=self.settings().app_session_ttl), ""

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.form(request, self.safe_next(request.query_params.get("next")),
                             info=REASONS.get(request.query_params.get("reason") or "", ""))
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "GET, POST"})
        fields = await form_fields(request)
        if fields is None:
            return self.form(request, "/", error="The login form could not be read. Please try again.", status=400)
        next_url = self.safe_next(fields.get("next"))
        username = fields.get("username", "").strip()
        token, cookie = fields.get("csrf", ""), request.cookies.get(self.csrf_cookie, "")
        if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
            return self.form(request, next_url, error="The login form expired. Please enter your password again.",
                             username=username, status=400)
        password = fields.get("password", "")
        if not username or not password:
            return self.form(request, next_url, error="Enter your user name and password.", username=username)
        previous = request.cookies.get(SESSION_COOKIE)
        try:
            raw, message = await run_in_threadpool(self.check, username, password, previous)
        except SQLAlchemyError as exc:
            self.log.warning("login failed: database error %s", type(exc).__name__)
            return self.form(request, next_url, error=REASONS["unavailable"], username=username, status=503)
        if raw is None:
            return self.form(request, next_url, error=message, username=username)
        if previous:
            self.forget(previous)
        secure = is_secure(request)
        response = redirect(next_url)
        set_cookie(response, SESSION_COOKIE, raw, self.settings().app_session_ttl, secure=secure)
        clear_cookie(response, self.csrf_cookie, secure=secure, path=LOGIN_PATH)
        return response

    def end_and_audit(self, raw_id: str) -> None:
        """End a session and audit the logout (once: an ended session is not ended again)."""
        with self.engine().begin() as conn:
            username = end_session(conn, raw_id)
            if username:
                audit(conn, actor=username, source=self.source, action="auth.logout", target=f"user:{username}")

    async def logout(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return Response(status_code=405, headers={"Allow": "GET, POST"})
        raw = request.cookies.get(SESSION_COOKIE)
        response = redirect(self.login_url(reason="logged_out"))
        if raw:
            self.forget(raw)
            try:
                await run_in_threadpool(self.end_and_audit, raw)
            except SQLAlchemyError as exc:
                self.log.warning("logout: database error %s; the cookie is cleared anyway", type(exc).__name__)
            clear_cookie(response, SESSION_COOKIE, secure=is_secure(request))
        return response
