"""Real health checks of the running services, shared by `run` (waiting) and `status`.

Each probe talks to the service the way its users do: a password login to
PostgreSQL, an authenticated Orthanc REST call, a DICOM C-ECHO, the worker's own
/health (WORKER_HEALTH_PORT), the API's /health (ROUTING_API_PORT, which proxies the
worker's), the app's HTTP port and the viewer gateway (OHIF_PORT: its login form, and a
401 for DICOMweb without a session). Nothing here is inferred from process states alone.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psycopg

from core.orthanc_client import orthanc_verify
from core.settings import OrthancNode, Settings
from ops.stack.supervisor_conf import probe_host

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    url: str
    detail: str
    # Up and answering, but not healthy in a way waiting will not fix (a refused routing.yml):
    # `run` stops waiting for it and reports it; `status` still counts it as unhealthy.
    degraded: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def probe_postgres(settings: Settings) -> Probe:
    url = f"postgresql://{settings.postgres_host}:{settings.postgres_port}/{settings.qi_db}"
    try:
        with psycopg.connect(
            host=settings.postgres_host, port=settings.postgres_port, user=settings.postgres_user,
            password=settings.postgres_password.get_secret_value(), dbname=settings.qi_db,
            connect_timeout=int(TIMEOUT_S),
        ) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        return Probe("postgres", True, url, f"accepts logins (PostgreSQL {version[0] if version else '?'})")
    except psycopg.Error as exc:
        return Probe("postgres", False, url, _first_line(exc))


def probe_orthanc(settings: Settings, node: OrthancNode | None = None) -> Probe:
    """Node `node`'s REST API (node 1 by default), with the .env credentials."""
    node = node or settings.orthanc_node_list[0]
    name, base = node.name, settings.orthanc_node_url(node)
    url = f"{base}/app/explorer.html"
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    try:
        response = httpx.get(f"{base}/system", auth=auth, timeout=TIMEOUT_S, verify=orthanc_verify(settings))
    except httpx.HTTPError as exc:
        return Probe(name, False, url, f"REST API not answering: {_first_line(exc)}")
    except OSError as exc:  # the CA file of HTTPS=on cannot be read
        return Probe(name, False, url, f"cannot verify Orthanc's HTTPS: {_first_line(exc)}")
    if response.status_code == 401:
        return Probe(name, False, url, "REST API refused the credentials from .env (401)")
    if response.status_code != 200:
        return Probe(name, False, url, f"/system answered HTTP {response.status_code}")
    version = response.json().get("Version", "?")
    return Probe(name, True, url, f"REST API answers with the .env credentials (Orthanc {version})")


def probe_dicom(settings: Settings, node: OrthancNode | None = None) -> Probe:
    """Node `node`'s DICOM port (node 1 by default): a C-ECHO, or the port open without dcmtk."""
    node = node or settings.orthanc_node_list[0]
    name = "dicom" if node.index == 1 else f"dicom{node.index}"
    host = probe_host(settings.orthanc_host)
    url = f"dicom://{settings.orthanc_aet}@{host}:{node.dicom_port}"
    echoscu = shutil.which("echoscu", path="/usr/bin:/usr/local/bin")
    if echoscu is None:
        try:
            with socket.create_connection((host, node.dicom_port), timeout=TIMEOUT_S):
                return Probe(name, True, url, "port open (install dcmtk for a C-ECHO)")
        except OSError as exc:
            return Probe(name, False, url, _first_line(exc))
    seconds = str(int(TIMEOUT_S))
    # DICOM_TLS=on: the port speaks TLS only; echo as the hub itself (its certificate, the CA).
    tls = (["+tls", str(settings.tls_key_path), str(settings.tls_cert_path), "+cf", str(settings.tls_ca_path)]
           if settings.dicom_tls else [])
    if tls:
        url = url.replace("dicom://", "dicom+tls://")
    try:
        proc = subprocess.run(
            [echoscu, "-aet", "HUBSTATUS", "-aec", settings.orthanc_aet, "-to", seconds, "-ta", seconds,
             "-td", seconds, *tls, host, str(node.dicom_port)],
            capture_output=True, text=True, timeout=TIMEOUT_S * 4, check=False,
        )
    except subprocess.TimeoutExpired:
        return Probe(name, False, url, "C-ECHO timed out")
    if proc.returncode == 0:
        return Probe(name, True, url, "C-ECHO succeeded")
    return Probe(name, False, url, f"C-ECHO failed: {(proc.stderr or proc.stdout).strip()[:200]}")


def worker_health_url(settings: Settings) -> str:
    """The worker's own /health (loopback natively; compose publishes it on the host's loopback)."""
    return f"http://{probe_host(settings.worker_health_host)}:{settings.worker_health_port}/health"


def probe_worker(settings: Settings) -> Probe:
    url = worker_health_url(settings)
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Probe("worker", False, url, f"not answering: {_first_line(exc)}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = f"status {body.get('status', '?')} (orthanc {body.get('orthanc')}, database {body.get('database')})"
    problems = [str(p) for p in body.get("problems") or []]
    if problems:  # e.g. "degraded: routing.yml refused at line 12, running on rules of 14:05"
        detail = f"degraded: {'; '.join(problems)} (orthanc {body.get('orthanc')}, database {body.get('database')})"
    storage = body.get("storage") or {}
    if storage.get("status", "ok") != "ok":  # a warning: the worker itself still works
        detail += f"; {storage.get('message')}"
    degraded = bool(problems) and bool(body.get("orthanc")) and bool(body.get("database"))
    return Probe("worker", response.status_code == 200, url, f"HTTP {response.status_code}: {detail}", degraded)


def probe_api(settings: Settings) -> Probe:
    """The workflow API answers on ROUTING_API_PORT: its /health (open, no token) is the worker's,
    proxied; the API is up when it answers with the worker's status, whatever that status is."""
    base = f"http://{probe_host(settings.bind_address)}:{settings.routing_api_port}"
    try:
        response = httpx.get(f"{base}/health", timeout=TIMEOUT_S * 2)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Probe("api", False, f"{base}/v1/", f"not answering: {_first_line(exc)}")
    status = body.get("status", "?") if isinstance(body, dict) else "?"
    return Probe("api", response.status_code in (200, 503) and status != "?", f"{base}/v1/",
                 f"answers; /health proxies the worker's: {status} (HTTP {response.status_code})")


def probe_app(settings: Settings) -> Probe:
    base = f"http://{probe_host(settings.bind_address)}:{settings.operator_ui_port}"
    try:
        health = httpx.get(f"{base}/_stcore/health", timeout=TIMEOUT_S)
        page = httpx.get(f"{base}/", timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Probe("app", False, base + "/", f"not answering: {_first_line(exc)}")
    ok = health.status_code == 200 and page.status_code == 200
    return Probe("app", ok, base + "/", f"health HTTP {health.status_code}, page HTTP {page.status_code}")


def probe_viewer(settings: Settings) -> Probe:
    """The OHIF gateway on OHIF_PORT answers its login form and refuses DICOMweb without a session."""
    base = f"http://{probe_host(settings.bind_address)}:{settings.ohif_port}"
    try:
        login = httpx.get(f"{base}/login", timeout=TIMEOUT_S)
        refused = httpx.get(f"{base}/dicom-web/studies", timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Probe("viewer", False, base + "/", f"not answering: {_first_line(exc)}")
    ok = login.status_code == 200 and refused.status_code == 401
    return Probe("viewer", ok, base + "/", f"login page HTTP {login.status_code}, DICOMweb without a session "
                                           f"HTTP {refused.status_code} (401 expected)")


def held_destinations(settings: Settings) -> list[str]:
    """One line per held destination: "LPCHROUTER  outage since 14:05, 3 jobs waiting".

    Not a probe: a PACS that is down is not the hub being unhealthy. Empty when
    nothing is held, and when the QI database is down (the postgres probe says so).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from core import queries
    from core.db import engine_for

    engine = engine_for(settings, connect_args={"connect_timeout": int(TIMEOUT_S)})
    try:
        with engine.connect() as conn:
            held = queries.held_destinations(conn)
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()
    width = max((len(s.destination) for s in held), default=0)
    return [f"{s.destination:<{width}}  {s.summary(settings.zone)}" for s in held]


PROBES: dict[str, Callable[[Settings], Probe]] = {
    "postgres": probe_postgres,
    "orthanc": probe_orthanc,
    "dicom": probe_dicom,
    "worker": probe_worker,
    "api": probe_api,
    "app": probe_app,
    "viewer": probe_viewer,
}
# Which supervisord program each probe belongs to.
PROBE_SERVICE = {"postgres": "postgres", "orthanc": "orthanc", "dicom": "orthanc", "worker": "worker", "api": "api",
                 "app": "app", "viewer": "viewer"}


def probe_all(settings: Settings) -> list[Probe]:
    """Every service's probe; with ORTHANC_NODES > 1, each further node's REST API and DICOM port too."""
    extra = [probe(settings, node) for node in settings.orthanc_node_list[1:] for probe in (probe_orthanc, probe_dicom)]
    return [probe(settings) for probe in PROBES.values()] + extra


def wait_healthy(
    settings: Settings, names: list[str], timeout: float, failed: Callable[[], str | None] | None = None
) -> list[Probe]:
    """Probe `names` until all are healthy or degraded (up, but waiting would not help);
    raise TimeoutError listing the unhealthy ones.

    `failed` is called between rounds: when it returns a message (a program died),
    waiting stops at once with that message instead of running out the clock.
    """
    deadline = time.monotonic() + timeout
    while True:
        results = [PROBES[name](settings) for name in names]
        if all(p.ok or p.degraded for p in results):
            return results
        if failed is not None:
            message = failed()
            if message:
                raise TimeoutError(message)
        if time.monotonic() > deadline:
            bad = "; ".join(f"{p.name}: {p.detail}" for p in results if not p.ok)
            raise TimeoutError(f"not healthy after {timeout:.0f} s: {bad}")
        time.sleep(0.5)
