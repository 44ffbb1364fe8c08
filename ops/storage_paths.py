"""Where the hub's data was last started from, so a path edit cannot empty the hub.

Changing DICOM_STORAGE or POSTGRES_STORAGE in `.env` and starting again would
otherwise give a running hub with no studies (a new empty cluster and storage) while
the data sits, unused, at the old place. So every successful start (`make run`,
`make start`, `make setup`, the compose stack too) records the two paths in
STATE_DIR/storage-paths.json, and the next start compares:

- same paths: nothing to say;
- a changed path whose new place is empty while the old one still holds data (or is
  gone): refused, with both paths and the ways on (`make migrate-storage`, the old
  value back in `.env`, or ACCEPT_NEW_STORAGE=yes to start empty on purpose);
- a changed path whose new place already holds data (moved by hand): accepted, and
  recorded once the start succeeds.

A move by `make migrate-storage` (ops/tooling/migrate_storage.py) keeps its plan in
STATE_DIR/storage-migration.json; while it is unfinished every start is refused too,
because the new place then holds a partial copy. docs/operations.md, "Moving storage".
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.envfile import write_private
from core.settings import Settings
from ops import datadirs

RECORD = "storage-paths.json"
MIGRATION = "storage-migration.json"
# The two directories whose move empties the hub; STATE_DIR holds the record itself.
MOVABLE = {"DICOM_STORAGE": "dicom_storage", "POSTGRES_STORAGE": "postgres_storage"}
ACCEPT_ENV = "ACCEPT_NEW_STORAGE"
MIGRATE_COMMAND = "make migrate-storage"
# Inside an otherwise empty directory these are the hub's bookkeeping, not data.
_NOT_DATA = {datadirs.MARKER, f".{datadirs.MARKER}.tmp"}


class StorageMoved(RuntimeError):
    """A start refused because the configured storage is not where the data is."""


@dataclass(frozen=True)
class Change:
    """One storage path that differs from the recorded one."""

    role: str
    old: Path
    new: Path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def configured(settings: Settings) -> dict[str, Path]:
    """DICOM_STORAGE and POSTGRES_STORAGE of `settings`, resolved."""
    return {role: Path(getattr(settings, attribute)).resolve() for role, attribute in MOVABLE.items()}


def holds_data(path: Path) -> bool:
    """True when `path` exists and holds anything but the hub's ownership marker.

    A path that cannot be read counts as holding data: refusing to call it empty is
    the safe answer.
    """
    try:
        return any(entry.name not in _NOT_DATA for entry in path.iterdir())
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageMoved(f"{path} is unreadable ({exc}); fix or remove it, then start again") from None
    return value if isinstance(value, dict) else None


def read_record(state_dir: Path) -> dict[str, Any] | None:
    """The last successful start's record, or None before the first one."""
    return _read_json(state_dir / RECORD)


def read_migration(state_dir: Path) -> dict[str, Any] | None:
    """The plan of a `make migrate-storage` in progress or awaiting the old copies' deletion."""
    return _read_json(state_dir / MIGRATION)


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` atomically (mode 600)."""
    write_private(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def record_start(settings: Settings, mode: str) -> None:
    """After a successful start: these paths are where the hub's data now is."""
    paths = configured(settings)
    write_json(settings.state_dir / RECORD, {
        **{role: str(path) for role, path in paths.items()},
        "started_at": now_iso(),
        "mode": mode,
    })


def changes(settings: Settings) -> list[Change]:
    """The storage paths that differ from the last successful start's."""
    record = read_record(settings.state_dir)
    if not record:
        return []
    found = []
    for role, new in configured(settings).items():
        old = record.get(role)
        if isinstance(old, str) and Path(old) != new:
            found.append(Change(role, Path(old), new))
    return found


def _refusal(change: Change) -> str:
    old_state = "still holds the data" if change.old.exists() else "no longer exists (an unmounted disk?)"
    return (f"{change.role} changed: the last successful start used {change.old}, which {old_state};\n"
            f"  .env now says {change.new}, which is empty.")


def check_before_start(settings: Settings, accept: bool | None = None) -> list[Change]:
    """Raise StorageMoved when starting would run the hub on empty storage by mistake.

    Returns the accepted changes (moved by hand, or ACCEPT_NEW_STORAGE=yes): they are
    recorded by `record_start` once the start succeeds.
    """
    migration = read_migration(settings.state_dir)
    if migration and migration.get("state") == "copying":
        moves = "; ".join(f"{role} {m['from']} -> {m['to']}" for role, m in migration.get("moves", {}).items())
        raise StorageMoved(
            f"a storage move is unfinished ({moves}): the new place holds a partial copy.\n"
            f"Run `{MIGRATE_COMMAND}` again: it continues where it stopped, skipping the files already "
            "verified. Nothing was started.")
    if accept is None:
        accept = os.environ.get(ACCEPT_ENV, "").lower() == "yes"
    found = changes(settings)
    refused = [c for c in found if not holds_data(c.new) and (holds_data(c.old) or not c.old.exists())]
    if refused and not accept:
        raise StorageMoved(
            "\n".join(_refusal(c) for c in refused)
            + "\nStarting now would give a hub without its studies (Orthanc would report 0 studies).\n"
            f"  - to move the data to the new place: {MIGRATE_COMMAND} (stops the stack, copies with progress "
            "and sha256 checks, resumable, keeps the old copy until you confirm)\n"
            "  - if you copied it by hand: put the files into the new place first, then start again\n"
            "  - to keep using the old place: set " + ", ".join(f"{c.role}={c.old}" for c in refused)
            + " in .env again\n"
            f"  - to start an empty hub on the new place on purpose: make run {ACCEPT_ENV}=yes\n"
            "Nothing was started or changed.")
    return found


def describe_accepted(found: list[Change]) -> list[str]:
    """Operator lines for changes accepted at start (recorded when the start succeeds)."""
    lines = []
    for change in found:
        if holds_data(change.new):
            lines.append(f"{change.role} moved from {change.old} to {change.new} (the new place holds data): "
                         "using the new place")
        else:
            lines.append(f"{change.role} changed from {change.old} to {change.new}: starting on the empty new "
                         f"place ({ACCEPT_ENV}=yes)")
    return lines


def forget_migration(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / MIGRATION).unlink()
