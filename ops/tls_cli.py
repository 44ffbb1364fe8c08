"""`./orthanc tls ...` and `make tls-certs`: the hub's DICOM TLS and HTTPS certificates.

    generate [--renew] [--new-ca]   the local CA and the hub's certificate in TLS_DIR, where
                                    missing (never overwrites without a flag)
    show                            the certificate in use, the CA's fingerprint, the checks
    issue NAME --out DIR [--host H] a certificate from the local CA for a peer without one

The work is in ops/tls.py; it and core.settings are imported inside the commands only,
so that `./orthanc --help` stays fast (ops/cli_ops.py's rule). Keys are never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.tooling import exitcodes

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(name="tls", help="DICOM TLS and HTTPS certificates (README.md, 'DICOM TLS and HTTPS').",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
EnvFile = Annotated[Path | None, typer.Option("--env-file", help="the .env to read (default: HUB_ENV_FILE or ./.env)",
                                              show_default=False)]


def _settings(env_file: Path | None) -> Settings:
    from core.settings import SettingsError, load_settings

    try:
        return load_settings(env_file)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exitcodes.CONFIG) from None


@app.command("generate")
def generate(
    renew: Annotated[bool, typer.Option("--renew", help="a new hub certificate and key from the same CA")] = False,
    new_ca: Annotated[bool, typer.Option("--new-ca", help="a new CA too: every peer needs the new ca.crt")] = False,
    env_file: EnvFile = None,
) -> None:
    """Create the local CA and the hub's certificate in TLS_DIR where missing; overwrite nothing.

    --renew makes a new hub certificate from the same CA, --new-ca a new CA as well.
    """
    from ops import tls

    settings = _settings(env_file)
    try:
        done = tls.generate(settings, renew=renew, new_ca=new_ca)
    except tls.TlsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exitcodes.CONFIG) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exitcodes.FAILED) from None
    for line in done or [f"the CA and the hub's certificate already exist in {settings.tls_dir}; nothing changed "
                         "(--renew makes a new certificate from the same CA)"]:
        typer.echo(line)
    typer.echo(f"Give {settings.tls_ca_path} to the modalities, PACS and browsers that must trust the hub.")
    if not settings.tls_in_use:
        typer.echo("DICOM_TLS and HTTPS are off in .env: the files are ready for when they are switched on.")
    elif done:
        typer.echo("Restart the stack (`make run`) so that Orthanc uses them.")


@app.command("show")
def show(env_file: EnvFile = None) -> None:
    """The certificate in use (names, dates), the CA's fingerprint, and the checks `make run` makes."""
    from cryptography import x509

    from ops import tls

    settings = _settings(env_file)
    try:
        leaf = x509.load_pem_x509_certificates(settings.tls_cert_path.read_bytes())[0]
        cas = x509.load_pem_x509_certificates(settings.tls_ca_path.read_bytes())
    except (OSError, ValueError):
        pass
    else:
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]
        except x509.ExtensionNotFound:
            names = []
        typer.echo(f"certificate  {settings.tls_cert_path}")
        typer.echo(f"  subject    {leaf.subject.rfc4514_string()}")
        typer.echo(f"  names      {', '.join(names) or '(none)'}")
        typer.echo(f"  valid      {leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d}")
        for ca in cas:
            typer.echo(f"CA           {settings.tls_ca_path}: {ca.subject.rfc4514_string()}")
            typer.echo(f"  SHA-256    {tls.fingerprint(ca)}")
    tls_destinations = ", ".join(n for n, m in settings.modalities.items() if m.use_tls) or "none"
    typer.echo(f"DICOM_TLS={'on' if settings.dicom_tls else 'off'}  HTTPS={'on' if settings.https else 'off'}  "
               f"TLS destinations: {tls_destinations}")
    errors, warnings = tls.check(settings)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    for error in errors:
        typer.echo(f"error: {error}", err=True)
    if errors:
        raise typer.Exit(exitcodes.FAILED)


@app.command("issue")
def issue(
    name: Annotated[str, typer.Argument(help="the peer's name: NAME.crt and NAME.key are written")],
    out_dir: Annotated[Path, typer.Option("--out", help="the directory to write them to")],
    host: Annotated[list[str] | None, typer.Option("--host", help="a name or address of the peer (repeatable)")] = None,
    env_file: EnvFile = None,
) -> None:
    """A certificate from the local CA for a peer that has none (its key mode 600, never printed)."""
    from ops import tls

    settings = _settings(env_file)
    try:
        cert, key = tls.issue_peer(settings, name, out_dir, host or ())
    except (tls.TlsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exitcodes.CONFIG) from None
    typer.echo(f"wrote {cert} and {key} (mode 600); the peer trusts the hub with {settings.tls_ca_path}")


def main() -> None:
    """`python -m ops.tls_cli ...` (make tls-certs): exits with the command's code."""
    app(prog_name="make tls-certs")


if __name__ == "__main__":
    main()
