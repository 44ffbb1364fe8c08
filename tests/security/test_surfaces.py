"""Every network surface refuses the unauthenticated, on the harness's real servers.

Orthanc's REST API and DICOMweb answer 401 without or with wrong credentials; Orthanc
refuses Lua execution even with the right ones and refuses queries and retrieves
(C-FIND, C-MOVE, C-GET) from callers it does not know; PostgreSQL refuses TCP logins
without or with a wrong password (pg_hba written by ops/pgcluster.py: scram-sha-256
over TCP, peer on the private Unix socket) and listens on BIND_ADDRESS only; the
worker's /health and /metrics listen on BIND_ADDRESS (127.0.0.1) only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from core.settings import Settings
from ops import pgcluster
from testkit.dicom_peers import send_datasets
from testkit.harness.stack import OrthancServer, PostgresServer
from testkit.harness.worker_proc import WorkerProcess
from testkit.synthetic import make_study
from tests.security.sockets import listening_addresses

pytestmark = pytest.mark.integration

# (method, path): reading PHI, changing destinations, running code, DICOMweb and WADO.
ORTHANC_ENDPOINTS = (
    ("GET", "/system"), ("GET", "/studies"), ("GET", "/patients"), ("GET", "/instances"),
    ("GET", "/dicom-web/studies"), ("GET", "/dicom-web/series"), ("GET", "/wado?requestType=WADO"),
    ("GET", "/modalities"), ("PUT", "/modalities/EVIL"), ("DELETE", "/modalities/PACS"),
    ("POST", "/tools/execute-script"), ("POST", "/tools/find"), ("POST", "/instances"),
    ("GET", "/jobs"), ("GET", "/changes"), ("GET", "/app/explorer.html"), ("GET", "/web-viewer/app/viewer.html"),
    ("POST", "/tools/reset"), ("POST", "/tools/shutdown"),
)
BODIES = {"/modalities/EVIL": b'{"AET": "EVIL", "Host": "127.0.0.1", "Port": 104}',
          "/tools/execute-script": b'os.execute("touch /tmp/pwned")', "/tools/find": b'{"Level": "Study", "Query": {}}'}


def test_orthanc_rest_and_dicomweb_refuse_missing_and_wrong_credentials(orthanc: OrthancServer) -> None:
    user, password = orthanc.auth
    attempts = {"none": None, "wrong password": (user, password + "x"), "wrong user": ("admin", password),
                "empty": ("", "")}
    with httpx.Client(base_url=orthanc.url, timeout=10) as http:
        for method, path in ORTHANC_ENDPOINTS:
            for label, auth in attempts.items():
                response = http.request(method, path, auth=auth, content=BODIES.get(path.split("?")[0]))
                assert response.status_code == 401, f"{method} {path} with {label} credentials"
                assert response.headers.get("www-authenticate", "").startswith("Basic")
        # The right credentials do open it (the 401s above are authentication, not a dead URL).
        assert http.get("/system", auth=(user, password)).status_code == 200
        assert http.get("/dicom-web/studies", auth=(user, password)).status_code == 200
    assert orthanc.proc is not None and orthanc.proc.poll() is None  # /tools/shutdown did nothing


def test_orthanc_refuses_lua_and_file_writes_even_to_its_admin(clean_orthanc: OrthancServer, tmp_path: Path) -> None:
    """Orthanc's credentials must not become code execution or file writes on the server."""
    marker, exported = tmp_path / "pwned", tmp_path / "exported.dcm"
    assert send_datasets(make_study(1, 1, "EXPORT"), "127.0.0.1", clean_orthanc.dicom_port, "MOD1",
                         clean_orthanc.aet) == [0]
    with httpx.Client(base_url=clean_orthanc.url, auth=clean_orthanc.auth, timeout=10) as http:
        response = http.post("/tools/execute-script", content=f'os.execute("touch {marker}")'.encode())
        assert response.status_code == 403, response.text
        [instance] = http.get("/instances").json()
        response = http.post(f"/instances/{instance}/export", content=str(exported).encode())
        assert response.status_code == 403, response.text
    assert not marker.exists() and not exported.exists()


def _query(orthanc: OrthancServer, context: str, send: str) -> tuple[list[int], list[Dataset]]:
    """One C-FIND/C-MOVE/C-GET as the AET STRANGER: the statuses and identifiers received."""
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = ""
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established
    try:
        if send == "find":
            responses = list(assoc.send_c_find(query, context))
        elif send == "move":
            responses = list(assoc.send_c_move(query, "STRANGER", context))
        else:
            responses = list(assoc.send_c_get(query, context))
    finally:
        if assoc.is_established:
            assoc.release()
    statuses = [int(status.Status) for status, _ in responses if "Status" in status]
    return statuses, [ident for _, ident in responses if ident is not None]


RETRIEVALS = {"find": StudyRootQueryRetrieveInformationModelFind, "move": StudyRootQueryRetrieveInformationModelMove,
              "get": StudyRootQueryRetrieveInformationModelGet}


def test_orthanc_refuses_queries_and_retrieves_from_unknown_callers(clean_orthanc: OrthancServer) -> None:
    """Anyone may store and echo (a routing hub's job); nobody unknown may read studies back."""
    assert send_datasets(make_study(1, 1, "SECRET KNEE"), "127.0.0.1", clean_orthanc.dicom_port, "MOD1",
                         clean_orthanc.aet) == [0]
    for send, context in RETRIEVALS.items():
        statuses, identifiers = _query(clean_orthanc, context, send)
        assert identifiers == [] and not [s for s in statuses if s in (0x0000, 0xFF00, 0xFF01)], (send, statuses)
    assert "Rejected Find request" in clean_orthanc.log_text()
    # Control: once Orthanc knows the AET, the same query finds the study.
    rest = clean_orthanc.rest
    assert rest is not None
    rest.put_modality("STRANGER", "STRANGER", 104)
    try:
        statuses, identifiers = _query(clean_orthanc, StudyRootQueryRetrieveInformationModelFind, "find")
        assert len(identifiers) == 1 and statuses[-1] == 0x0000
    finally:
        rest.delete("/modalities/STRANGER")


def test_postgresql_refuses_tcp_logins_without_the_password(pg_server: PostgresServer, hub_settings: Settings) -> None:
    s = hub_settings
    base = {"host": s.postgres_host, "port": s.postgres_port, "dbname": s.postgres_db, "connect_timeout": 5}
    attempts = {
        "no password": {"user": s.postgres_user},
        "wrong password": {"user": s.postgres_user, "password": s.postgres_password.get_secret_value() + "x"},
        "superuser, no password": {"user": pgcluster.SUPERUSER},
        "superuser, service password": {"user": pgcluster.SUPERUSER,
                                        "password": s.postgres_password.get_secret_value()},
        "grafana, wrong password": {"user": pgcluster.GRAFANA_ROLE, "password": "grafana"},
    }
    for label, params in attempts.items():
        try:
            psycopg.connect(**base, **params, passfile="/dev/null").close()
        except psycopg.OperationalError as exc:
            assert "password" in str(exc), (label, str(exc))
        else:
            pytest.fail(f"PostgreSQL accepted a TCP login with {label}")
    # The read-only role may not even connect to Orthanc's index (it holds PHI).
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(**base, user=pgcluster.GRAFANA_ROLE, password=s.grafana_db_password.get_secret_value()).close()
    with psycopg.connect(**base, user=s.postgres_user, password=s.postgres_password.get_secret_value()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (s.postgres_user,)


def _hba_rules(datadir: Path) -> list[list[str]]:
    lines = (datadir / "pg_hba.conf").read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pg_hba_uses_scram_over_tcp_and_peer_on_the_private_socket(
    pg_server: PostgresServer, hub_settings: Settings
) -> None:
    rules = _hba_rules(pg_server.datadir)
    assert rules, "pg_hba.conf has no rules"
    assert {r[0] for r in rules} <= {"local", "host"}  # no hostnossl/hostssl surprises
    assert all(r[-1] == "scram-sha-256" for r in rules if r[0] == "host"), rules
    assert all(r[-1] == "peer" for r in rules if r[0] == "local"), rules
    assert not [r for r in rules if "trust" in r or "password" in r or "md5" in r]
    for rule in (r for r in rules if r[0] == "host"):
        assert rule[3] in ("127.0.0.1/32", "::1/128"), rule  # loopback only
    with pg_server.connect() as conn:
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        assert conn.execute("SHOW listen_addresses").fetchone() == (hub_settings.bind_address,)
        socket_dir = conn.execute("SHOW unix_socket_directories").fetchone()[0]
        verifiers = conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL").fetchall()
    assert verifiers and all(v.startswith("SCRAM-SHA-256$") for _, v in verifiers), [r for r, _ in verifiers]
    assert listening_addresses(hub_settings.postgres_port) == {hub_settings.bind_address}
    # The Unix socket lives in the data directory (mode 700, owned by postgres) and uses
    # peer authentication: root, connecting as the superuser role, is refused.
    assert Path(socket_dir) == pg_server.datadir.resolve()
    assert pg_server.datadir.stat().st_mode & 0o077 == 0
    with pytest.raises(psycopg.OperationalError, match="[Pp]eer authentication failed"):
        psycopg.connect(host=socket_dir, port=hub_settings.postgres_port, user=pgcluster.SUPERUSER,
                        dbname="postgres", connect_timeout=5).close()


def test_worker_health_and_metrics_listen_on_loopback_only(
    env: dict, workers: Callable[..., WorkerProcess]
) -> None:
    assert env["BIND_ADDRESS"] == "127.0.0.1"
    worker = workers(env)
    port = int(env["ROUTING_API_PORT"])
    assert listening_addresses(port) == {"127.0.0.1"}
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert metrics.status_code == 200 and "hub_" in metrics.text
    assert worker.health()["status"] in ("ok", "degraded")
    # Nothing in the metrics names a patient or a password: counts and states only.
    assert not re.search(r"PatientName|password|DOE\^", metrics.text, re.IGNORECASE)
