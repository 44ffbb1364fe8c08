"""Issue 15, part 2: DICOM TLS and HTTPS, opt-in, against the real Orthanc 1.10.1.

An Orthanc of its own (own index database) is started by the test harness from settings
with DICOM_TLS=on and HTTPS=on, exactly as `make run` prepares it: ops/tls.py generates
the local CA and the hub's certificate in TLS_DIR, writes the HTTPS PEM and builds the
library Debian's Orthanc needs for HTTPS (stack/orthanc/civetweb-openssl3.c).

- DICOM TLS: C-ECHO and C-STORE with DCMTK (echoscu/storescu +tls) and pynetdicom (an
  ssl.SSLContext) succeed and the instances are in Orthanc; a plain association, an
  anonymous TLS client and a client whose certificate another CA signed are refused.
- HTTPS: verified against the hub's CA it answers, plain http and an unverified client
  fail; the hub's OrthancClient, the status probes and the harness all use https.
- Orthanc calls a destination over DICOM TLS (MODALITY_ line `tls`, UseDicomTls): echo
  and store reach a TLS-only pynetdicom SCP; the same SCP called without TLS, or with a
  certificate from another CA, is not reached.
- Certificates: files and modes, the CA verifies the hub's certificate, nothing is
  overwritten, no key material is printed; the settings refuse bad site files by name.
"""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from core.dicom_names import parse_modality_line
from core.orthanc_client import OrthancClient
from core.settings import PROJECT_ROOT, Settings, SettingsError, settings_from_values
from ops import tls
from ops.orthanc_config import COMPOSE, orthanc_env, render_orthanc_config
from ops.stack.probes import probe_dicom, probe_orthanc
from ops.tooling.seed import apply_modalities
from testkit.dicom_peers import AssociationFailed, StorageSCP, echo, free_port, send_datasets
from testkit.harness.stack import OrthancServer, PostgresServer
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


# --- fixtures ---------------------------------------------------------------------------


def _tls_values(hub_values: dict[str, str], base: Path, **overrides: str) -> dict[str, str]:
    return {
        **hub_values,
        "POSTGRES_DB": f"orthanc_tls_{uuid.uuid4().hex[:10]}",
        "DICOM_STORAGE": str(base / "storage"),
        "STATE_DIR": str(base / "state"),
        "ORTHANC_WEB_PORT": str(free_port()),
        "DICOM_PORT": str(free_port()),
        "DICOM_TLS": "on",
        "HTTPS": "on",
        "DICOM_TLS_REMOTE_CERT_REQUIRED": "on",
        **overrides,
    }


@pytest.fixture(scope="module")
def tls_orthanc(hub_values: dict[str, str], pg_server: PostgresServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Orthanc with DICOM_TLS=on and HTTPS=on, its files generated as `make run` does."""
    base = tmp_path_factory.mktemp("tls")
    settings = settings_from_values(_tls_values(hub_values, base))
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    server = OrthancServer(settings, base / "orthanc")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        pg_server.drop_database(settings.postgres_db)


@pytest.fixture(scope="module")
def peers(tls_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Certificates (cert, key) of peers: `modality` from the hub's CA (`./orthanc tls issue`),
    `rogue` from a CA Orthanc does not trust."""
    out = tmp_path_factory.mktemp("peers")
    trusted = tls.issue_peer(tls_orthanc.settings, "modality", out, ["127.0.0.1", "localhost"])
    rogue_ca = tls.make_ca("Somebody else's CA")
    rogue = tls.issue(rogue_ca, "rogue", ["localhost"], [])
    tls.write_pair(rogue, out / "rogue.crt", out / "rogue.key")
    (out / "rogue-ca.crt").write_bytes(tls.cert_pem(rogue_ca.cert))
    return {"modality": trusted, "rogue": (out / "rogue.crt", out / "rogue.key")}


def _client_context(settings: Settings, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A DICOM TLS client's context: trusts the hub's CA, presents `cert` (None: no certificate)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca_path))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _stored(orthanc: OrthancServer, sop_uid: str) -> bool:
    assert orthanc.rest is not None
    return orthanc.rest.lookup(sop_uid, level="Instance") is not None


def _dcmtk_tls(settings: Settings, cert: tuple[Path, Path]) -> list[str]:
    return ["+tls", str(cert[1]), str(cert[0]), "+cf", str(settings.tls_ca_path)]


# --- configuration -----------------------------------------------------------------------


def test_tls_is_off_by_default_and_rendered_from_the_one_template(hub_settings: Settings,
                                                                  tls_orthanc: OrthancServer) -> None:
    off = render_orthanc_config(hub_settings)
    assert (off["DicomTlsEnabled"], off["SslEnabled"], off["DicomWeb"]["Ssl"]) == (False, False, False)
    # Orthanc 1.10.1 refuses to start when a DicomTls* path names a missing file: empty while off.
    assert [off[k] for k in ("DicomTlsCertificate", "DicomTlsPrivateKey", "DicomTlsTrustedCertificates",
                             "SslCertificate")] == ["", "", "", ""]
    assert hub_settings.orthanc_url.startswith("http://") and "LD_LIBRARY_PATH" not in orthanc_env(
        hub_settings, base={})

    settings = tls_orthanc.settings
    on = render_orthanc_config(settings)
    assert on["DicomTlsEnabled"] is True and on["SslEnabled"] is True and on["DicomWeb"]["Ssl"] is True
    assert on["DicomTlsRemoteCertificateRequired"] is True
    assert on["DicomTlsCertificate"] == str(settings.tls_dir / "hub.crt")
    assert on["DicomTlsPrivateKey"] == str(settings.tls_dir / "hub.key")
    assert on["DicomTlsTrustedCertificates"] == str(settings.tls_dir / "ca.crt")
    assert on["SslCertificate"] == str(settings.tls_dir / "orthanc-https.pem")
    assert render_orthanc_config(settings, target=COMPOSE)["SslCertificate"] == on["SslCertificate"]
    assert settings.orthanc_url == f"https://{settings.orthanc_host}:{settings.orthanc_web_port}"

    # The one PEM of Orthanc's HTTPS: key then certificate, mode 600.
    pem = settings.https_pem_path
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_text() == settings.tls_key_path.read_text().strip() + "\n" + settings.tls_cert_path.read_text()
    shim = tls.civetweb_openssl_dir(settings)
    assert orthanc_env(settings, base={})["LD_LIBRARY_PATH"] == str(shim)
    assert (shim / "libssl.so").is_file() and (shim / "libcrypto.so").resolve().name == "libcrypto.so.3"


# --- DICOM TLS into Orthanc --------------------------------------------------------------


def test_dcmtk_echo_and_store_over_tls(tls_orthanc: OrthancServer, peers: dict[str, tuple[Path, Path]],
                                       tmp_path: Path) -> None:
    settings = tls_orthanc.settings
    port, aet = str(tls_orthanc.dicom_port), tls_orthanc.aet
    tls_args = _dcmtk_tls(settings, peers["modality"])
    proc = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", aet, *tls_args, LOOPBACK, port],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    study = make_study(1, 2, "TLS DCMTK")
    files = []
    for i, ds in enumerate(study):
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    proc = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", aet, *tls_args, LOOPBACK, port,
                           *map(str, files)], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "TCP_NODELAY": "1"})
    assert proc.returncode == 0, proc.stderr
    assert all(_stored(tls_orthanc, str(ds.SOPInstanceUID)) for ds in study)


def test_pynetdicom_echo_and_store_over_tls(tls_orthanc: OrthancServer,
                                            peers: dict[str, tuple[Path, Path]]) -> None:
    settings = tls_orthanc.settings
    context = _client_context(settings, peers["modality"])
    # The hub's certificate names 127.0.0.1: the client checks the host name too.
    assert echo(LOOPBACK, tls_orthanc.dicom_port, "MODALITY", tls_orthanc.aet, tls=(context, LOOPBACK)) == 0
    study = make_study(2, 2, "TLS PYNETDICOM")
    statuses = send_datasets(study, LOOPBACK, tls_orthanc.dicom_port, "MODALITY", tls_orthanc.aet,
                             tls=(context, LOOPBACK))
    assert statuses == [0] * len(study)
    assert all(_stored(tls_orthanc, str(ds.SOPInstanceUID)) for ds in study)
    assert tls_orthanc.rest is not None
    instance = tls_orthanc.rest.lookup(str(study[0].SOPInstanceUID), level="Instance")
    assert tls_orthanc.rest.http.get(f"/instances/{instance}/metadata/RemoteAET").text == "MODALITY"


def test_a_plain_association_to_the_tls_port_is_refused(tls_orthanc: OrthancServer) -> None:
    study = make_study(1, 1, "PLAIN REFUSED")
    assert echo(LOOPBACK, tls_orthanc.dicom_port, "PLAIN", tls_orthanc.aet, timeout=5) == -1
    with pytest.raises(AssociationFailed):
        send_datasets(study, LOOPBACK, tls_orthanc.dicom_port, "PLAIN", tls_orthanc.aet, timeout=5)
    proc = subprocess.run(["echoscu", "-aet", "PLAIN", "-aec", tls_orthanc.aet, "-to", "5", "-ta", "5", "-td", "5",
                           LOOPBACK, str(tls_orthanc.dicom_port)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0
    assert not _stored(tls_orthanc, str(study[0].SOPInstanceUID))


def test_a_client_without_a_certificate_from_the_trusted_ca_is_refused(
    tls_orthanc: OrthancServer, peers: dict[str, tuple[Path, Path]]
) -> None:
    settings = tls_orthanc.settings
    study = make_study(1, 1, "ROGUE REFUSED")
    port, aet = tls_orthanc.dicom_port, tls_orthanc.aet
    for name, cert in (("rogue", peers["rogue"]), ("anonymous", None)):
        context = _client_context(settings, cert)
        assert echo(LOOPBACK, port, "ROGUE", aet, timeout=5, tls=(context, LOOPBACK)) == -1, name
        with pytest.raises(AssociationFailed):
            send_datasets(study, LOOPBACK, port, "ROGUE", aet, timeout=5, tls=(context, LOOPBACK))
    for args in (_dcmtk_tls(settings, peers["rogue"]), ["+tla", "+cf", str(settings.tls_ca_path)]):
        proc = subprocess.run(["echoscu", "-aet", "ROGUE", "-aec", aet, *args, LOOPBACK, str(port)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode != 0, args
    assert not _stored(tls_orthanc, str(study[0].SOPInstanceUID))
    # Control: the same client with a certificate from the hub's CA is let in.
    assert echo(LOOPBACK, port, "MODALITY", aet, tls=(_client_context(settings, peers["modality"]), LOOPBACK)) == 0


# --- HTTPS -------------------------------------------------------------------------------


def test_https_verified_with_the_hubs_ca_and_nothing_else(tls_orthanc: OrthancServer) -> None:
    settings = tls_orthanc.settings
    port = settings.orthanc_web_port
    verified = ssl.create_default_context(cafile=str(settings.tls_ca_path))
    response = httpx.get(f"https://{LOOPBACK}:{port}/system", auth=tls_orthanc.auth, verify=verified, timeout=10)
    assert response.status_code == 200 and response.json()["Version"] == "1.10.1"
    # Orthanc is still up (Debian's civetweb without the library crashes on the first request).
    assert httpx.get(f"https://localhost:{port}/system", auth=tls_orthanc.auth, verify=verified,
                     timeout=10).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{LOOPBACK}:{port}/system", auth=tls_orthanc.auth, timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{LOOPBACK}:{port}/system", auth=tls_orthanc.auth, timeout=10)  # the system's CAs
    assert tls_orthanc.proc is not None and tls_orthanc.proc.poll() is None


def test_the_hubs_clients_and_probes_use_https(tls_orthanc: OrthancServer) -> None:
    settings = tls_orthanc.settings
    with OrthancClient.from_settings(settings, timeout=10) as client:
        assert client.system()["Version"] == "1.10.1"
        assert client.statistics()["CountInstances"] >= 0
    orthanc = probe_orthanc(settings)
    assert orthanc.ok and orthanc.url.startswith("https://"), orthanc
    dicom = probe_dicom(settings)  # echoscu +tls with the hub's own certificate
    assert dicom.ok and dicom.url.startswith("dicom+tls://"), dicom


# --- Orthanc calling a TLS destination --------------------------------------------------


def _tls_scp(settings: Settings, cert: tuple[Path, Path], tmp_path: Path, name: str) -> StorageSCP:
    """A TLS-only storage SCP that requires a client certificate from the hub's CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.tls_ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(*cert)
    return StorageSCP(name, free_port(), tmp_path / name, ssl_context=context).start()


def test_orthanc_sends_to_a_destination_over_dicom_tls(
    tls_orthanc: OrthancServer, peers: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    settings = tls_orthanc.settings
    assert tls_orthanc.rest is not None
    tls_orthanc.rest.reset()
    pacs = _tls_scp(settings, peers["modality"], tmp_path, "TLSPACS")
    rogue = _tls_scp(settings, peers["rogue"], tmp_path, "ROGUEPACS")
    try:
        wanted = [parse_modality_line("TLSPACS", f"TLSPACS|{LOOPBACK}|{pacs.port}|tls"),
                  parse_modality_line("PLAINPACS", f"TLSPACS|{LOOPBACK}|{pacs.port}"),
                  parse_modality_line("ROGUEPACS", f"ROGUEPACS|{LOOPBACK}|{rogue.port}|tls")]
        with OrthancClient.from_settings(settings, timeout=30) as client:
            assert {o.action for o in apply_modalities(client, wanted)} == {"created"}
            # Orthanc reports UseDicomTls, so a second `make seed-modalities` changes nothing.
            assert {o.action for o in apply_modalities(client, wanted)} == {"unchanged"}
            assert client.modalities()["TLSPACS"]["UseDicomTls"] is True
            assert client.echo("TLSPACS", timeout=10).ok
            assert not client.echo("PLAINPACS", timeout=5).ok  # the same SCP, called without TLS
            assert not client.echo("ROGUEPACS", timeout=5).ok  # a certificate Orthanc does not trust
            study = make_study(1, 3, "TLS SEND")
            context = _client_context(settings, peers["modality"])
            assert send_datasets(study, LOOPBACK, tls_orthanc.dicom_port, "MODALITY", tls_orthanc.aet,
                                 tls=(context, LOOPBACK)) == [0, 0, 0]
            study_id = client.lookup_study(str(study[0].StudyInstanceUID))
            assert study_id is not None
            job = tls_orthanc.rest.wait_job(client.store_async("TLSPACS", [study_id]))
            assert job["State"] == "Success", job
        assert pacs.wait_for(3, timeout=30)
        assert {r.calling_aet for r in pacs.history} == {settings.orthanc_aet}
        assert rogue.total_receipts == 0
    finally:
        pacs.stop()
        rogue.stop()


def test_a_tls_destination_without_dicom_tls_on_orthancs_own_port(
    hub_values: dict[str, str], pg_server: PostgresServer, tmp_path: Path
) -> None:
    """A MODALITY_ line's `tls` alone: Orthanc's port stays plain, the destination gets TLS."""
    port = free_port()
    values = _tls_values(hub_values, tmp_path, DICOM_TLS="off", HTTPS="off",
                         MODALITY_TLSPACS=f"TLSPACS|{LOOPBACK}|{port}|tls")
    settings = settings_from_values(values)
    assert settings.dicom_tls_in_use and not settings.dicom_tls
    config = render_orthanc_config(settings)
    assert config["DicomTlsEnabled"] is False and config["DicomTlsCertificate"] == str(settings.tls_cert_path)
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    orthanc = OrthancServer(settings, tmp_path / "orthanc")
    try:
        orthanc.start()  # generates the CA and the hub's certificate, as `make run` does
        cert = tls.issue_peer(settings, "pacs", tmp_path / "peers", [LOOPBACK])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.tls_ca_path))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(*cert)
        pacs = StorageSCP("TLSPACS", port, tmp_path / "pacs", ssl_context=context).start()
        try:
            study = make_study(1, 2, "TLS OUT ONLY")
            assert send_datasets(study, LOOPBACK, orthanc.dicom_port, "MODALITY", orthanc.aet) == [0, 0]  # plain in
            with OrthancClient.from_settings(settings, timeout=30) as client:
                apply_modalities(client, list(settings.modalities.values()))
                study_id = client.lookup_study(str(study[0].StudyInstanceUID))
                assert study_id is not None
                assert orthanc.rest is not None
                assert orthanc.rest.wait_job(client.store_async("TLSPACS", [study_id]))["State"] == "Success"
            assert pacs.wait_for(2, timeout=30)
        finally:
            pacs.stop()
    finally:
        orthanc.stop()
        pg_server.drop_database(settings.postgres_db)


def test_the_compose_stack_refuses_tls(hub_values: dict[str, str], tmp_path: Path) -> None:
    from ops.stack import compose

    compose.check_no_tls(_settings(hub_values, tmp_path))  # off: nothing to refuse
    for overrides, named in (({"DICOM_TLS": "on"}, "DICOM_TLS=on"), ({"HTTPS": "on"}, "HTTPS=on"),
                             ({"MODALITY_PACS": "PACS|127.0.0.1|104|tls"}, "MODALITY_PACS (tls)")):
        with pytest.raises(compose.ComposeError, match=named.replace("(", r"\(").replace(")", r"\)")):
            compose.check_no_tls(_settings(hub_values, tmp_path, **overrides))


# --- certificates --------------------------------------------------------------------------


def _settings(hub_values: dict[str, str], tmp_path: Path, **overrides: str) -> Settings:
    return settings_from_values({**hub_values, "STATE_DIR": str(tmp_path / "state"), **overrides})


def test_generated_certificates(hub_values: dict[str, str], tmp_path: Path) -> None:
    settings = _settings(hub_values, tmp_path, DICOM_TLS="on", TLS_SERVER_NAMES="hub.example.org, 10.9.8.7")
    assert settings.tls_dir == tmp_path / "state" / "tls" and not settings.tls_site_files
    done = tls.generate(settings)
    assert len(done) == 2
    files = {name: settings.tls_dir / name for name in ("ca.crt", "ca.key", "hub.crt", "hub.key")}
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in files.items()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "hub.crt": 0o644, "hub.key": 0o600}
    assert not any("PRIVATE KEY" in line for line in done)

    ca = x509.load_pem_x509_certificate(files["ca.crt"].read_bytes())
    hub = x509.load_pem_x509_certificate(files["hub.crt"].read_bytes())
    hub.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "hub.example.org"} <= dns and {"127.0.0.1", "::1", "10.9.8.7"} <= ips
    assert settings.orthanc_host in dns | ips
    assert tls.check(settings) == ([], [])
    # OpenSSL agrees: a TLS client trusting ca.crt accepts hub.crt for 127.0.0.1.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files["hub.crt"], files["hub.key"])
    client = ssl.create_default_context(cafile=str(files["ca.crt"]))
    _handshake(server, client, LOOPBACK)

    before = {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in files.items()}
    assert tls.generate(settings) == []  # a second run (every `make run`) overwrites nothing
    assert tls.prepare(settings, out=lambda line: pytest.fail(f"unexpected: {line}")) == [
        files["ca.crt"], files["hub.crt"], files["hub.key"]]
    assert {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in files.items()} == before

    assert len(tls.generate(settings, renew=True)) == 1  # RENEW=1: a new certificate, the same CA
    assert files["ca.crt"].read_bytes() == before["ca.crt"][0]
    assert files["hub.crt"].read_bytes() != before["hub.crt"][0]
    assert stat.S_IMODE(files["hub.key"].stat().st_mode) == 0o600
    x509.load_pem_x509_certificate(files["hub.crt"].read_bytes()).verify_directly_issued_by(ca)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    import socket
    import threading

    listener = socket.create_server((LOOPBACK, 0))
    errors: list[BaseException] = []

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=accept)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw, client.wrap_socket(
            raw, server_hostname=hostname) as conn:
        conn.sendall(b"x")
    thread.join(10)
    listener.close()
    assert errors == []


def test_the_cli_generates_once_and_prints_no_key(hub_values: dict[str, str], tmp_path: Path) -> None:
    from testkit.harness.stack import write_env

    env_file = write_env({**hub_values, "STATE_DIR": str(tmp_path / "state"), "HTTPS": "on"}, tmp_path / ".env")
    argv = [sys.executable, "-m", "ops.tls_cli", "generate", "--env-file", str(env_file)]
    first = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "created the local CA" in first.stdout and "PRIVATE KEY" not in first.stdout + first.stderr
    key = tmp_path / "state" / "tls" / "hub.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    second = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, check=False)
    assert second.returncode == 0 and "nothing changed" in second.stdout
    assert key.read_bytes() == before


def test_site_files_are_validated_by_name(hub_values: dict[str, str], tmp_path: Path) -> None:
    ca = tls.make_ca("Site CA")
    hub = tls.issue(ca, "hub", ["localhost"], [tls.ipaddress.ip_address(LOOPBACK)])
    other = tls.issue(ca, "other", ["localhost"], [])
    site = tmp_path / "site"
    site.mkdir()
    tls.write_pair(hub, site / "hub.crt", site / "hub.key")
    tls.write_pair(other, site / "other.crt", site / "other.key")
    (site / "ca.crt").write_bytes(tls.cert_pem(ca.cert))
    good = {"HTTPS": "on", "TLS_CERT_FILE": str(site / "hub.crt"), "TLS_KEY_FILE": str(site / "hub.key"),
            "TLS_CA_FILE": str(site / "ca.crt")}
    settings = _settings(hub_values, tmp_path, **good)
    assert settings.tls_site_files and settings.tls_ca_path == site / "ca.crt"
    assert tls.prepare(settings, out=lambda _line: None)[:3] == [site / "ca.crt", site / "hub.crt", site / "hub.key"]
    assert not (settings.tls_dir / "ca.key").exists()  # nothing generated beside the site's files
    with pytest.raises(tls.TlsError, match="site's own certificates are in use"):
        tls.generate(settings)

    def refused(**overrides: str) -> str:
        with pytest.raises(SettingsError) as info:
            _settings(hub_values, tmp_path, **{**good, **overrides})
        return str(info.value)

    assert "TLS_KEY_FILE, TLS_CA_FILE: TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE go together" in refused(
        TLS_KEY_FILE="", TLS_CA_FILE="")
    assert f"TLS_CERT_FILE: {site / 'missing.crt'} does not exist" in refused(TLS_CERT_FILE=str(site / "missing.crt"))
    assert "TLS_KEY_FILE" in refused(TLS_KEY_FILE=str(site / "other.key")) and "is not the key of" in refused(
        TLS_KEY_FILE=str(site / "other.key"))
    assert "TLS_CA_FILE" in refused(TLS_CA_FILE=str(site / "hub.key"))
    (site / "hub.key").chmod(0o644)
    assert "TLS_KEY_FILE" in refused() and "can be read by every user" in refused()
    (site / "hub.key").chmod(0o600)
    assert "DICOM_TLS: use on or off" in refused(DICOM_TLS="maybe")
    # Off, the files are not needed and not checked.
    assert not _settings(hub_values, tmp_path, TLS_CERT_FILE=str(site / "missing.crt")).tls_in_use

    # The chain and the names are checked where `cryptography` is (ops/tls.py, at start).
    rogue_ca = tls.make_ca("Another CA")
    (site / "rogue-ca.crt").write_bytes(tls.cert_pem(rogue_ca.cert))
    errors, _ = tls.check(_settings(hub_values, tmp_path, **{**good, "TLS_CA_FILE": str(site / "rogue-ca.crt")}))
    assert any("is not signed by a CA of TLS_CA_FILE" in e for e in errors)
    errors, _ = tls.check(_settings(hub_values, tmp_path, **{**good, "ORTHANC_HOST": "hub.example.org"}))
    assert any("does not name ORTHANC_HOST=hub.example.org" in e for e in errors)


def test_modality_lines_take_a_tls_flag() -> None:
    modality = parse_modality_line("PACS", "PACS|10.1.2.3|104|qr,TLS")
    assert modality.use_tls and modality.retrieve == ("find", "get", "move")
    assert modality.orthanc_body()["UseDicomTls"] is True
    assert parse_modality_line("PACS", modality.spec()) == modality
    plain = parse_modality_line("PACS", "PACS|10.1.2.3|104")
    assert plain.orthanc_body()["UseDicomTls"] is False and plain.spec() == "PACS|10.1.2.3|104"
    assert parse_modality_line("PACS", "PACS|pacs.example|104|tls").use_tls  # a name is fine without retrieve


# --- the native stack, end to end ------------------------------------------------------


@pytest.mark.timeout(600)
def test_the_native_stack_runs_with_dicom_tls_and_https(tmp_path: Path) -> None:
    """`make run` with DICOM_TLS=on and HTTPS=on: the files are generated once, every service
    is healthy over TLS (the worker and the app reach Orthanc by https, `status` echoes over
    DICOM TLS), a study stored with storescu +tls is there, and `stop` ends everything."""
    from ops.stack import supervisor
    from testkit.harness.stack import make_pg_base, make_values, remove_tree, write_env
    from testkit.synthetic import write_datasets
    from tests.integration.test_native_stack import NativeStack, _orthanc_environ

    base = make_pg_base()
    values = make_values(base, base / "postgres-data", DICOM_STORAGE=str(base / "orthanc-storage"),
                         STATE_DIR=str(base / "state"), DICOM_TLS="on", HTTPS="on")
    stack = NativeStack(values, settings_from_values(values), write_env(values, base / ".env"))
    s = stack.settings
    try:
        started = stack.command("run")
        output = started.stdout + started.stderr
        assert started.returncode == 0, output
        stack.assert_no_secret(output)
        assert "created the local CA" in output and "PRIVATE KEY" not in output
        assert f"https://{s.orthanc_host}:{s.orthanc_web_port}/app/explorer.html" in started.stdout
        assert "(DICOM TLS only)" in started.stdout and str(s.tls_ca_path) in started.stdout
        orthanc = supervisor.processes(stack.layout)["orthanc"]
        assert _orthanc_environ(orthanc.pid)["LD_LIBRARY_PATH"] == str(tls.civetweb_openssl_dir(s))

        datasets = make_study(1, 2, "NATIVE TLS")
        files = write_datasets(datasets, tmp_path / "study")
        hub_cert = (s.tls_cert_path, s.tls_key_path)
        store = subprocess.run(["/usr/bin/storescu", "-aet", "TLS_SCU", "-aec", s.orthanc_aet,
                                *_dcmtk_tls(s, hub_cert), LOOPBACK, str(s.dicom_port), *map(str, files)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert store.returncode == 0, store.stdout + store.stderr
        with OrthancClient.from_settings(s, timeout=10) as client:
            assert client.lookup_study(str(datasets[0].StudyInstanceUID)) is not None
        health = httpx.get(f"http://127.0.0.1:{s.routing_api_port}/health", timeout=10).json()
        assert health["orthanc"] is True and health["status"] == "ok", health

        status = stack.command("status")
        assert status.returncode == 0 and "All services healthy" in status.stdout, status.stdout + status.stderr
        again = stack.command("run")  # nothing is generated twice
        assert again.returncode == 0 and "created" not in again.stdout + again.stderr, again.stdout + again.stderr
        assert supervisor.processes(stack.layout)["orthanc"].pid == orthanc.pid  # nor restarted
    finally:
        stack.command("stop")
        remove_tree(base)
