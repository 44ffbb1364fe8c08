"""The OHIF gateway (viewer/) as a real uvicorn process, on a real QI database and the real Orthanc.

What the browser test (tests/browser/test_viewer_browser.py) cannot look at closely:
every refusal, byte for byte (unauthenticated, other methods, Orthanc's REST API, paths
spelled to slip past a check), that Orthanc's credentials never reach the client,
that the URLs inside Orthanc's answers point at the gateway, and that a study read with
many requests, some of them concurrent, is audited once per session. The gateway
serves a tiny stand-in for OHIF's dist/ here (the real one is the browser test's).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from core import auth
from core.db import make_engine
from core.queries import MASK
from core.settings import Settings, settings_from_values
from core.states import AuditSource, Role
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, QiDatabase
from testkit.harness.viewer_proc import ViewerProcess
from testkit.synthetic import make_study
from viewer.app import Sessions
from viewer.audit import StudyAudit

pytestmark = pytest.mark.integration

PASSWORD = "viewer-password-1"
UID_PREFIX = "1.2.826.0.1.3680043.10.1"


@dataclass
class Gateway:
    proc: ViewerProcess
    settings: Settings
    engine: Engine
    study_uid: str
    series_uid: str
    instance_uid: str
    study_id: int
    orthanc_study: str
    patient_id: str

    @property
    def url(self) -> str:
        return self.proc.url

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False, **kwargs)

    @contextmanager
    def login(self, username: str = "vera", password: str = PASSWORD) -> Iterator[httpx.Client]:
        """A client holding a session cookie, logged in through the real form."""
        with self.client() as client:
            form = client.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert form.status_code == 200 and csrf
            answer = client.post("/login", data={"username": username, "password": password,
                                                 "csrf": csrf.group(1), "next": "/viewer"})
            assert answer.status_code == 303, answer.text
            assert answer.headers["location"] == "/viewer"
            assert auth.SESSION_COOKIE in client.cookies
            yield client

    def audit(self, action: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text("SELECT actor, source, action, target, after FROM audit_log "
                                          "WHERE action = :a ORDER BY id"), {"a": action}))


def fake_dist(directory: Path) -> Path:
    dist = directory / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>OHIF stand-in</title>")
    (dist / "app.bundle.0123456789abcdef.js").write_text("console.log('bundle');")
    (dist / "assets" / "logo.svg").write_text("<svg/>")
    (dist / "sw.js").write_text("self.addEventListener('fetch', () => {});")
    (dist / "_headers").write_text("/*\n")
    return dist


@pytest.fixture
def gateway(qi_db: QiDatabase, clean_orthanc: OrthancServer, hub_values: dict[str, str],
            tmp_path: Path) -> Iterator[Gateway]:
    n = 7000 + uuid.uuid4().int % 1000
    study_uid = f"{UID_PREFIX}.{n}"
    datasets = make_study(1, 3, "CT GATEWAY", modality="CT", study_uid=study_uid)
    assert clean_orthanc.rest is not None
    orthanc_study, orthanc_series = app_flows.upload(clean_orthanc.rest, datasets)
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        flow = app_flows.arrive(conn, n, datetime.now(UTC), orthanc_id=orthanc_study,
                                series_orthanc_id=next(iter(orthanc_series.values())), uid_prefix=UID_PREFIX)
        auth.create_user(conn, "vera", PASSWORD, Role.VIEWER, actor="test", source=AuditSource.SETUP, rounds=4)
        auth.create_user(conn, "otto", PASSWORD, Role.OPERATOR, actor="test", source=AuditSource.SETUP, rounds=4)
    values = {**hub_values, "QI_DB": qi_db.name, "OHIF_PORT": str(free_port())}
    proc = ViewerProcess(values, tmp_path, dist=fake_dist(tmp_path)).start()
    try:
        yield Gateway(proc, settings_from_values(values), engine, study_uid, str(datasets[0].SeriesInstanceUID),
                      str(datasets[0].SOPInstanceUID), flow.study_id, orthanc_study, str(datasets[0].PatientID))
    finally:
        code = proc.stop()
        engine.dispose()
        log = proc.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert code in (0, -signal.SIGTERM), log[-3000:]  # uvicorn ends with the signal it handled
        # The log holds no study: no UID, no patient name, no password.
        for secret in (study_uid, "SYNTHETIC^PATIENT", PASSWORD,
                       settings_from_values(values).orthanc_password.get_secret_value()):
            assert secret not in log


def raw_get(url: str, raw_path: str, cookie: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    """A request whose path goes to the server exactly as written (httpx would normalise '..')."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"Cookie": f"{auth.SESSION_COOKIE}={cookie}"} if cookie else {}
        conn.request(method, raw_path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_unauthenticated_requests_are_refused(gateway: Gateway) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    with gateway.client() as client:
        page = client.get(f"/viewer?StudyInstanceUIDs={gateway.study_uid}", headers=html)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?" + httpx.QueryParams(
            {"next": f"/viewer?StudyInstanceUIDs={gateway.study_uid}"}).__str__()
        for path in ("/dicom-web/studies", f"/dicom-web/studies/{gateway.study_uid}/series",
                     f"/wado?requestType=WADO&studyUID={gateway.study_uid}&seriesUID={gateway.series_uid}"
                     f"&objectUID={gateway.instance_uid}", "/app-config.js", "/app.bundle.0123456789abcdef.js",
                     "/viewer"):
            answer = client.get(path)
            assert answer.status_code == 401, path
            assert "basic" not in answer.headers.get("www-authenticate", "").lower()  # no browser password prompt
            assert b"SYNTHETIC" not in answer.content
        assert client.post("/dicom-web/studies", content=b"x").status_code == 401
        assert client.delete(f"/dicom-web/studies/{gateway.study_uid}").status_code == 401
        # A made-up or stale cookie is refused too, and cleared.
        client.cookies.set(auth.SESSION_COOKIE, "not-a-session")
        stale = client.get("/dicom-web/studies")
        assert stale.status_code == 401 and f'{auth.SESSION_COOKIE}=""' in stale.headers["set-cookie"]
        assert client.get("/viewer", headers=html).headers["location"].endswith("reason=expired")
    assert gateway.audit("viewer.study_open") == []


def test_a_viewer_reads_a_study_which_is_audited_once(gateway: Gateway) -> None:
    study, series, instance = gateway.study_uid, gateway.series_uid, gateway.instance_uid
    base = f"/dicom-web/studies/{study}/series/{series}"
    with gateway.login() as client:
        found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study},
                           headers={"Accept": "application/dicom+json"})
        assert found.status_code == 200 and found.headers["cache-control"] == "no-store"
        [record] = found.json()
        # URLs in Orthanc's answers name the gateway (Forwarded header), never Orthanc's port.
        assert record["00081190"]["Value"][0] == f"{gateway.url}/dicom-web/studies/{study}"
        metadata = client.get(f"{base}/metadata")
        assert metadata.status_code == 200
        bulk = [item["7FE00010"]["BulkDataURI"] for item in metadata.json()]
        assert len(bulk) == 3 and all(uri.startswith(f"{gateway.url}/dicom-web/studies/{study}/") for uri in bulk)
        assert str(gateway.settings.orthanc_web_port) not in metadata.text
        pixel = client.get(bulk[0].removeprefix(gateway.url))
        assert pixel.status_code == 200 and len(pixel.content) >= 32 * 32 * 2
        frame = client.get(f"{base}/instances/{instance}/frames/1",
                           headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert frame.status_code == 200 and frame.headers["content-type"].startswith("multipart/related")
        assert len(frame.content) >= 32 * 32 * 2
        wado = client.get("/wado", params={"requestType": "WADO", "studyUID": study, "seriesUID": series,
                                           "objectUID": instance, "contentType": "image/jpeg"})
        assert wado.status_code == 200 and wado.content[:2] == b"\xff\xd8"
        # Many reads at once, as OHIF makes them: still one entry for the session.
        paths = [f"{base}/instances/{instance}/frames/1", f"{base}/metadata", f"/dicom-web/studies/{study}/series"] * 8
        cookies = dict(client.cookies)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda p: httpx.get(gateway.url + p, cookies=cookies, timeout=30).status_code,
                                     paths))
        assert statuses == [200] * len(paths)
        for answer in (found, metadata, frame, wado):
            assert gateway.settings.orthanc_password.get_secret_value() not in answer.text
            assert "authorization" not in answer.headers and "www-authenticate" not in answer.headers
    [entry] = gateway.audit("viewer.study_open")
    assert (entry.actor, entry.source, entry.target) == ("vera", AuditSource.VIEWER, f"study:{gateway.study_id}")
    assert entry.after["study_instance_uid"] == study and entry.after["study_id"] == gateway.study_id
    with gateway.engine.connect() as conn:
        sessions = conn.execute(text("SELECT id_hash FROM app_sessions WHERE username = 'vera'")).scalars().all()
    assert [h[:12] for h in sessions] == [entry.after["session"]]
    [login] = gateway.audit("auth.login")
    assert (login.actor, login.source) == ("vera", AuditSource.VIEWER)
    # Another session of the same user reading the same study is another entry.
    with gateway.login() as client:
        assert client.get(f"{base}/metadata").status_code == 200
    assert len(gateway.audit("viewer.study_open")) == 2


def test_a_search_across_studies_is_audited_with_its_filter_names(gateway: Gateway) -> None:
    with gateway.login("otto") as client:
        answer = client.get("/dicom-web/studies", params={"PatientName": "SYNTH*", "limit": "10"})
        assert answer.status_code == 200 and len(answer.json()) == 1
    [entry] = gateway.audit("viewer.search")
    assert entry.actor == "otto" and entry.target is None
    assert entry.after["level"] == "studies" and entry.after["filters"] == ["PatientName", "limit"]
    assert "SYNTH" not in str(entry.after)
    assert gateway.audit("viewer.study_open") == []


def test_the_viewer_role_gets_no_patient_identifiers(gateway: Gateway) -> None:
    """As the app and the API: the viewer role reads the study with the patient's name, id and birth
    date masked (viewer/masking.py), and gets nothing that would carry them unmasked; an
    operator gets everything, as before."""
    study, series, instance = gateway.study_uid, gateway.series_uid, gateway.instance_uid
    base = f"/dicom-web/studies/{study}/series/{series}"
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": instance}
    secrets = ("SYNTHETIC^PATIENT", gateway.patient_id, "19700101")
    with gateway.login("vera") as client:
        # QIDO-RS, compressed on request as OHIF asks for it: masked all the same.
        [found] = client.get("/dicom-web/studies", params={"StudyInstanceUID": study, "includefield": "00100030"},
                             headers={"Accept-Encoding": "gzip"}).json()
        assert found["00100010"]["Value"] == [{"Alphabetic": MASK}] and found["00100020"]["Value"] == [MASK]
        assert "Value" not in found["00100030"] and found["0020000D"]["Value"] == [study]
        # WADO-RS metadata, even asked for as XML: JSON, masked, with the pixel data's BulkDataURI.
        metadata = client.get(f"{base}/metadata", headers={"Accept": "application/dicom+xml"})
        assert metadata.status_code == 200 and metadata.headers["content-type"].startswith("application/dicom+json")
        assert metadata.headers["cache-control"] == "no-store"
        items = metadata.json()
        assert len(items) == 3 and all(i["00100010"]["Value"] == [{"Alphabetic": MASK}] for i in items)
        # What OHIF renders from: frames and pixel data.
        pixel = client.get(items[0]["7FE00010"]["BulkDataURI"].removeprefix(gateway.url))
        frame = client.get(f"{base}/instances/{instance}/frames/1",
                           headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert pixel.status_code == frame.status_code == 200
        for answer in (client.get("/dicom-web/series", params={"0020000D": study}),
                       client.get(f"/dicom-web/studies/{study}/series"), client.get(f"{base}/instances"),
                       metadata, client.get(f"/dicom-web/studies/{study}/metadata")):
            assert answer.status_code == 200 and not any(s in answer.text for s in secrets), answer.url
        # Whole instances carry the tags unmasked: refused, with the reason.
        for path, params in ((f"/dicom-web/studies/{study}", {}), (base, {}), (f"{base}/instances/{instance}", {}),
                             (f"{base}/instances/{instance}/bulk/00100010", {}),
                             ("/wado", {**wado, "contentType": "application/dicom"}), ("/wado", wado)):
            refused = client.get(path, params=params)
            assert refused.status_code == 403, path
            assert "does not see patient identifiers" in refused.json()["error"]
            assert not any(s.encode() in refused.content for s in secrets)
        # No search by who the patient is; a search for the mask (OHIF's "other studies") finds nothing.
        assert client.get("/dicom-web/studies", params={"PatientID": gateway.patient_id}).status_code == 403
        assert client.get("/dicom-web/studies", params={"PatientName": "SYNTH*"}).status_code == 403
        other = client.get("/dicom-web/studies", params={"PatientID": MASK})
        assert other.status_code == 200 and other.json() == []
    with gateway.login("otto") as client:
        [found] = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
        assert found["00100010"]["Value"] == [{"Alphabetic": "SYNTHETIC^PATIENT"}]
        assert found["00100020"]["Value"] == [gateway.patient_id]
        assert "SYNTHETIC" in client.get(f"{base}/metadata").text
        whole = client.get(f"/dicom-web/studies/{study}", headers={"Accept": "multipart/related; type=application/dicom"})
        assert whole.status_code == 200 and b"DICM" in whole.content and b"SYNTHETIC" in whole.content
        dicom = client.get("/wado", params={**wado, "contentType": "application/dicom"})
        assert dicom.status_code == 200 and dicom.content[128:132] == b"DICM"


def test_everything_but_dicomweb_reads_is_refused(gateway: Gateway, clean_orthanc: OrthancServer) -> None:
    study = gateway.study_uid
    assert clean_orthanc.rest is not None
    with gateway.login() as client:
        cookie = client.cookies[auth.SESSION_COOKIE]
        # Writes, whatever the path: STOW-RS, deletes, Orthanc's REST actions.
        assert client.post("/dicom-web/studies", content=b"x",
                           headers={"Content-Type": "multipart/related; type=application/dicom"}).status_code == 405
        assert client.delete(f"/dicom-web/studies/{study}").status_code == 405
        assert client.put(f"/dicom-web/studies/{study}", content=b"{}").status_code == 405
        assert client.post("/tools/find", json={"Level": "Study", "Query": {}}).status_code == 405
        assert client.request("OPTIONS", "/dicom-web/studies").status_code == 405
        # Orthanc's own REST API and Explorer are not the viewer's: nothing is forwarded.
        for path in ("/tools/find", "/instances", "/studies", f"/studies/{gateway.orthanc_study}", "/system",
                     "/app/explorer.html", "/patients", "/changes", "/modalities", "/jobs", "/web-viewer/app/viewer.html",
                     "/sw.js", "/_headers"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert b"SYNTHETIC" not in answer.content and b"Orthanc" not in answer.content, path
        # DICOMweb paths that are not reads of a study.
        for path in ("/dicom-web/servers", "/dicom-web/info", f"/dicom-web/studies/{study}/series/x",
                     f"/dicom-web/studies/{study}/frames/1", "/dicom-web/studies/1.2.x",
                     "/wado?requestType=WADO", f"/wado?studyUID={study}",
                     f"/dicom-web/studies?StudyInstanceUID={study}&StudyInstanceUID=1.2.3"):
            assert client.get(path).status_code == 403, path
    # Spellings that a decoding server or Orthanc could read as another path.
    for raw in ("/dicom-web/studies/../../tools/find", "/dicom-web/%2e%2e/system", "/dicom-web/studies%2F1.2",
                f"/dicom-web/studies/{study}/series//metadata", "/dicom-web/./servers", "/dicom-web/studies/",
                "/dicom-web//servers"):
        status, body = raw_get(gateway.url, raw, cookie)
        assert status in (403, 404), (raw, status)
        assert b"SYNTHETIC" not in body
    status, _ = raw_get(gateway.url, "/dicom-web/studies", cookie, method="TRACE")
    assert status == 405
    # Nothing changed in Orthanc.
    assert clean_orthanc.rest.get(f"/studies/{gateway.orthanc_study}")["ID"] == gateway.orthanc_study
    assert len(clean_orthanc.rest.get("/instances")) == 3


def test_static_files_and_config(gateway: Gateway) -> None:
    with gateway.login() as client:
        config = client.get("/app-config.js")
        assert config.status_code == 200 and config.headers["cache-control"] == "no-store"
        assert "origin + '/dicom-web'" in config.text and "showStudyList: false" in config.text
        assert gateway.settings.orthanc_password.get_secret_value() not in config.text
        assert str(gateway.settings.orthanc_web_port) not in config.text
        bundle = client.get("/app.bundle.0123456789abcdef.js")
        assert bundle.status_code == 200 and "immutable" in bundle.headers["cache-control"]
        assert bundle.headers["content-type"].startswith("text/javascript")
        page = client.get(f"/viewer?StudyInstanceUIDs={gateway.study_uid}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "OHIF stand-in" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        service_worker = client.get("/init-service-worker.js")
        assert "unregister" in service_worker.text and "importScripts" not in service_worker.text
        root = client.get("/", headers={"Accept": "text/html"})
        assert root.status_code == 303
        assert root.headers["location"] == f"http://127.0.0.1:{gateway.settings.operator_ui_port}/"


def test_a_session_ended_elsewhere_or_logged_out_is_refused(gateway: Gateway) -> None:
    html = {"Accept": "text/html"}
    with gateway.login() as client:
        raw = client.cookies[auth.SESSION_COOKIE]
        assert client.get("/viewer", headers=html).status_code == 200
        with gateway.engine.begin() as conn:  # as the app's logout does
            assert auth.end_session(conn, raw) == "vera"
        # A page load always asks the database.
        assert client.get("/viewer", headers=html).headers["location"] == "/login?next=%2Fviewer&reason=expired"
    with gateway.login() as client:
        logout = client.get("/logout")
        assert logout.status_code == 303 and logout.headers["location"] == "/login?reason=logged_out"
        assert auth.SESSION_COOKIE not in client.cookies
    [entry] = gateway.audit("auth.logout")
    assert (entry.actor, entry.source) == ("vera", AuditSource.VIEWER)


def test_login_form_refusals(gateway: Gateway) -> None:
    with gateway.client() as client:
        form = client.get("/login", params={"next": "https://elsewhere.example/"})
        assert 'name="next" value="/"' in form.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        wrong = client.post("/login", data={"username": "vera", "password": "wrong-password!", "csrf": csrf.group(1)})
        assert wrong.status_code == 200 and "Wrong user name or password." in wrong.text
        assert auth.SESSION_COOKIE not in client.cookies
    with gateway.client() as client:  # no double-submit cookie: a cross-site post
        forged = client.post("/login", data={"username": "vera", "password": PASSWORD, "csrf": "x"})
        assert forged.status_code == 400 and auth.SESSION_COOKIE not in client.cookies
    [failed] = gateway.audit("auth.login_failed")
    assert (failed.actor, failed.source) == ("vera", AuditSource.VIEWER)


def test_orthanc_refusing_the_gateway_is_a_502_without_a_password_prompt(
    gateway: Gateway, tmp_path: Path, hub_values: dict[str, str]
) -> None:
    values = {**gateway.proc.values, "OHIF_PORT": str(free_port()), "ORTHANC_PASSWORD": "not-orthancs-password"}
    other = ViewerProcess(values, tmp_path, dist=gateway.proc.dist, name="wrong-credentials").start()
    try:
        with gateway.login() as client:
            cookie = client.cookies[auth.SESSION_COOKIE]
        answer = httpx.get(f"{other.url}/dicom-web/studies/{gateway.study_uid}/series",
                           cookies={auth.SESSION_COOKIE: cookie}, timeout=30)
        assert answer.status_code == 502
        assert "www-authenticate" not in answer.headers and b"not-orthancs-password" not in answer.content
    finally:
        assert other.stop() in (0, -signal.SIGTERM)
    assert "Orthanc refused the gateway's credentials" in other.log.read_text()
    assert "not-orthancs-password" not in other.log.read_text()


# --- in process, with a clock of our own: the session cache and the audit window ----------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ended_in_the_app_stops_reads_within_the_recheck_interval(qi_db: QiDatabase) -> None:
    engine = make_engine(qi_db.url)
    clock = Clock()
    try:
        with engine.begin() as conn:
            auth.create_user(conn, "vera", PASSWORD, Role.VIEWER, actor="test", source=AuditSource.SETUP, rounds=4)
            raw = auth.start_session(conn, "vera", ttl_s=3600)
        sessions = Sessions(engine, qi_db.settings, recheck_s=5.0, clock=clock)
        first = sessions.check(raw, fresh=False)
        assert first is not None and first.user.username == "vera"
        with engine.begin() as conn:
            auth.end_session(conn, raw)
        clock.now += 4.9  # reads within the interval still pass: the documented bound
        assert sessions.check(raw, fresh=False) == first
        assert sessions.check(raw, fresh=True) is None  # a page load always asks the database
        clock.now += 0.2
        assert sessions.check(raw, fresh=False) is None
        assert sessions.check("x" * 500, fresh=False) is None and sessions.check(None, fresh=False) is None
    finally:
        engine.dispose()


def test_the_audit_window_per_session_and_study(qi_db: QiDatabase) -> None:
    engine = make_engine(qi_db.url)
    clock = Clock()
    recorder = StudyAudit(engine, clock=clock)

    def entries() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT actor, target, after FROM audit_log "
                                          "WHERE action = 'viewer.study_open' ORDER BY id")))

    async def many(session: str, count: int) -> None:
        await asyncio.gather(*(recorder.record("vera", session, "1.2.3") for _ in range(count)))

    try:
        asyncio.run(many("a" * 64, 25))  # concurrent first reads: one write
        assert len(entries()) == 1
        clock.now += 59
        asyncio.run(many("a" * 64, 3))
        assert len(entries()) == 1
        asyncio.run(many("b" * 64, 3))  # another session
        clock.now += 2  # the first session's minute is over
        asyncio.run(many("a" * 64, 3))
        assert [(e.actor, e.target, e.after["session"]) for e in entries()] == [
            ("vera", "study_uid:1.2.3", "a" * 12), ("vera", "study_uid:1.2.3", "b" * 12),
            ("vera", "study_uid:1.2.3", "a" * 12)]
        # A write that fails refuses the read and is tried again by the next one.
        broken = StudyAudit(make_engine(qi_db.url.replace(qi_db.name, "no_such_database")), clock=clock)
        with pytest.raises(SQLAlchemyError):
            asyncio.run(broken.record("vera", "c" * 64, "1.2.3"))
        with pytest.raises(SQLAlchemyError):
            asyncio.run(broken.record("vera", "c" * 64, "1.2.3"))
        broken.engine.dispose()
    finally:
        engine.dispose()
