"""Which directories the hub may delete: an ownership marker, and system paths refused.

`make uninstall` removes DICOM_STORAGE, POSTGRES_STORAGE and STATE_DIR recursively,
and `make restore` empties DICOM_STORAGE. Those paths come from `.env`, where a slip
(`DICOM_STORAGE=/var/lib`) would otherwise make them delete whatever is there, with
only a typed confirmation in the way. So:

- Whenever the stack creates one of these directories (setup, `make run`, restore,
  the PostgreSQL cluster's creation), or takes over an empty one, it writes the
  marker file `.routing-hub-owned` into it.
- Deleting refuses a directory without the marker, and refuses well-known system
  paths (`/`, `/var/lib`, `/etc`, `/usr/...`, home directories, the checkout)
  outright, marker or not.
- A directory made before markers existed, which plainly is the stack's (Orthanc's
  `xx/yy` storage layout, a PostgreSQL cluster, STATE_DIR's rendered files), is
  refused too, with the command that marks it after the operator has looked:
  `make mark-data-dirs`. Nothing is ever marked silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings

MARKER = ".routing-hub-owned"
SIGNATURE = "orthanc-routing-hub data directory"
MARK_COMMAND = "make mark-data-dirs"
# The data directories, by their .env names, and the Settings attribute of each.
ROLES = {"DICOM_STORAGE": "dicom_storage", "POSTGRES_STORAGE": "postgres_storage", "STATE_DIR": "state_dir"}

# Never deleted, whatever the configuration says: each path itself, and for the
# entries of SYSTEM_TREES also everything below it.
SYSTEM_PATHS = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/var/lib", "/var/log", "/var/cache", "/var/tmp", "/var/spool", "/var/mail", "/var/backups",
    "/var/opt", "/var/local", "/var/www", "/var/lib/postgresql", "/var/lib/orthanc", "/var/lib/docker",
    "/opt/orthanc",
))
SYSTEM_TREES = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc",
                                       "/sbin", "/sys", "/usr", "/run", "/var/lib/dpkg", "/var/lib/apt"))


class NotOwned(ValueError):
    """A directory the hub must not delete; the message says why and what to do."""


def _homes() -> set[Path]:
    homes = {Path.home().resolve()}
    with contextlib.suppress(OSError):
        homes.update(Path(entry.pw_dir).resolve() for entry in pwd.getpwall() if entry.pw_dir not in ("", "/"))
    return homes


def system_path_problem(path: Path) -> str | None:
    """Why `path` may never be deleted by the hub, or None.

    Independent of any marker: a marker inside /var/lib proves nothing.
    """
    resolved = path.resolve()
    if resolved in SYSTEM_PATHS or len(resolved.parts) < 3:
        return f"{resolved} is a system directory"
    for tree in SYSTEM_TREES:
        if resolved == tree or tree in resolved.parents:
            return f"{resolved} is inside the system directory {tree}"
    if resolved == PROJECT_ROOT or resolved in PROJECT_ROOT.parents:
        return f"{resolved} contains the hub's code"
    if resolved == PROJECT_ROOT / ".venv" or (PROJECT_ROOT / ".venv") in resolved.parents:
        return f"{resolved} is the hub's virtual environment"
    if resolved in _homes():
        return f"{resolved} is a home directory"
    return None


def is_marked(path: Path) -> bool:
    """True when `path` holds the hub's marker (a regular file, not a symlink)."""
    marker = path / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        return marker.read_text(encoding="utf-8", errors="replace").startswith(SIGNATURE)
    except OSError:
        return False


def mark(path: Path, role: str) -> Path:
    """Write the marker into `path` (mode 644, owned like the directory)."""
    marker = path / MARKER
    text = SIGNATURE + "\n" + json.dumps({
        "role": role,
        "path": str(path.resolve()),
        "marked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "note": "created by the routing hub: `make uninstall` may delete this directory, "
                "`make restore` may replace its contents",
    }, indent=2) + "\n"
    tmp = path / f".{MARKER}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    owner = path.stat()
    with contextlib.suppress(PermissionError):  # not root: the file is ours, as the directory is
        os.chown(tmp, owner.st_uid, owner.st_gid)
    os.replace(tmp, marker)
    return marker


def create_owned(path: Path, role: str, mode: int = 0o750) -> bool:
    """Create `path` (and parents) and mark it; mark an existing *empty* directory too.

    Returns True when the marker was written now. A directory that exists and holds
    anything is left alone: the stack did not create it, so it does not claim it.
    """
    if not path.exists():
        path.mkdir(parents=True, mode=mode)
        mark(path, role)
        return True
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        mark(path, role)
        return True
    return False


_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_STATE_FILES = ("orthanc.json", "supervisord.conf", "postgres-superuser.secret", "stack-pids.json", "logs", "backups")


def looks_like_the_hubs(path: Path, role: str) -> bool:
    """Whether an unmarked directory plainly holds what the hub puts there (an older install)."""
    try:
        names = {entry.name for entry in path.iterdir()}
    except OSError:
        return False
    if role == "DICOM_STORAGE":
        ours = {n for n in names if _HEX2.match(n)} | {"WebViewerCache", ".hub-restore-tmp"}
        return bool(names) and names <= ours
    if role == "POSTGRES_STORAGE":
        return "PG_VERSION" in names and "postgresql.conf" in names
    if role == "STATE_DIR":
        return bool(names & set(_STATE_FILES))
    return False


def check_owned(path: Path, role: str, *, allow_empty: bool = False) -> None:
    """Raise NotOwned unless the hub may delete `path` (or its contents).

    A path that does not exist passes (there is nothing to delete); with
    `allow_empty`, so does an empty directory (restore fills it, and marks it).
    """
    problem = system_path_problem(path)
    if problem:
        raise NotOwned(f"{role}={path}: refusing: {problem}, never deleted by the hub")
    if not path.exists():
        return
    if path.is_symlink() or not path.is_dir():
        raise NotOwned(f"{role}={path}: refusing: not a directory (a symlink or a file)")
    if is_marked(path) or (allow_empty and not any(path.iterdir())):
        return
    if looks_like_the_hubs(path, role):
        raise NotOwned(
            f"{role}={path}: refusing: it has no ownership marker ({MARKER}), though it looks like the "
            f"hub's {role} from before markers existed. If it is, mark it with `{MARK_COMMAND}` "
            "and run this again"
        )
    raise NotOwned(
        f"{role}={path}: refusing: the hub did not create this directory (no {MARKER} in it) and it does "
        "not look like the hub's data. Check the path in .env; remove the directory by hand if you mean to"
    )


def configured(settings: Settings) -> dict[str, Path]:
    """The data directories of `settings`, by their .env names."""
    return {role: getattr(settings, attribute) for role, attribute in ROLES.items()}


def mark_existing(settings: Settings) -> list[str]:
    """`make mark-data-dirs`: mark the configured directories that plainly are the hub's.

    Refuses (NotOwned) a system path, or a non-empty directory that does not look like
    the hub's. Returns one line per directory, for the operator.
    """
    done = []
    for role, path in configured(settings).items():
        problem = system_path_problem(path)
        if problem:
            raise NotOwned(f"{role}={path}: refusing to mark: {problem}")
        if not path.exists():
            done.append(f"{role} {path}: absent (it is created and marked when the stack starts)")
        elif is_marked(path):
            done.append(f"{role} {path}: already marked")
        elif not path.is_dir() or path.is_symlink():
            raise NotOwned(f"{role}={path}: refusing to mark: not a directory")
        elif not any(path.iterdir()) or looks_like_the_hubs(path, role):
            mark(path, role)
            done.append(f"{role} {path}: marked")
        else:
            raise NotOwned(f"{role}={path}: refusing to mark: it holds files that are not the hub's; "
                           "check the path in .env")
    return done
