"""DICOM TLS and HTTPS material: a local CA, the hub's certificate, checks, Orthanc's PEM.

Opt-in (config/env.defaults: DICOM_TLS, HTTPS, the `tls` flag of a MODALITY_ line). When
one is on and the site gives no files of its own (TLS_CA_FILE, TLS_CERT_FILE,
TLS_KEY_FILE), the hub makes its own in TLS_DIR, once:

  ca.crt, ca.key    a local certificate authority (10 years). ca.crt is what the site
                    gives its modalities and PACS (and browsers) to trust the hub.
  hub.crt, hub.key  the hub's certificate, signed by that CA (2 years), for localhost,
                    127.0.0.1, ::1, ORTHANC_HOST, this machine's names and TLS_SERVER_NAMES;
                    for server and client use (Orthanc presents it when it calls a TLS
                    destination, and `make status` when it echoes a TLS-only port).

Existing files are never overwritten: `make tls-certs RENEW=1` makes a new hub
certificate from the same CA, `NEW_CA=1` a new CA as well (every peer must then be given
the new ca.crt). Before Orthanc starts (ops/stack/native.py, the test harness) `prepare`
generates what is missing, checks the files (key matches certificate, certificate signed
by the CA, dates, names), and writes the one PEM with key and certificate that Orthanc's
HTTPS server reads (TLS_DIR/orthanc-https.pem). Keys are written mode 600 from their
first byte and never printed or logged.

With HTTPS on, `prepare` also builds the small library that Debian 12's Orthanc 1.10.1
needs to serve HTTPS without crashing (stack/orthanc/civetweb-openssl3.c says why), with
the system's C compiler (the gcc package: `make run` installs it when HTTPS is on).

The commands (`make tls-certs`, `./orthanc tls generate|show|issue`) are in ops/tls_cli.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.dicom_names import check_host
from core.envfile import write_private
from core.settings import PROJECT_ROOT, TLS_CA_CERT, TLS_CA_KEY, Settings

Out = Callable[[str], None]
CA_DAYS = 3650
CERT_DAYS = 730
EXPIRY_WARNING_DAYS = 30
CA_KEY_BITS = 3072
KEY_BITS = 2048

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CIVETWEB_SHIM_SOURCE = PROJECT_ROOT / "stack" / "orthanc" / "civetweb-openssl3.c"
# What a site without a compiler runs once (as root, `make run` does it itself).
COMPILER_PACKAGES = ("gcc",)


class TlsError(RuntimeError):
    """The TLS files are missing, inconsistent or unusable; the message says which and why."""


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as objects."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate


# --- names ----------------------------------------------------------------------------


def server_names(settings: Settings) -> tuple[list[str], list[IpAddress]]:
    """The DNS names and IP addresses the hub's generated certificate is for."""
    candidates = ["localhost", "127.0.0.1", "::1", settings.orthanc_host, *settings.tls_server_names]
    for lookup in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(OSError):
            candidates.append(lookup())
    dns: list[str] = []
    ips: list[IpAddress] = []
    for name in candidates:
        try:
            ips.append(ipaddress.ip_address(name))
            continue
        except ValueError:
            pass
        try:
            check_host(name)
        except ValueError:
            continue  # an odd machine name: the certificate simply does not carry it
        if name.lower() not in dns:
            dns.append(name.lower())
    return dns, list(dict.fromkeys(ips))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Routing hub"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- making certificates ---------------------------------------------------------------


def make_ca(common_name: str, days: int = CA_DAYS) -> Pair:
    """A self-signed CA that may sign end-entity certificates only."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
    now = _now()
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(key, cert)


def issue(ca: Pair, common_name: str, dns: Iterable[str] = (), ips: Iterable[IpAddress] = (),
          days: int = CERT_DAYS) -> Pair:
    """A certificate signed by `ca` for server and client authentication."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    now = _now()
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt_names += [x509.IPAddress(ip) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return Pair(key, builder.sign(ca.key, hashes.SHA256()))


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write a file with `mode` from its first byte. Without `replace`, an existing file
    is an error (never overwritten); with it, the new file takes the old one's place."""
    target = path.with_name(f".{path.name}.new") if replace else path
    if replace:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(target, mode)
    if replace:
        os.replace(target, path)


def write_pair(pair: Pair, cert_path: Path, key_path: Path, *, replace: bool = False) -> None:
    """The key mode 600, then the certificate mode 644."""
    _write_new(key_path, key_pem(pair.key), 0o600, replace=replace)
    _write_new(cert_path, cert_pem(pair.cert), 0o644, replace=replace)


def load_pair(cert_path: Path, key_path: Path) -> Pair:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TlsError(f"{key_path}: the hub makes RSA keys; this one is {type(key).__name__}")
    return Pair(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as peers' tools show it (AB:CD:...)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def generate(settings: Settings, *, renew: bool = False, new_ca: bool = False) -> list[str]:
    """Create the local CA and the hub's certificate in TLS_DIR where missing.

    Returns what was done, one line each (nothing secret). Never overwrites a file,
    unless `renew` (a new hub certificate and key from the same CA) or `new_ca` (a new
    CA too). Raises TlsError when the site gives its own files, half a pair exists or
    TLS_DIR cannot be written.
    """
    try:
        return _generate(settings, renew=renew, new_ca=new_ca)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise TlsError(f"TLS_DIR ({settings.tls_dir}): {exc.strerror or exc}{where}") from None
    except ValueError as exc:  # a ca.key or hub.key that is not an unencrypted PEM key
        raise TlsError(f"TLS_DIR ({settings.tls_dir}): {exc}") from None


def _generate(settings: Settings, *, renew: bool, new_ca: bool) -> list[str]:
    if settings.tls_site_files:
        raise TlsError("TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE are set: the site's own certificates are in "
                       "use and the hub generates none (empty them to use a generated CA instead)")
    tls_dir = settings.tls_dir
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = tls_dir / TLS_CA_CERT, tls_dir / TLS_CA_KEY
    cert, key = settings.tls_cert_path, settings.tls_key_path
    done: list[str] = []
    for crt, k, what in ((ca_cert, ca_key, "CA"), (cert, key, "hub certificate")):
        if crt.exists() != k.exists() and not (new_ca or (renew and what != "CA")):
            present, absent = (crt, k) if crt.exists() else (k, crt)
            raise TlsError(f"TLS_DIR: {present} exists without {absent}; restore the {what}'s missing file or "
                           f"remove {present} (then `make tls-certs`{' NEW_CA=1' if what == 'CA' else ''})")
    if new_ca or not ca_cert.exists():
        ca = make_ca(f"Routing hub {settings.orthanc_aet} local CA")
        write_pair(ca, ca_cert, ca_key, replace=new_ca)
        done.append(f"created the local CA {ca_cert} (SHA-256 {fingerprint(ca.cert)}); its key {ca_key} is mode 600")
        renew = True
    else:
        ca = load_pair(ca_cert, ca_key)
    if renew or not cert.exists():
        dns, ips = server_names(settings)
        pair = issue(ca, dns[0] if dns else settings.orthanc_host, dns, ips)
        write_pair(pair, cert, key, replace=cert.exists() or key.exists())
        names = ", ".join([*dns, *map(str, ips)])
        done.append(f"created the hub's certificate {cert} for {names}, valid until "
                    f"{pair.cert.not_valid_after_utc:%Y-%m-%d}; its key {key} is mode 600")
    return done


def issue_peer(settings: Settings, name: str, out_dir: Path, hosts: Iterable[str] = ()) -> tuple[Path, Path]:
    """A certificate from the local CA for a peer (a modality without one, a test SCP):
    out_dir/NAME.crt and NAME.key (mode 600). Never overwrites."""
    if settings.tls_site_files:
        raise TlsError("the site's own CA is in use (TLS_CA_FILE): issue peer certificates with it")
    ca_cert, ca_key = settings.tls_dir / TLS_CA_CERT, settings.tls_dir / TLS_CA_KEY
    if not ca_key.exists():
        raise TlsError(f"no local CA in {settings.tls_dir}: run `make tls-certs` first")
    dns: list[str] = []
    ips: list[IpAddress] = []
    for host in hosts:
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            dns.append(check_host(host))
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    for path in (cert, key):
        if path.exists():
            raise TlsError(f"{path} exists; it is never overwritten")
    write_pair(issue(load_pair(ca_cert, ca_key), name, dns, ips), cert, key)
    return cert, key


# --- checks -----------------------------------------------------------------------------


def _labels(settings: Settings) -> dict[str, str]:
    if settings.tls_site_files:
        return {"cert": f"TLS_CERT_FILE ({settings.tls_cert_path})", "key": f"TLS_KEY_FILE ({settings.tls_key_path})",
                "ca": f"TLS_CA_FILE ({settings.tls_ca_path})"}
    return {"cert": f"the hub's certificate ({settings.tls_cert_path})",
            "key": f"the hub's key ({settings.tls_key_path})", "ca": f"the local CA ({settings.tls_ca_path})"}


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError (another key type): not this issuer
        return False
    return True


def _chains_to(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    """The leaf (chain[0]) leads to a CA of `cas`, through the intermediates of `chain`."""
    current, rest = chain[0], chain[1:]
    for _ in range(len(chain) + 1):
        if any(_issued_by(current, ca) for ca in cas):
            return True
        parent = next((c for c in rest if _issued_by(current, c)), None)
        if parent is None:
            return False
        rest = [c for c in rest if c is not parent]
        current = parent
    return False


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    host = host.lower()
    for name in (n.lower() for n in sans.get_values_for_type(x509.DNSName)):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def check(settings: Settings, now: dt.datetime | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the TLS files the configuration uses, each naming the file."""
    now = now or _now()
    label = _labels(settings)
    paths = {"cert": settings.tls_cert_path, "key": settings.tls_key_path, "ca": settings.tls_ca_path}
    missing = [f"{label[k]} does not exist" for k, p in paths.items() if not p.is_file()]
    if missing:
        return [*missing, "run `make tls-certs` to generate them" if not settings.tls_site_files
                else "fix TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE in .env"], []
    errors: list[str] = []
    warnings: list[str] = []
    try:
        chain = x509.load_pem_x509_certificates(paths["cert"].read_bytes())
    except ValueError as exc:
        return [f"{label['cert']} cannot be read as PEM certificates: {exc}"], []
    try:
        cas = x509.load_pem_x509_certificates(paths["ca"].read_bytes())
    except ValueError as exc:
        return [f"{label['ca']} cannot be read as PEM certificates: {exc}"], []
    try:
        key = serialization.load_pem_private_key(paths["key"].read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        return [f"{label['key']} cannot be read as an unencrypted PEM private key ({type(exc).__name__})"], []
    leaf = chain[0]
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        errors.append(f"{label['key']} is not the key of {label['cert']}")
    if not _chains_to(chain, cas):
        errors.append(f"{label['cert']} is not signed by a CA of {label['ca']}: peers and the hub's own clients "
                      "would refuse it")
    if leaf.not_valid_before_utc > now:
        errors.append(f"{label['cert']} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_after_utc <= now:
        errors.append(f"{label['cert']} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
                      + ("" if settings.tls_site_files else ": `make tls-certs RENEW=1` makes a new one"))
    elif leaf.not_valid_after_utc <= now + dt.timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append(f"{label['cert']} expires on {leaf.not_valid_after_utc:%Y-%m-%d}"
                        + ("" if settings.tls_site_files else ": `make tls-certs RENEW=1` makes a new one"))
    expired_cas = [ca for ca in cas if ca.not_valid_after_utc <= now]
    if expired_cas and len(expired_cas) == len(cas):
        errors.append(f"{label['ca']} expired on {expired_cas[0].not_valid_after_utc:%Y-%m-%d}")
    if settings.https and not _names_host(leaf, settings.orthanc_host):
        errors.append(f"{label['cert']} does not name ORTHANC_HOST={settings.orthanc_host} (subject alternative "
                      "names): the worker, the app and the CLI reach Orthanc by that name and would refuse it"
                      + ("" if settings.tls_site_files else "; `make tls-certs RENEW=1` makes one that does"))
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if settings.dicom_tls_in_use and usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        warnings.append(f"{label['cert']} is not for client authentication: Orthanc presents it when it calls a "
                        "TLS destination (and `make status` when it echoes Orthanc), and peers may refuse it")
    return errors, warnings


def https_pem_text(settings: Settings) -> str:
    """Orthanc's SslCertificate: the key, then the certificate (and its chain)."""
    key = settings.tls_key_path.read_text(encoding="ascii").strip()
    cert = settings.tls_cert_path.read_text(encoding="ascii").strip()
    return f"{key}\n{cert}\n"


def write_https_pem(settings: Settings) -> bool:
    """Write TLS_DIR/orthanc-https.pem (mode 600) unless it holds the same; True when written."""
    path = settings.https_pem_path
    text = https_pem_text(settings)
    try:
        if path.read_text(encoding="ascii") == text:
            os.chmod(path, 0o600)
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, text)
    return True


# --- Orthanc's HTTPS on Debian 12 (stack/orthanc/civetweb-openssl3.c) ------------------


def civetweb_openssl_dir(settings: Settings) -> Path:
    """Where Orthanc's HTTP server finds libssl.so and libcrypto.so (its LD_LIBRARY_PATH)."""
    return settings.tls_dir / "civetweb-openssl3"


def _openssl_libraries() -> tuple[Path, Path]:
    """The system's libssl.so.3 and libcrypto.so.3."""
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for folder in (Path("/usr/lib") / arch, Path("/lib") / arch, Path("/usr/lib64"), Path("/usr/lib")):
        ssl_lib, crypto_lib = folder / "libssl.so.3", folder / "libcrypto.so.3"
        if ssl_lib.is_file() and crypto_lib.is_file():
            return ssl_lib.resolve(), crypto_lib.resolve()
    raise TlsError("HTTPS: OpenSSL 3 (libssl.so.3, package libssl3) was not found, which Orthanc's HTTPS needs")


def build_civetweb_shim(settings: Settings, out: Out = print) -> Path:
    """Build (once, again when the source or OpenSSL changes) the libssl.so Orthanc's
    civetweb loads for HTTPS; return its directory."""
    folder = civetweb_openssl_dir(settings)
    ssl_lib, crypto_lib = _openssl_libraries()
    source = CIVETWEB_SHIM_SOURCE.read_bytes()
    stamp_text = hashlib.sha256(source + b"\0" + str(ssl_lib).encode()).hexdigest() + "\n"
    lib, crypto_link, stamp = folder / "libssl.so", folder / "libcrypto.so", folder / "built-from.sha256"
    try:
        current = stamp.read_text() == stamp_text and lib.is_file() and crypto_link.resolve() == crypto_lib
    except OSError:
        current = False
    if current:
        return folder
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise TlsError("HTTPS=on: Debian's Orthanc 1.10.1 needs a small library built once for its HTTPS "
                       f"(stack/orthanc/civetweb-openssl3.c), and no C compiler was found: install "
                       f"{' '.join(COMPILER_PACKAGES)} (`make run` does as root; otherwise "
                       f"`sudo stack/native/install-debian-packages.sh {' '.join(COMPILER_PACKAGES)}`)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    new = folder / ".libssl.so.new"
    new.unlink(missing_ok=True)
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", "-nostdlib", "-O2", "-o", str(new), str(CIVETWEB_SHIM_SOURCE), str(ssl_lib)],
        capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise TlsError(f"HTTPS: building {lib} from {CIVETWEB_SHIM_SOURCE} failed ({proc.returncode}):\n"
                       f"{(proc.stderr or proc.stdout).strip()[:1000]}")
    os.replace(new, lib)
    crypto_link.unlink(missing_ok=True)
    crypto_link.symlink_to(crypto_lib)
    stamp.write_text(stamp_text)
    out(f"built {lib} for Orthanc's HTTPS (stack/orthanc/civetweb-openssl3.c)")
    return folder


def prepare(settings: Settings, out: Out = print) -> list[Path]:
    """Before Orthanc starts: generate what is missing (no site files), check, write the
    HTTPS PEM. Returns the files Orthanc reads (their content is part of its fingerprint);
    nothing when no TLS function is on. Raises TlsError listing every problem."""
    if not settings.tls_in_use:
        return []
    if not settings.tls_site_files:
        for line in generate(settings):
            out(line)
    errors, warnings = check(settings)
    for warning in warnings:
        out(f"warning: {warning}")
    if errors:
        raise TlsError("the TLS files cannot be used:\n  " + "\n  ".join(errors))
    files = [settings.tls_ca_path, settings.tls_cert_path, settings.tls_key_path]
    if settings.https:
        write_https_pem(settings)
        files += [settings.https_pem_path, build_civetweb_shim(settings, out) / "libssl.so"]
    return files


def digest(files: Iterable[Path]) -> str:
    """A digest of the files' contents (for the stack's restart fingerprint; reveals nothing)."""
    sha = hashlib.sha256()
    for path in files:
        sha.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]
