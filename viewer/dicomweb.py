"""What the gateway forwards to Orthanc: DICOMweb reads, nothing else, and how.

A request under /dicom-web/ or /wado is forwarded only when it is a GET whose path is
one of the read resources below, spelled exactly (UIDs are digits and dots, frame lists
digits and commas, Orthanc's bulk data paths hexadecimal tags and item numbers: no
percent-encoding, no '.' or '..' segment, no empty segment). The path is matched on the
raw bytes the client sent, before any decoding, so no spelling reaches Orthanc that
was not checked here. Everything else is refused: another method (405), another path
under these roots, such as Orthanc's /dicom-web/servers (which makes Orthanc call
remote servers) or STOW-RS (403). Orthanc's REST API (/tools, /instances, /system, ...)
is not forwarded at all: those paths are not the viewer's, and answer 404.

| kind | paths (after /dicom-web) |
| --- | --- |
| QIDO-RS search | `/studies`, `/series`, `/instances`, `/studies/{study}/series`, `/studies/{study}/instances`, `/studies/{study}/series/{series}/instances` |
| WADO-RS | `/studies/{study}`, `/series/{series}`, `/instances/{instance}` below it, each with `/metadata`, `/rendered`, `/thumbnail`; `/frames/{n[,n...]}` (and its `/rendered`, `/thumbnail`); `/bulk/{tag}[/{item}/{tag}...]` |
| WADO-URI | `/wado?requestType=WADO&studyUID=...&seriesUID=...&objectUID=...` |

Orthanc is called with the credentials of Settings (ORTHANC_USERNAME, ORTHANC_PASSWORD),
which never reach the browser: Orthanc's authentication headers are not passed back, and
an Orthanc that refuses them is a 502 for the browser. The `Forwarded` header gives
Orthanc the host the browser used, so that the URLs inside its answers (RetrieveURL,
BulkDataURI) point at the gateway, never at Orthanc's own port. The query string is passed on
decoded where Orthanc needs it (ORTHANC_QUERY_SAFE). Answers are streamed
as Orthanc sends them (compressed when the browser asked for it) and marked no-store:
no image or patient data is kept in the browser's cache.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, quote

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from core.orthanc_client import orthanc_verify
from core.settings import Settings

log = logging.getLogger("viewer.dicomweb")

DICOMWEB_ROOT = "/dicom-web"
WADO_URI = "/wado"
MAX_QUERY_CHARS = 4096
UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*\Z")
FRAMES_RE = re.compile(r"[1-9][0-9]{0,5}(?:,[1-9][0-9]{0,5}){0,499}\Z")
TAG_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")
ITEM_RE = re.compile(r"[0-9]{1,6}\Z")
SAFE_PATH_RE = re.compile(rb"[A-Za-z0-9./,_-]+\Z")
SEARCH_LEVELS = ("studies", "series", "instances")
RENDERINGS = ("metadata", "rendered", "thumbnail")
# The study a QIDO search is about, when it names one (keyword or tag).
STUDY_KEYS = ("StudyInstanceUID", "0020000D", "0020000d")
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PASSED_HEADERS = ("content-type", "content-length", "content-encoding")


# Orthanc 1.10.1's DICOMweb plugin reads query values as sent, without percent-decoding: it finds
# nothing for PatientName=SMITH%2A and ignores includefield=00081030%2C00080060. So the query is
# decoded here and sent on with these characters as themselves (the rest stays encoded).
ORTHANC_QUERY_SAFE = ",*^.-_:/"


def orthanc_query(query: str) -> str:
    """The query string as Orthanc reads it (see ORTHANC_QUERY_SAFE)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{quote(key, safe=ORTHANC_QUERY_SAFE)}={quote(value, safe=ORTHANC_QUERY_SAFE)}"
                    for key, value in pairs)


def is_uid(value: str) -> bool:
    return len(value) <= 64 and bool(UID_RE.match(value))


@dataclass(frozen=True)
class Read:
    """A DICOMweb read to forward: `study_uid` is the study it concerns, when one does."""

    kind: str  # "study" (a study's data or a search naming it) or "search" (a search across studies)
    level: str  # studies, series, instances (searches); study, series, instance, wado (reads)
    study_uid: str | None
    path: str  # the path to ask Orthanc for (the query string is added as received)
    # What the answer is: "json" (QIDO-RS, metadata), "dicom" (whole instances), "pixels" (frames,
    # rendered, thumbnail), "bulk" (one attribute's value), "wado" (WADO-URI: as contentType says).
    content: str


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str

    def response(self) -> Response:
        headers = dict(NO_STORE)
        if self.status == 405:
            headers["Allow"] = "GET"
        return JSONResponse({"error": self.reason}, status_code=self.status, headers=headers)


def is_dicomweb_path(raw_path: bytes) -> bool:
    """Whether a request is for the forwarded roots (decided on the raw path, before decoding)."""
    return raw_path in (DICOMWEB_ROOT.encode(), WADO_URI.encode()) or raw_path.startswith(
        (DICOMWEB_ROOT + "/").encode())


def _study_from_query(query: str, keys: tuple[str, ...]) -> str | None | Refusal:
    values = [v for key, vs in parse_qs(query, keep_blank_values=True).items() if key in keys for v in vs]
    if not values:
        return None
    if len(values) > 1 or not is_uid(values[0]):
        return Refusal(403, "a study is named by one StudyInstanceUID")
    return values[0]


def _content(tail: list[str]) -> str:
    """What a read of a study, series or instance answers, by the path below it."""
    if not tail:
        return "dicom"
    return {"metadata": "json", "series": "json", "instances": "json", "bulk": "bulk"}.get(tail[0], "pixels")


def _instance_tail(tail: list[str]) -> str | None:
    """The level read below an instance, or None when the rest of the path is not a read."""
    if not tail:
        return "instance"
    if len(tail) == 1 and tail[0] in RENDERINGS:
        return "instance"
    if tail[0] == "frames" and len(tail) in (2, 3) and FRAMES_RE.match(tail[1]):
        return "frames" if len(tail) == 2 or tail[2] in ("rendered", "thumbnail") else None
    if tail[0] == "bulk" and 2 <= len(tail) <= 33:
        # Orthanc's BulkDataURI: bulk/{tag}, or a path into sequences: {tag}/{item}/{tag}...
        parts = tail[1:]
        shape = all((TAG_RE if i % 2 == 0 else ITEM_RE).match(p) for i, p in enumerate(parts))
        return "bulk" if shape and len(parts) % 2 == 1 else None
    return None


def classify(method: str, raw_path: bytes, query: str) -> Read | Refusal:
    """Decide what to do with a request for /dicom-web/... or /wado (the caller checked the root)."""
    if method != "GET":
        return Refusal(405, "the viewer gateway forwards only DICOMweb reads (GET)")
    if not SAFE_PATH_RE.match(raw_path) or b"//" in raw_path or raw_path.endswith(b"/"):
        return Refusal(403, "not a DICOMweb read")
    if len(query) > MAX_QUERY_CHARS:
        return Refusal(403, "query too long")
    path = raw_path.decode("ascii")
    if path == WADO_URI:
        params = parse_qs(query, keep_blank_values=True)
        if params.get("requestType") != ["WADO"]:
            return Refusal(403, "WADO-URI needs requestType=WADO")
        uids = [params.get(key, []) for key in ("studyUID", "seriesUID", "objectUID")]
        if any(len(values) != 1 or not is_uid(values[0]) for values in uids):
            return Refusal(403, "WADO-URI needs one studyUID, seriesUID and objectUID")
        return Read("study", "wado", uids[0][0], path, "wado")
    parts = path[len(DICOMWEB_ROOT) + 1:].split("/") if path.startswith(DICOMWEB_ROOT + "/") else []
    if any(part in ("", ".", "..") for part in parts) or not parts:
        return Refusal(403, "not a DICOMweb read")
    if len(parts) == 1 and parts[0] in SEARCH_LEVELS:  # QIDO-RS across the archive
        study = _study_from_query(query, STUDY_KEYS)
        if isinstance(study, Refusal):
            return study
        return Read("study" if study else "search", parts[0], study, path, "json")
    if parts[0] != "studies" or not is_uid(parts[1] if len(parts) > 1 else ""):
        return Refusal(403, "not a DICOMweb read")
    study_uid, tail = parts[1], parts[2:]
    if not tail or (len(tail) == 1 and tail[0] in (*RENDERINGS, "series", "instances")):
        return Read("study", "study", study_uid, path, _content(tail))
    if tail[0] != "series" or not is_uid(tail[1]):
        return Refusal(403, "not a DICOMweb read")
    tail = tail[2:]
    if not tail or (len(tail) == 1 and tail[0] in (*RENDERINGS, "instances")):
        return Read("study", "series", study_uid, path, _content(tail))
    if tail[0] != "instances" or len(tail) < 2 or not is_uid(tail[1]):
        return Refusal(403, "not a DICOMweb read")
    level = _instance_tail(tail[2:])
    if level is None:
        return Refusal(403, "not a DICOMweb read")
    return Read("study", level, study_uid, path, _content(tail[2:]))


HOST_RE = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")


class Orthanc:
    """The one HTTP client to Orthanc's DICOMweb plugin, with the credentials of Settings."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.fallback_host = f"{settings.bind_address}:{settings.ohif_port}"
        self.client = httpx.AsyncClient(
            base_url=settings.orthanc_url,
            auth=(settings.orthanc_username, settings.orthanc_password.get_secret_value()),
            verify=orthanc_verify(settings),
            timeout=httpx.Timeout(120.0, connect=5.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,
            trust_env=False,  # never through an HTTP proxy from the environment: Orthanc is local
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _forwarded(self, request: Request) -> str:
        host = request.headers.get("host", "")
        if not HOST_RE.match(host):
            host = self.fallback_host
        return f"host={host};proto={request.url.scheme}"

    async def forward(self, request: Request, read: Read,
                      rewrite: Callable[[object], object] | None = None) -> Response:
        """Orthanc's answer, streamed; with `rewrite`, a DICOM JSON answer read whole, passed through
        it (viewer/masking.py), and sent as JSON (anything else that Orthanc answers with is a 502)."""
        query = orthanc_query(request.url.query)
        headers = {
            "Accept": request.headers.get("accept", "*/*") if rewrite is None else "application/dicom+json",
            # Orthanc compresses when asked; the bytes are passed on as they come (read whole: plain).
            "Accept-Encoding": request.headers.get("accept-encoding", "identity") if rewrite is None else "identity",
            "Forwarded": self._forwarded(request),
        }
        upstream = self.client.build_request("GET", read.path + ("?" + query if query else ""), headers=headers)
        try:
            response = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            log.warning("Orthanc did not answer a DICOMweb read: %s", type(exc).__name__)
            return JSONResponse({"error": "Orthanc is not answering"}, status_code=502, headers=NO_STORE)
        if response.status_code in (401, 403):
            await response.aclose()
            log.error("Orthanc refused the gateway's credentials (HTTP %s): check ORTHANC_USERNAME and "
                      "ORTHANC_PASSWORD in .env", response.status_code)
            return JSONResponse({"error": "the viewer gateway cannot read from Orthanc"}, status_code=502,
                                headers=NO_STORE)
        passed = {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}
        if rewrite is not None:
            return await self._rewritten(response, rewrite)
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                 headers={**passed, **NO_STORE}, background=BackgroundTask(response.aclose))

    @staticmethod
    async def _rewritten(response: httpx.Response, rewrite: Callable[[object], object]) -> Response:
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        if response.status_code == 204 or not body:
            return Response(status_code=response.status_code, headers=NO_STORE)
        try:
            document = json.loads(body)
        except ValueError:
            log.warning("Orthanc answered a DICOMweb read with no JSON (HTTP %s): not passed on",
                        response.status_code)
            return JSONResponse({"error": "Orthanc's answer could not be checked"}, status_code=502, headers=NO_STORE)
        content = json.dumps(rewrite(document), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return Response(content, status_code=response.status_code, media_type="application/dicom+json",
                        headers=NO_STORE)
