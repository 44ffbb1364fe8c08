"""Operations commands of `./orthanc`: status, studies, study, destinations, test, queue,
retry, cancel, hold, release, alerts, token, logs, shell, db. Registered onto ops.cli's typer app by
`register(app)`.

Exit codes (ops.tooling.exitcodes, documented in docs/operations.md) are the contract
scripts and monitoring rely on: 0 ok, 1 the operation failed, 2 usage, 3 configuration,
4 a service is unreachable, 5 not found. Data goes to stdout; messages to stderr.
Patient names and ids are never shown: the CLI has no login, so it cannot know who reads.

Imports are at the top of the module, with one exception kept for start-up time: three
modules that are slow to import - core.settings (pydantic-settings), core.db (alembic) and
core.orthanc_client (httpx) - would make every `./orthanc` start, `--help` included,
materially slower. They are imported only inside the helpers that need them: _settings,
_engine, _orthanc, _session_env, _auth (core.auth imports core.db), and collect_status (httpx).
Add no others.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from core import alerts, operations, queries
from core.states import AuditSource, HoldKind, JobState, Role
from ops.tooling import exitcodes

if TYPE_CHECKING:
    from types import ModuleType

    from core.orthanc_client import OrthancClient
    from core.settings import Settings

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EnvFile = Annotated[
    Path | None,
    typer.Option("--env-file", help="the .env to read (default: HUB_ENV_FILE or ./.env)", show_default=False),
]
SERVICES = ("postgres", "orthanc", "worker", "api", "app", "viewer")


# --- helpers ---------------------------------------------------------------------------


def _settings(env_file: Path | None) -> Settings:
    from core.settings import SettingsError, load_settings  # slow import: see the module docstring

    try:
        return load_settings(env_file)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]", markup=True)
        raise typer.Exit(exitcodes.CONFIG) from None


def _fail(message: str, code: int) -> typer.Exit:
    err.print(message, markup=False)
    return typer.Exit(code)


def _engine(settings: Settings, **kwargs: object) -> Engine:
    """core.db.engine_for (alembic comes with core.db: see the module docstring)."""
    from core.db import engine_for

    return engine_for(settings, **kwargs)


class _OrthancFailed(Exception):
    """An OrthancError (unreachable, or an error answer), as _orthanc() re-raises it."""


@contextmanager
def _orthanc(settings: Settings, timeout: float) -> Iterator[OrthancClient]:
    """An Orthanc REST client; an OrthancError in the block comes out as _OrthancFailed, same message.

    core.orthanc_client (and httpx) is imported here only: see the module docstring.
    """
    from core.orthanc_client import OrthancClient, OrthancError

    try:
        with OrthancClient.from_settings(settings, timeout=timeout) as client:
            yield client
    except OrthancError as exc:
        raise _OrthancFailed(str(exc)) from exc


@contextmanager
def _db(settings: Settings, *, write: bool = False) -> Iterator[Connection]:
    """A QI database connection; unreachable -> exit 4."""
    engine = _engine(settings)
    try:
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise _fail(f"the QI database is unreachable: {first}", exitcodes.UNAVAILABLE) from None
    finally:
        engine.dispose()


def _local(value: datetime | None, settings: Settings) -> str:
    return value.astimezone(settings.zone).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _data(*values: object) -> list[str]:
    """Values from DICOM, Orthanc or the database, escaped so rich prints them as text.

    A description such as "[/]" is console markup to rich: unescaped, it raises
    MarkupError (or restyles the output). None prints as "".
    """
    return [escape("" if v is None else str(v)) for v in values]


def _auth() -> ModuleType:
    """core.auth (it imports core.db, alembic: see the module docstring)."""
    from core import auth

    return auth


def _actor() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _local_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else ("::1" if address == "::" else address)


# --- status ----------------------------------------------------------------------------


def collect_status(settings: Settings) -> dict[str, Any]:
    """Health of Orthanc, PostgreSQL and the worker, and the job backlog (no PHI)."""
    import httpx  # slow import: see the module docstring

    result: dict[str, Any] = {}
    try:
        with _orthanc(settings, timeout=5) as client:
            system, stats = client.system(), client.statistics()
        result["orthanc"] = {"ok": True, "version": system.get("Version"), "aet": system.get("DicomAet"),
                             "studies": stats.get("CountStudies"), "disk_mb": stats.get("TotalDiskSizeMB")}
    except _OrthancFailed as exc:
        result["orthanc"] = {"ok": False, "error": str(exc)}
    engine = _engine(settings, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            backlog = queries.job_backlog(conn)
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        result["database"] = {"ok": True, "schema": revision}
        result["queue"] = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in backlog.items()}
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        result["database"] = {"ok": False, "error": str(detail).strip().splitlines()[0]}
    finally:
        engine.dispose()
    # The worker's own /health (the API on ROUTING_API_PORT proxies the same document).
    url = f"http://{_local_host(settings.worker_health_host)}:{settings.worker_health_port}/health"
    try:
        response = httpx.get(url, timeout=5)
        body = response.json()
        result["worker"] = {"ok": response.status_code == 200,
                            **{k: body[k] for k in ("status", "problems") if k in body}}
    except (httpx.HTTPError, ValueError) as exc:
        result["worker"] = {"ok": False, "error": f"{url}: {type(exc).__name__}"}
    return result


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    env_file: EnvFile = None,
) -> None:
    """Health of Orthanc, the QI database and the worker, and the job queue.

    Exit 0 when all are healthy, 4 when any is unreachable or unhealthy (for monitoring).
    """
    settings = _settings(env_file)
    result = collect_status(settings)
    healthy = all(result[k]["ok"] for k in ("orthanc", "database", "worker"))
    if as_json:
        print(json.dumps({"healthy": healthy, **result}, default=str))
    else:
        table = Table("component", "state", "details", title="Routing hub status")
        o, d, w = result["orthanc"], result["database"], result["worker"]
        table.add_row("Orthanc", _ok(o["ok"]), o.get("error") or
                      f"version {o['version']}, AET {o['aet']}, {o['studies']} studies, {o['disk_mb']} MB")
        table.add_row("PostgreSQL (QI)", _ok(d["ok"]), d.get("error") or f"schema {d['schema']}")
        # A refused routing.yml: "degraded: routing.yml refused at line 12, running on rules of 14:05".
        problems = "; ".join(w.get("problems") or [])
        table.add_row("Worker", _ok(w["ok"]), w.get("error") or (f"degraded: {problems}" if problems
                                                                  else w.get("status", "")))
        if "queue" in result:
            q = result["queue"]
            table.add_row("Queue", "", f"{q[JobState.QUEUED]} queued, {q[JobState.SENDING]} sending, "
                                       f"{q[JobState.FAILED]} failed, {q[JobState.DEAD]} dead, {q['due_now']} due now")
        out.print(table)
    if not healthy:
        raise typer.Exit(exitcodes.UNAVAILABLE)


def _ok(flag: bool) -> str:
    return "[green]ok[/green]" if flag else "[red]DOWN[/red]"


# --- studies ---------------------------------------------------------------------------


def studies(
    search: Annotated[str | None, typer.Option("--search", "-s",
                                               help="accession, StudyInstanceUID or Orthanc id")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="only studies in this workflow status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
    env_file: EnvFile = None,
) -> None:
    """Recent studies, newest first, with their workflow status (no patient data)."""
    settings = _settings(env_file)
    if status_ and status_ not in queries.STUDY_STATUSES:
        raise _fail(f"unknown status {status_!r}; one of {', '.join(queries.STUDY_STATUSES)}", exitcodes.USAGE)
    with _db(settings) as conn:
        if search:
            ids = queries.find_study(conn, search)[:limit]
            found = [queries.get_study(conn, i) for i in ids]
            rows = [r for r in found if r and (not status_ or r["status"] == status_)]
        else:
            rows = queries.search_studies(conn, queries.StudyFilter(status=status_), limit=limit).rows
    if search and not rows:
        raise _fail(f"no study matches {search!r}", exitcodes.NOT_FOUND)
    table = Table("id", "received", "accession", "modality", "description", "source", "status")
    for row in rows:
        table.add_row(str(row["id"]), _local(row.get("first_received_at"), settings),
                      *_data(row.get("accession_number"), row.get("modalities"), row.get("description"),
                             row.get("source_aet")), row["status"])
    out.print(table)


def study(
    key: Annotated[str, typer.Argument(help="StudyInstanceUID, accession number, Orthanc id or hub id")],
    env_file: EnvFile = None,
) -> None:
    """One study's workflow stages and its timeline of events and jobs."""
    settings = _settings(env_file)
    with _db(settings) as conn:
        ids = queries.find_study(conn, key)
        if not ids:
            raise _fail(f"no study matches {key!r}", exitcodes.NOT_FOUND)
        for study_id in ids:
            row = queries.get_study(conn, study_id)
            assert row is not None
            events = queries.study_events(conn, study_id)
            jobs = queries.study_jobs(conn, study_id)
            uid, accession = _data(row["study_uid"], row["accession_number"] or "-")
            out.print(f"[bold]Study {row['id']}[/bold]  {uid}  accession {accession}"
                      f"  status [bold]{row['status']}[/bold]")
            out.print(f"  {row['description'] or ''}  from {row['source_aet'] or '?'}", markup=False)
            for stage in queries.study_stages(row, events, jobs, settings.ai_modality):
                mark = "[green]✔[/green]" if stage.at else "·"
                out.print(f"  {mark} {stage.name:<24} {_local(stage.at, settings)}  {escape(stage.note or '')}")
            timeline = Table("time", "event", "destination", "job", title="Timeline")
            for event in events:
                timeline.add_row(_local(event["at"], settings), event["type"], *_data(event["destination"]),
                                 str(event["job_id"] or ""))
            out.print(timeline)
            if jobs:
                table = Table("job", "purpose", "destination", "state", "attempts", "last error")
                for job in jobs:
                    table.add_row(str(job["id"]), job["purpose"], *_data(job["destination"]), job["state"],
                                  str(job["attempts"]), *_data((job["last_error"] or "")[:80]))
                out.print(table)


# --- destinations ----------------------------------------------------------------------


def destinations(
    echo: Annotated[bool, typer.Option("--echo/--no-echo", help="C-ECHO each destination")] = True,
    env_file: EnvFile = None,
) -> None:
    """Destinations known to Orthanc, with a C-ECHO of each and its hold. Exit 1 when an echo fails.

    A held destination (an outage the worker detected, or an operator's hold) shows
    "outage since HH:MM, N jobs waiting" or "on hold by <who> since HH:MM"; one held
    but no longer in Orthanc is listed too, so that it can be released.
    """
    settings = _settings(env_file)
    failed = 0
    try:
        with _orthanc(settings, timeout=15) as client:
            known = client.modalities()
            states = _destination_states(settings, known)
            table = Table("name", "AET", "host", "port", "echo", "latency", "hold")
            held_elsewhere = sorted(n for n, s in (states or {}).items() if s.held and n not in known)
            for name in [*sorted(known), *held_elsewhere]:
                spec = known.get(name, {})
                verdict, latency = "-", ""
                if echo and name in known:
                    result = client.echo(name)
                    verdict = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
                    latency = f"{result.latency_ms:.0f} ms"
                    failed += not result.ok
                state = states.get(name) if states is not None else None
                hold = "?" if states is None else ((state.summary(settings.zone) if state else None) or "")
                if name not in known:
                    hold += " (not in Orthanc)"
                table.add_row(*_data(name, spec.get("AET"), spec.get("Host"), spec.get("Port")), verdict, latency,
                              *_data(hold))
    except _OrthancFailed as exc:
        raise _fail(f"Orthanc: {exc}", exitcodes.UNAVAILABLE) from None
    out.print(table)
    if not known:
        err.print("no destinations: add MODALITY_ lines to .env and run `make seed-modalities`")
    if failed:
        raise typer.Exit(exitcodes.FAILED)


def _destination_states(settings: Settings, names: Iterable[str]) -> dict[str, queries.DestinationState] | None:
    """Holds and waiting jobs per destination; None (said on stderr) when the QI database is down.

    The destination list comes from Orthanc, so it is still worth printing without them.
    """
    engine = _engine(settings, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return queries.destination_states(conn, names)
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        err.print(f"holds unknown: the QI database is unreachable: {str(detail).strip().splitlines()[0]}",
                  markup=False)
        return None
    finally:
        engine.dispose()


def _known_destination(settings: Settings, name: str) -> None:
    """Exit 5 unless `name` is a destination (in .env's MODALITY_ lines or Orthanc's modalities).

    .env is checked first, so a destination can be held while Orthanc is down; a name
    only Orthanc knows needs Orthanc (exit 4 when it does not answer).
    """
    if name in settings.modalities:
        return
    try:
        with _orthanc(settings, timeout=10) as client:
            known = set(client.modalities())
    except _OrthancFailed as exc:
        raise _fail(f"{name} is not in .env and Orthanc cannot be asked about it: {exc}",
                    exitcodes.UNAVAILABLE) from None
    if name not in known:
        names = ", ".join(sorted(known | set(settings.modalities))) or "none"
        raise _fail(f"no destination named {name!r} (known: {names})", exitcodes.NOT_FOUND)


def hold(
    name: Annotated[str, typer.Argument(help="destination name as in Orthanc (e.g. LPCHROUTER)")],
    reason: Annotated[str | None, typer.Option("--reason", help="why, shown with the hold and audited")] = None,
    env_file: EnvFile = None,
) -> None:
    """Hold a destination: its jobs wait, spending no attempts, until `release` (audited).

    Use it for a planned PACS downtime. A destination the worker holds for an outage
    becomes an operator hold: the worker stops probing it and only `release` lifts it.
    Exit 0 held, 1 already on hold by an operator, 5 unknown destination.
    """
    settings = _settings(env_file)
    _known_destination(settings, name)
    with _db(settings, write=True) as conn:
        before = queries.destination_states(conn, [name])[name]
        if not operations.hold_destination(conn, name, actor=_actor(), source=AuditSource.CLI,
                                           reason=(reason or "").strip() or None):
            now = queries.destination_states(conn, [name])[name].summary(settings.zone) or "on hold"
            raise _fail(f"{name} is already {now}; nothing changed", exitcodes.FAILED)
    taken_over = " (it was an automatic outage hold; the worker no longer probes it)" \
        if before.kind is HoldKind.OUTAGE else ""
    out.print(f"{name} is on hold{taken_over}: {before.jobs_waiting} job(s) waiting; "
              f"`./orthanc release {name}` sends them", markup=False)


def release(
    name: Annotated[str, typer.Argument(help="destination name (see `orthanc destinations`)")],
    env_file: EnvFile = None,
) -> None:
    """Release a held destination (an operator's hold or an outage hold): its jobs are sent (audited).

    Releasing an outage hold lifts it at once; if the destination still does not
    answer C-ECHO, the worker holds it again. Exit 0 released, 1 not on hold, 5 unknown.
    """
    settings = _settings(env_file)
    with _db(settings, write=True) as conn:
        before = queries.destination_states(conn, [name])[name]
        released = operations.release_destination(conn, name, actor=_actor(), source=AuditSource.CLI)
    if not released:
        _known_destination(settings, name)  # exit 5 for a typo rather than "not on hold"
        raise _fail(f"{name} is not on hold; nothing changed", exitcodes.FAILED)
    again = "; if it still does not answer C-ECHO the worker holds it again" \
        if before.kind is HoldKind.OUTAGE else ""
    out.print(f"{name} released: its {before.jobs_waiting} waiting job(s) are sent now{again}", markup=False)


def test(
    name: Annotated[str, typer.Argument(help="destination name as in Orthanc (e.g. MERCURE)")],
    timeout: Annotated[int, typer.Option(min=1, max=120, help="seconds")] = 10,
    env_file: EnvFile = None,
) -> None:
    """C-ECHO one destination and print the latency. Exit 0 ok, 1 failed, 5 unknown name."""
    settings = _settings(env_file)
    try:
        with _orthanc(settings, timeout=timeout + 10) as client:
            known = client.modalities()
            if name not in known:
                raise _fail(f"no destination named {name!r} (known: {', '.join(sorted(known)) or 'none'})",
                            exitcodes.NOT_FOUND)
            result = client.echo(name, timeout=timeout)
    except _OrthancFailed as exc:
        raise _fail(f"Orthanc: {exc}", exitcodes.UNAVAILABLE) from None
    spec = known[name]
    where = f"{spec.get('AET')}@{spec.get('Host')}:{spec.get('Port')}"
    if result.ok:
        out.print(f"C-ECHO {name} ({where}): ok in {result.latency_ms:.0f} ms", markup=False)
        return
    err.print(f"C-ECHO {name} ({where}) failed after {result.latency_ms:.0f} ms: {result.error}", markup=False)
    raise typer.Exit(exitcodes.FAILED)


# --- queue -----------------------------------------------------------------------------


def queue(
    state: Annotated[str | None, typer.Option(help="list jobs in this state (queued, sending, failed, dead, "
                                                   "cancelled, succeeded)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    env_file: EnvFile = None,
) -> None:
    """Routing jobs per state, and the open ones (or those in --state), newest first."""
    settings = _settings(env_file)
    if state and state not in queries.JOB_STATES:
        raise _fail(f"unknown state {state!r}; one of {', '.join(queries.JOB_STATES)}", exitcodes.USAGE)
    with _db(settings) as conn:
        counts = queries.job_state_counts(conn)
        states = [state] if state else [JobState.DEAD, JobState.FAILED, JobState.SENDING, JobState.QUEUED]
        rows = [r for s in states for r in queries.list_jobs(conn, queries.JobFilter(state=s), limit=limit).rows]
    out.print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    table = Table("job", "study", "accession", "purpose", "destination", "state", "attempts", "next attempt",
                  "last error")
    for row in rows[:limit]:
        table.add_row(str(row["id"]), str(row["study_id"]), *_data(row["accession_number"]), row["purpose"],
                      *_data(row["destination"]), row["state"], str(row["attempts"]),
                      _local(row["next_attempt_at"], settings) if row["state"] in queries.DUE_STATES else "",
                      *_data((row["last_error"] or "")[:60]))
    out.print(table)


def retry(
    job: Annotated[int | None, typer.Argument(help="job id (see `orthanc queue`)")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="retry every dead job")] = False,
    env_file: EnvFile = None,
) -> None:
    """Put a failed, dead or cancelled job back in the queue now (audited), or all dead jobs."""
    if (job is None) == (not dead):
        raise _fail("give a JOB id or --dead (not both)", exitcodes.USAGE)
    settings = _settings(env_file)
    with _db(settings, write=True) as conn:
        if dead:
            ids = queries.filtered_job_ids(conn, queries.JobFilter(state=JobState.DEAD))
            count = operations.retry_dead_jobs(conn, ids, actor=_actor(), source=AuditSource.CLI)
            out.print(f"{count} dead job(s) queued again")
            return
        assert job is not None
        _existing_job(conn, job)
        try:
            operations.retry_job(conn, job, actor=_actor(), source=AuditSource.CLI)
        except operations.OperationError as exc:
            raise _fail(str(exc), exitcodes.FAILED) from None
    out.print(f"job {job} queued again")


def cancel(
    job: Annotated[int, typer.Argument(help="job id (see `orthanc queue`)")],
    env_file: EnvFile = None,
) -> None:
    """Cancel a queued, failed or dead job (audited). A job being sent cannot be cancelled."""
    settings = _settings(env_file)
    with _db(settings, write=True) as conn:
        _existing_job(conn, job)
        try:
            operations.cancel_job(conn, job, actor=_actor(), source=AuditSource.CLI)
        except operations.OperationError as exc:
            raise _fail(str(exc), exitcodes.FAILED) from None
    out.print(f"job {job} cancelled")


def _existing_job(conn: Connection, job: int) -> None:
    if conn.execute(text("SELECT 1 FROM routing_jobs WHERE id = :id"), {"id": job}).first() is None:
        raise _fail(f"job {job} does not exist", exitcodes.NOT_FOUND)


# --- alerts ------------------------------------------------------------------------------


def alerts_cmd(
    send_test: Annotated[bool, typer.Option("--test", help="send a test alert on every configured channel "
                                                           "(audited)")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many past incidents to list")] = 20,
    env_file: EnvFile = None,
) -> None:
    """Open incidents and the latest past ones (docs/operations.md, "Alerts"); --test sends a test alert.

    --test exits 0 when every channel took the message, 1 when one failed (each attempt
    is listed and recorded), 3 when no channel is configured.
    """
    settings = _settings(env_file)
    if send_test:
        engine = _engine(settings)
        try:
            incident, attempts = alerts.send_test(engine, settings, actor=_actor(), source=AuditSource.CLI)
        except alerts.AlertError as exc:
            raise _fail(str(exc), exitcodes.CONFIG) from None
        except OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise _fail(f"the QI database is unreachable: {first}", exitcodes.UNAVAILABLE) from None
        finally:
            engine.dispose()
        lines = alerts.outcome_lines(attempts)
        failed = any(not any(a.ok for a in attempts if a.channel == c) for c in {a.channel for a in attempts})
        (err if failed else out).print(f"test alert #{incident}: " + "; ".join(lines), markup=False)
        if failed:
            raise typer.Exit(exitcodes.FAILED)
        return
    with _db(settings) as conn:
        current = alerts.open_incidents(conn)
        past = alerts.past_incidents(conn, limit=limit)
    for line in alerts.describe_channels(settings):
        out.print(line, markup=False)
    for title, rows in (("open incidents", current), ("past incidents", past)):
        if not rows:
            out.print(f"no {title}", markup=False)
            continue
        table = Table("#", "kind", "for", "opened", "resolved", "count", "last message", "last delivery", "what",
                      title=title)
        for r in rows:
            delivery = "" if r["last_ok"] is None else \
                f"{r['last_channel']}: {'ok' if r['last_ok'] else 'FAILED ' + (r['last_error'] or '')}"
            table.add_row(str(r["id"]), r["kind"], *_data(r["key"]), _local(r["opened_at"], settings),
                          _local(r["resolved_at"], settings), str(r["occurrences"]),
                          _local(r["last_notified_at"], settings), *_data(delivery[:80], r["summary"][:120]))
        out.print(table)


# --- API tokens --------------------------------------------------------------------------

token_app = typer.Typer(name="token", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        help="Bearer tokens of the workflow API on ROUTING_API_PORT (the app's API tokens page).")


@token_app.command("list")
def token_list(env_file: EnvFile = None) -> None:
    """Every token with its role and state (active, expired, revoked); never a secret (only hashes are kept)."""
    settings = _settings(env_file)
    with _db(settings) as conn:
        tokens = _auth().list_tokens(conn)
    if not tokens:
        out.print("no API tokens", markup=False)
        return
    now = datetime.now(UTC)
    table = Table("name", "role", "state", "created by", f"created ({settings.tz})", "expires", "last used",
                  "revoked")
    for t in tokens:
        table.add_row(*_data(t.name, t.role, t.state(now), t.created_by), _local(t.created_at, settings),
                      _local(t.expires_at, settings), _local(t.last_used_at, settings),
                      _local(t.revoked_at, settings))
    out.print(table)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="1-64 letters, digits, '.', '_', '-': the actor in the "
                                                     "audit log for what the token's holder does")],
    role: Annotated[Role, typer.Option("--role", help="viewer (reads, patient data masked), operator (also "
                                                      "retry, cancel, resend, hold, release) or admin")],
    expires_days: Annotated[int, typer.Option("--expires-days", min=0, max=3650,
                                              help="days until it expires; 0: never")] = 365,
    env_file: EnvFile = None,
) -> None:
    """Create a token (audited); its secret is printed once, alone on stdout, and exists nowhere else.

    Exit 0 created, 1 a token of that name exists (revoked ones keep their name), 2 a bad name.
    """
    auth = _auth()
    try:
        auth.check_token_name(name)
    except auth.TokenError as exc:
        raise _fail(str(exc), exitcodes.USAGE) from None
    settings = _settings(env_file)
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    with _db(settings, write=True) as conn:
        try:
            token, secret = auth.create_token(conn, name, role, actor=_actor(), source=AuditSource.CLI,
                                              expires_at=expires)
        except auth.TokenError as exc:
            raise _fail(str(exc), exitcodes.FAILED) from None
    err.print(f"token {token.name} ({token.role}, expires {_local(token.expires_at, settings)}) created; its "
              "secret follows, shown this once: put it in the client's secret store", markup=False)
    out.print(secret, markup=False, soft_wrap=True)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name (see `orthanc token list`)")],
    env_file: EnvFile = None,
) -> None:
    """Revoke a token for good (audited): its next request is refused. Exit 0, 1 already revoked, 5 unknown."""
    auth = _auth()
    settings = _settings(env_file)
    with _db(settings, write=True) as conn:
        if auth.get_token(conn, name) is None:
            raise _fail(f"no token named {name!r} (see `orthanc token list`)", exitcodes.NOT_FOUND)
        try:
            auth.revoke_token(conn, name, actor=_actor(), source=AuditSource.CLI)
        except auth.TokenError as exc:
            raise _fail(str(exc), exitcodes.FAILED) from None
    out.print(f"token {name} revoked: its next request is refused", markup=False)


# --- logs, shell, db --------------------------------------------------------------------


def logs(
    service: Annotated[str | None, typer.Argument(help=f"one of {', '.join(SERVICES)} (default: all)")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="lines to show")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    env_file: EnvFile = None,
) -> None:
    """Logs of the native stack's services (STATE_DIR/logs); compose: `docker compose logs`."""
    settings = _settings(env_file)
    if service is not None and service not in SERVICES:
        raise _fail(f"unknown service {service!r}; one of {', '.join(SERVICES)}", exitcodes.USAGE)
    if os.environ.get("STACK_MODE") == "compose":
        argv = ["docker", "compose", "-f", "stack/docker-compose.yml", "logs", "--tail", str(lines)]
        argv += ["--follow"] if follow else []
        argv += [service] if service else []
        raise typer.Exit(subprocess.call(argv))
    logs_dir = settings.state_dir / "logs"
    files = [logs_dir / f"{s}.log" for s in ([service] if service else SERVICES)]
    present = [str(f) for f in files if f.exists()]
    if not present:
        raise _fail(f"no logs in {logs_dir} yet (has the stack run? `make run`)", exitcodes.NOT_FOUND)
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), *present]
    try:
        raise typer.Exit(subprocess.call(argv))
    except KeyboardInterrupt:
        raise typer.Exit(exitcodes.OK) from None


@contextmanager
def _credentials_dir(settings: Settings) -> Iterator[Path]:
    """A private temp dir with a pgpass and a netrc, so no password goes on a command line
    or into an environment variable; removed when the session ends."""
    directory = Path(tempfile.mkdtemp(prefix="hub-cli-"))
    try:
        pgpass = directory / "pgpass"
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        password = settings.postgres_password.get_secret_value().replace("\\", "\\\\").replace(":", "\\:")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{settings.postgres_host}:{settings.postgres_port}:*:{settings.postgres_user}:{password}\n")
        netrc = directory / "netrc"
        fd = os.open(netrc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"machine {settings.orthanc_host} login {settings.orthanc_username} "
                         f"password {settings.orthanc_password.get_secret_value()}\n")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _session_env(settings: Settings, creds: Path, env_file: Path | None) -> dict[str, str]:
    from core.settings import PROJECT_ROOT, env_file_path  # slow import: see the module docstring

    venv_bin = PROJECT_ROOT / ".venv" / "bin"
    return {
        **os.environ,
        "HUB_ENV_FILE": str((env_file or env_file_path()).resolve()),
        "PATH": f"{venv_bin}:{PROJECT_ROOT}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(PROJECT_ROOT / ".venv"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "PGHOST": settings.postgres_host,
        "PGPORT": str(settings.postgres_port),
        "PGUSER": settings.postgres_user,
        "PGDATABASE": settings.qi_db,
        "PGPASSFILE": str(creds / "pgpass"),
        "NETRC": str(creds / "netrc"),
        "ORTHANC_URL": settings.orthanc_url,
        # HTTPS on: curl verifies Orthanc's certificate against the hub's CA.
        **({"CURL_CA_BUNDLE": str(settings.tls_ca_path)} if settings.https else {}),
        "ORTHANC_AET": settings.orthanc_aet,
        "DICOM_PORT": str(settings.dicom_port),
        "DICOM_STORAGE": str(settings.dicom_storage),
        "TZ": settings.tz,
        "TCP_NODELAY": "1",
        "PS1": "(orthanc-hub) \\w \\$ ",
    }


def shell(
    command: Annotated[str | None, typer.Option("--command", "-c", help="run this command instead of a shell")] = None,
    env_file: EnvFile = None,
) -> None:
    """A shell (or one command) in an environment set up for the hub and Orthanc.

    The venv comes first on PATH; psql reaches the QI database (PG* variables and a
    private pgpass file); `curl --netrc-file "$NETRC" "$ORTHANC_URL/system"` reaches
    Orthanc's API; TCP_NODELAY=1 speeds up DCMTK tools. Exits with the shell's status.
    """
    settings = _settings(env_file)
    with _credentials_dir(settings) as creds:
        env = _session_env(settings, creds, env_file)
        user_shell = os.environ.get("SHELL") or "/bin/bash"
        argv = [user_shell, "-c", command] if command else [user_shell, "-i"]
        if not command:
            err.print("orthanc hub shell: psql, curl --netrc-file \"$NETRC\" \"$ORTHANC_URL/...\", echoscu; "
                      "exit to leave", markup=False)
        code = subprocess.call(argv, env=env)
    raise typer.Exit(code)


def db(
    command: Annotated[str | None, typer.Option("--command", "-c", help="run this SQL and exit")] = None,
    env_file: EnvFile = None,
) -> None:
    """psql into the QI database as POSTGRES_USER (password from a private pgpass file)."""
    settings = _settings(env_file)
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    with _credentials_dir(settings) as creds:
        env = _session_env(settings, creds, env_file)
        argv = [psql, "-X", "-v", "ON_ERROR_STOP=1", *(["-c", command] if command else [])]
        code = subprocess.call(argv, env=env)
    raise typer.Exit(exitcodes.OK if code == 0 else (exitcodes.UNAVAILABLE if code == 2 else exitcodes.FAILED))


# --- registration ------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the operations commands to the `./orthanc` app."""
    app.command("status")(status)
    app.command("studies")(studies)
    app.command("study")(study)
    app.command("destinations")(destinations)
    app.command("test")(test)
    app.command("queue")(queue)
    app.command("retry")(retry)
    app.command("cancel")(cancel)
    app.command("hold")(hold)
    app.command("release")(release)
    app.command("alerts")(alerts_cmd)
    app.add_typer(token_app, name="token")
    app.command("logs")(logs)
    app.command("shell")(shell)
    app.command("db")(db)
