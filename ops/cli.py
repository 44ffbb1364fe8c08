"""The hub's command line, `./orthanc <command>`: a typer app that others extend.

Add a command with `@app.command()` in this module, or build a typer app elsewhere
and `app.add_typer(...)` it here. Commands share the conventions below: settings
from `.env` (or --env-file), exit codes from ops.tooling.exitcodes, messages on
stderr (stdout stays clean for data), and no patient data in messages.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ops import cli_ops, retention_cli, tls_cli
from ops.tooling import exitcodes

app = typer.Typer(
    name="orthanc",
    help="Orthanc routing hub: operations and QI reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

EnvFileOption = Annotated[
    Path | None,
    typer.Option("--env-file", help="the .env to read (default: HUB_ENV_FILE or ./.env)", show_default=False),
]


@app.callback()
def main() -> None:
    """Orthanc routing hub: operations and QI reports."""


class ReportFormat(StrEnum):
    csv = "csv"
    xlsx = "xlsx"


def _load_settings(env_file: Path | None):  # noqa: ANN202 - Settings, imported lazily
    from core.settings import SettingsError, load_settings

    try:
        return load_settings(env_file)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(exitcodes.CONFIG) from None


@app.command()
def report(
    date_from: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"],
                                                help="first day, in TZ (YYYY-MM-DD)")],
    date_to: Annotated[datetime, typer.Option("--to", formats=["%Y-%m-%d"],
                                              help="last day, in TZ, included (YYYY-MM-DD)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="file to write (- for stdout, CSV only)")],
    fmt: Annotated[ReportFormat, typer.Option("--format", help="csv or xlsx")] = ReportFormat.csv,
    summary: Annotated[bool, typer.Option("--summary", help="one row per day instead of one per study")] = False,
    modality: Annotated[list[str] | None, typer.Option(help="only this modality (repeatable)")] = None,
    source: Annotated[list[str] | None, typer.Option(help="only this source AET (repeatable)")] = None,
    destination: Annotated[list[str] | None, typer.Option(help="only this destination (repeatable)")] = None,
    rule: Annotated[list[str] | None, typer.Option(help="only this rule (repeatable)")] = None,
    env_file: EnvFileOption = None,
) -> None:
    """Export QI numbers for studies first received between --from and --to (days in TZ).

    The per-study export has the contract columns of docs/qi.md ("Exports"), plus a few more;
    --summary writes the daily summary instead. Both read the same SQL views as the
    app's QI pages, and a large export streams, so memory stays flat.
    """
    from core import qi, reports
    from core.db import engine_for

    settings = _load_settings(env_file)
    try:
        flt = qi.QiFilter(date_from.date(), date_to.date(), tuple(modality or ()), tuple(source or ()),
                          tuple(destination or ()), tuple(rule or ()))
    except qi.QiError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(exitcodes.USAGE) from None
    to_stdout = str(output) == "-"
    if to_stdout and fmt is ReportFormat.xlsx:
        err.print("[red]XLSX cannot go to stdout; give --output FILE[/red]")
        raise typer.Exit(exitcodes.USAGE)
    started = time.monotonic()
    engine = engine_for(settings)
    try:
        with engine.begin() as conn:
            qi.sync_qi_settings(conn, settings)
        with engine.begin() as conn:
            qi.refresh(conn)
        with engine.connect() as conn, conn.begin():
            target = sys.stdout.buffer if to_stdout else output
            if summary:
                result = reports.export_summary(conn, flt, settings.zone, fmt.value, target)
            else:
                result = reports.export_studies(conn, flt, settings.zone, fmt.value, target)
    except OperationalError as exc:
        err.print(f"[red]the QI database is unreachable: {str(exc.orig).strip().splitlines()[0]}[/red]")
        raise typer.Exit(exitcodes.UNAVAILABLE) from None
    except SQLAlchemyError as exc:
        err.print(f"[red]report failed: {type(exc).__name__}[/red]")
        raise typer.Exit(exitcodes.FAILED) from None
    except OSError as exc:
        err.print(f"[red]cannot write {output}: {exc.strerror}[/red]")
        raise typer.Exit(exitcodes.FAILED) from None
    finally:
        engine.dispose()
    kind = "days" if summary else "studies"
    where = "stdout" if to_stdout else str(output)
    err.print(f"wrote {result.rows} {kind} ({flt.start} to {flt.end}, {settings.tz}) to {where} "
              f"in {time.monotonic() - started:.1f} s")


@app.command("migrate-storage")
def migrate_storage(
    delete_old: Annotated[bool, typer.Option("--delete-old", help="delete the old copies of a finished move")] = False,
    no_start: Annotated[bool, typer.Option("--no-start", help="do not start the stack after the copy")] = False,
) -> None:
    """Move DICOM_STORAGE and POSTGRES_STORAGE to the paths in .env (as `make migrate-storage`)."""
    from ops.tooling import migrate_storage as move

    raise typer.Exit(move.main([*(["--delete-old"] if delete_old else []), *(["--no-start"] if no_start else [])]))


@app.command("help")
def help_(
    command: Annotated[str | None, typer.Argument(help="a command: show its options")] = None,
) -> None:
    """List the commands with one line each; `./orthanc help COMMAND` shows one in full."""
    from typer.core import TyperGroup

    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    ctx = typer.Context(group, info_name="./orthanc")
    if command:
        found = group.get_command(ctx, command)
        if found is None:
            err.print(f"[red]no command {command!r}; `./orthanc help` lists them[/red]")
            raise typer.Exit(exitcodes.USAGE)
        typer.echo(found.get_help(typer.Context(found, info_name=command, parent=ctx)))
        return
    typer.echo("Orthanc routing hub. Usage: ./orthanc COMMAND [OPTIONS]   (./orthanc help COMMAND: its options)\n")
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            typer.echo(f"  {name:<16} {sub.get_short_help_str(limit=100)}")


cli_ops.register(app)  # operations commands (issue 6): status, studies, ...
retention_cli.register(app)  # retention (issue 18): --dry-run, --run
app.add_typer(tls_cli.app, name="tls")  # DICOM TLS and HTTPS certificates (issue 15)


def run() -> None:
    """Entry point of `./orthanc` and `python -m ops.cli`."""
    app(prog_name="orthanc")


if __name__ == "__main__":
    run()
