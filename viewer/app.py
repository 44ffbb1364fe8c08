"""The gateway on OHIF_PORT: OHIF's files and DICOMweb reads, for logged-in users only.

Every request but /login and /logout needs a live session of the app (core.auth.session_user
on the SESSION_COOKIE cookie); every role, viewer included, may view. Without one, a
page load (a GET asking for HTML) is sent to /login with the page to come back to, and
anything else (a script, an image, a DICOMweb read) is answered 401. Then:

- /dicom-web/... and /wado: viewer/dicomweb.py decides (reads forwarded to Orthanc, the
  rest refused), and viewer/audit.py records the study before its data leaves. For the
  viewer role, viewer/masking.py masks patient identifiers in the DICOM JSON and refuses
  what would carry them unmasked (whole instances), as the app and the API mask them.
- /app-config.js: OHIF's configuration, written here: one DICOMweb data source, this
  gateway's own /dicom-web (and /wado) on whatever host the browser used; no study
  list (studies are opened from the app's study page); a 401 from the data source (the
  session ended) goes back to the login form.
- /init-service-worker.js: only removes service workers (OHIF's would fetch Workbox
  from a CDN and cache responses); /sw.js is not served.
- any other file of OHIF's dist/ (exact names, listed once at start: no path is ever
  joined to a folder); OHIF's own routes (/viewer, /segmentation, ...) answer its
  index.html; everything else is 404, Orthanc's REST paths (/tools, /instances, ...) included.
- / goes to the app (OPERATOR_UI_PORT), where studies are found.

A session is checked against the database for each page load, then at most every
SESSION_RECHECK_S seconds for the files and DICOMweb reads a page makes (hundreds for
one study): a session ended in the app (logout, expiry, idle, locked or deleted
account) is refused at once by page loads and within SESSION_RECHECK_S by reads. Each
database check counts as the user's activity (last_seen_at), so reading images keeps
the session from going idle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from core.auth import SESSION_COOKIE, SESSION_ID_MAX_CHARS, User, session_user
from core.db import engine_for
from core.login_pages import LOGIN_PATH, LOGOUT_PATH, clear_cookie, login_url, redirect
from core.settings import Settings
from viewer import masking
from viewer.audit import StudyAudit
from viewer.dicomweb import NO_STORE, Orthanc, Read, Refusal, classify, is_dicomweb_path
from viewer.login import login_pages

log = logging.getLogger("viewer")

SESSION_RECHECK_S = 5.0
MAX_CACHED_SESSIONS = 10_000
# OHIF's own client-side routes (its modes' routeName and its fixed pages): their URLs answer index.html.
OHIF_ROUTES = frozenset({"viewer", "segmentation", "tmtv", "microscopy", "basic", "dynamic-volume", "usAnnotation",
                         "notfoundstudy", "notfoundserver"})
# Files of OHIF's dist/ that are not served: deployment notes of OHIF's own hosting, its service worker.
NOT_SERVED = frozenset({"_headers", "_redirects", "serve.json", "sw.js"})
HASHED = re.compile(r"(?:^|[./])[0-9a-f]{16}\.(?:js|css|wasm|woff2)\Z")
CONTENT_TYPES = {".jsonc": "application/json", ".wasm": "application/wasm", ".js": "text/javascript"}
# What OHIF needs: its inline bootstrap scripts, eval and WebAssembly for its codecs, blob workers.
# No other origin: the page can reach nothing but this gateway.
OHIF_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
            "worker-src 'self' blob:; connect-src 'self' blob: data:; img-src 'self' data: blob:; "
            "style-src 'self' 'unsafe-inline'; font-src 'self' data:; media-src 'self' blob: data:; "
            "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": OHIF_CSP, "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
UNAUTHORIZED = {**NO_STORE, "WWW-Authenticate": 'Session realm="routing-hub viewer", login="/login"'}

INIT_SERVICE_WORKER = """// The routing hub's viewer runs without a service worker: remove any left registered.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.getRegistrations().then(function (registrations) {
    registrations.forEach(function (registration) { registration.unregister(); });
  });
}
"""


def app_config_js() -> str:
    """OHIF's window.config: this gateway as its only data source."""
    source = {
        "friendlyName": "Routing hub",
        "name": "hub",
        "qidoSupportsIncludeField": False,
        "supportsReject": False,
        "supportsStow": False,
        "dicomUploadEnabled": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": True,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    return f"""/** OHIF's configuration, written by the routing hub's gateway (viewer/app.py). */
(function () {{
  var origin = window.location.origin;
  var source = {json.dumps(source, indent=2)};
  source.qidoRoot = origin + '/dicom-web';
  source.wadoRoot = origin + '/dicom-web';
  source.wadoUriRoot = origin + '/wado';
  window.config = {{
    name: 'routing-hub',
    routerBasename: '/',
    extensions: [],
    modes: [],
    // No onboarding tour: the viewer is a tool for the hub's users, opened many times a day.
    customizationService: [{{ 'ohif.tours': {{ $set: [] }} }}],
    showStudyList: false,
    investigationalUseDialog: {{ option: 'never' }},
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 25 }},
    showErrorDetails: 'production',
    defaultDataSourceName: 'hub',
    dataSources: [{{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'hub',
      configuration: source,
    }}],
    httpErrorHandler: function (error) {{
      if (error && error.status === 401) {{  // the session ended: log in again, then come back here
        window.location.assign('/login?reason=expired&next=' +
          encodeURIComponent(window.location.pathname + window.location.search));
      }}
    }},
  }};
}})();
"""


class OhifFiles:
    """OHIF's dist/, listed once: a request names a file exactly or gets nothing."""

    def __init__(self, dist: Path) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF viewer in {dist} (index.html missing): run `make run` to install it")
        self.index = dist / "index.html"
        self.files: dict[str, Path] = {}
        for path in dist.rglob("*"):
            relative = path.relative_to(dist).as_posix()
            if path.is_file() and not path.is_symlink() and relative not in NOT_SERVED:
                self.files["/" + relative] = path

    def response(self, path: str) -> Response | None:
        file = self.files.get(path)
        if file is None:
            first = path.strip("/").split("/", 1)[0]
            if first in OHIF_ROUTES:
                return FileResponse(self.index, media_type="text/html", headers=PAGE_HEADERS)
            return None
        if file == self.index:
            return FileResponse(file, media_type="text/html", headers=PAGE_HEADERS)
        cache = "private, max-age=31536000, immutable" if HASHED.search(path) else "private, max-age=3600"
        return FileResponse(file, media_type=CONTENT_TYPES.get(file.suffix), headers={
            "Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


@dataclass(frozen=True)
class Session:
    user: User
    key: str  # SHA-256 of the session id, hex (app_sessions.id_hash)


class Sessions:
    """Who is calling: core.auth.session_user, remembered for SESSION_RECHECK_S per session."""

    def __init__(self, engine: Engine, settings: Settings, recheck_s: float = SESSION_RECHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.idle_timeout_s = settings.app_idle_timeout
        self.recheck_s = recheck_s
        self.clock = clock
        self._checked: dict[str, tuple[Session, float]] = {}

    @staticmethod
    def key(raw_id: str) -> str:
        return hashlib.sha256(raw_id.encode("utf-8")).hexdigest()

    def forget(self, raw_id: str) -> None:
        self._checked.pop(self.key(raw_id), None)

    def check(self, raw_id: str | None, *, fresh: bool) -> Session | None:
        """The live session of `raw_id`, or None. Raises SQLAlchemyError when the database does not answer."""
        if not raw_id or len(raw_id) > SESSION_ID_MAX_CHARS or not raw_id.isascii():
            return None
        key = self.key(raw_id)
        now = self.clock()
        cached = self._checked.get(key)
        if cached is not None and not fresh and now - cached[1] < self.recheck_s:
            return cached[0]
        with self.engine.begin() as conn:
            user = session_user(conn, raw_id, idle_timeout_s=self.idle_timeout_s)
        if user is None:
            self._checked.pop(key, None)
            return None
        if len(self._checked) >= MAX_CACHED_SESSIONS:
            self._checked = {k: v for k, v in self._checked.items() if now - v[1] < self.recheck_s}
        session = Session(user, key)
        self._checked[key] = (session, now)
        return session


def _wants_page(request: Request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


class Gateway:
    def __init__(self, settings: Settings, dist: Path, engine: Engine, orthanc: Orthanc,
                 recheck_s: float = SESSION_RECHECK_S) -> None:
        self.settings = settings
        self.files = OhifFiles(dist)
        self.engine = engine
        self.orthanc = orthanc
        self.sessions = Sessions(engine, settings, recheck_s)
        self.audit = StudyAudit(engine)
        self.login = login_pages(settings, engine, self.sessions.forget)
        self.config_js = app_config_js()

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        kind = "file"
        try:
            response, kind = await self._dispatch(request)
        except Exception:
            log.exception("request failed")
            response = JSONResponse({"error": "the viewer gateway failed"}, status_code=500, headers=NO_STORE)
        log.info("request", extra={"fields": {"method": request.method, "kind": kind,
                                              "status": response.status_code,
                                              "ms": round((time.perf_counter() - started) * 1000, 1)}})
        return response

    async def _dispatch(self, request: Request) -> tuple[Response, str]:
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        path = request.url.path
        if path == LOGIN_PATH:
            return await self.login.login(request), "login"
        if path == LOGOUT_PATH:
            return await self.login.logout(request), "logout"
        dicomweb = is_dicomweb_path(raw_path)
        page = _wants_page(request) and not dicomweb
        raw_id = request.cookies.get(SESSION_COOKIE)
        try:
            session = await run_in_threadpool(self.sessions.check, raw_id, fresh=page)
        except SQLAlchemyError as exc:
            log.warning("session check failed: database error %s", type(exc).__name__)
            if page:
                return redirect(login_url(reason="unavailable")), "login"
            return JSONResponse({"error": "the database cannot be reached"}, status_code=503,
                                headers=NO_STORE), "refused"
        if session is None:
            return self._refuse_anonymous(request, page, ended=bool(raw_id)), "refused"
        if dicomweb:
            return await self._dicomweb(request, raw_path, session)
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("Method not allowed", status_code=405, headers={"Allow": "GET, HEAD"}), "refused"
        if path == "/":
            return RedirectResponse(self._app_url(request), status_code=303), "file"
        if path == "/app-config.js":
            return Response(self.config_js, media_type="text/javascript", headers=NO_STORE), "file"
        if path == "/init-service-worker.js":
            return Response(INIT_SERVICE_WORKER, media_type="text/javascript", headers=NO_STORE), "file"
        response = self.files.response(path)
        if response is None:
            return PlainTextResponse("Not found", status_code=404, headers=NO_STORE), "refused"
        return response, "file"

    def _refuse_anonymous(self, request: Request, page: bool, *, ended: bool) -> Response:
        response: Response
        if page:
            query = request.url.query
            response = redirect(login_url(request.url.path + ("?" + query if query else ""),
                                          "expired" if ended else None))
        else:
            response = JSONResponse({"error": "log in first", "login": LOGIN_PATH}, status_code=401,
                                    headers=UNAUTHORIZED)
        if ended:
            clear_cookie(response, SESSION_COOKIE, secure=request.url.scheme == "https")
        return response

    def _app_url(self, request: Request) -> str:
        host = request.url.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.operator_ui_port}/"

    async def _dicomweb(self, request: Request, raw_path: bytes, session: Session) -> tuple[Response, str]:
        query = request.url.query
        decision = classify(request.method, raw_path, query)
        if isinstance(decision, Refusal):
            return decision.response(), "refused"
        masked = not masking.sees_patient_data(session.user.role)
        empty = False
        if masked:  # the viewer role: patient identifiers masked or not sent (viewer/masking.py)
            search = masking.empty_search(decision, query)
            refused = masking.refusal(decision, query) or (search if isinstance(search, Refusal) else None)
            if refused is not None:
                return refused.response(), "refused"
            empty = search is True
        try:
            await self._record(session, decision, query)
        except SQLAlchemyError as exc:
            log.warning("audit entry not written (database error %s): read refused", type(exc).__name__)
            return JSONResponse({"error": "the read cannot be recorded now"}, status_code=503,
                                headers=NO_STORE), "refused"
        if empty:
            return Response("[]", media_type="application/dicom+json", headers=NO_STORE), "dicomweb"
        rewrite = masking.mask_dicom_json if masked and decision.content == "json" else None
        return await self.orthanc.forward(request, decision, rewrite), "dicomweb"

    async def _record(self, session: Session, read: Read, query: str) -> None:
        filters: tuple[str, ...] = ()
        if read.kind == "search":
            filters = tuple(parse_qs(query, keep_blank_values=True))[:50]
        await self.audit.record(session.user.username, session.key, read.study_uid, level=read.level,
                                filters=filters)


def create_app(settings: Settings, dist: Path, *, engine: Engine | None = None,
               transport: httpx.AsyncBaseTransport | None = None,
               recheck_s: float = SESSION_RECHECK_S) -> Starlette:
    """The gateway as an ASGI application (`python -m viewer` runs it under uvicorn)."""
    engine = engine or engine_for(settings, pool_size=5, max_overflow=5)
    orthanc = Orthanc(settings, transport)
    gateway = Gateway(settings, dist, engine, orthanc, recheck_s)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await orthanc.aclose()
            engine.dispose()

    endpoint: Callable[[Request], Awaitable[Response]] = gateway.handle  # a method: Starlette passes a Request
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)], lifespan=lifespan)
    app.state.gateway = gateway
    return app
