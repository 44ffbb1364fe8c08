"""`./orthanc retention`: what retention would delete and why each other study stays; --run deletes now.

The policy and the deletion are core/retention.py's, the same the worker runs
(docs/operations.md, "Retention"). --dry-run (the default) only reads; --run takes the
retention lock (so it never runs beside a worker's run), deletes, and writes an audit
entry `retention.run` under the operator's name besides each study's own. Studies are
named by internal number and accession, never by patient. Exit codes as ops/cli_ops.py.
core.retention (httpx, pydantic-settings) is imported inside the command, for start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.exc import OperationalError

from core.disk import mib
from core.states import AuditSource
from ops.cli_ops import EnvFile, _actor, _data, _engine, _fail, _local, _orthanc, _OrthancFailed, _settings, err, out
from ops.tooling import exitcodes

if TYPE_CHECKING:
    from core.retention import Plan
    from core.settings import Settings


def _print_plan(plan: Plan, settings: Settings, limit: int, *, done: bool) -> None:
    out.print(f"policy: {plan.policy.describe()}", markup=False)
    if plan.free_bytes is not None and plan.total_bytes is not None:
        state = "under the low watermark" if plan.pressure else "ok"
        out.print(f"DICOM_STORAGE {settings.dicom_storage}: {mib(plan.free_bytes)} free of "
                  f"{mib(plan.total_bytes)} ({state})", markup=False)
    verb = "deleted" if done else "would delete"
    estimate = f", about {mib(plan.estimated_bytes)}" if plan.estimated_bytes is not None else ""
    out.print(f"{verb}: {len(plan.purge)} studies{estimate}", markup=False)
    _table(f"{verb}", [d.row(settings.zone) for d in plan.purge], settings, limit)
    kept = plan.kept()
    counts = plan.kept_counts()
    out.print(f"kept: {len(kept)} studies" + (": " + ", ".join(f"{n} {c}" for c, n in counts.most_common())
                                             if counts else ""), markup=False)
    _table("kept, oldest first", [d.row(settings.zone) for d in kept], settings, limit)


def _table(title: str, rows: list[dict[str, Any]], settings: Settings, limit: int) -> None:
    if not rows:
        return
    table = Table("study", "accession", "received", "delivered", "why", title=title)
    for r in rows[:limit]:
        table.add_row(str(r["study"]), *_data(r["accession"]), _local(r["received_at"], settings),
                      _local(r["delivered_at"], settings), *_data(r["reason"]))
    out.print(table)
    if len(rows) > limit:
        out.print(f"... and {len(rows) - limit} more (--limit)", markup=False)


def retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would go and why the rest stays "
                                                            "(the default)")] = False,
    run_now: Annotated[bool, typer.Option("--run", help="delete now, as the worker would (audited)")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="rows listed per table")] = 50,
    env_file: EnvFile = None,
) -> None:
    """Retention (docs/operations.md, "Retention"): --dry-run lists what would be deleted from Orthanc
    and why each other study stays; --run deletes it now. Records stay in the QI database, marked purged."""
    from core import recorder
    from core import retention as policy

    if dry_run and run_now:
        raise _fail("give --dry-run or --run, not both", exitcodes.USAGE)
    settings = _settings(env_file)
    engine = _engine(settings)
    try:
        with _orthanc(settings, timeout=60) as orthanc:
            if not run_now:
                _print_plan(policy.dry_run(engine, orthanc, settings), settings, limit, done=False)
                return
            actor = _actor()
            with policy.exclusive(engine):
                result = policy.run(engine, orthanc, settings, actor=actor, source=AuditSource.CLI)
            with engine.begin() as conn:
                recorder.audit(conn, actor=actor, source=AuditSource.CLI, action=policy.AUDIT_RUN, target="retention",
                               after=result.summary())
    except policy.RetentionBusy as exc:
        raise _fail(str(exc), exitcodes.FAILED) from None
    except _OrthancFailed as exc:
        raise _fail(str(exc), exitcodes.UNAVAILABLE) from None
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise _fail(f"the QI database is unreachable: {first}", exitcodes.UNAVAILABLE) from None
    finally:
        engine.dispose()
    _print_plan(result.plan, settings, limit, done=True)
    if result.skipped:
        out.print(f"spared at the last check: {len(result.skipped)} (a new arrival or job meanwhile)", markup=False)
    if result.failed:
        err.print(f"stopped: Orthanc failed on {len(result.failed)} study: " + next(iter(result.failed.values())),
                  markup=False)
        raise typer.Exit(exitcodes.FAILED)


def register(app: typer.Typer) -> None:
    app.command("retention")(retention)

