"""Finding the processes that belong to one stack, by what they run, not by name.

`stop` must leave nothing behind, and must never touch another stack on the same
machine (a developer's next to a test's) or an unrelated Orthanc. A process belongs
to this stack when its command line names this stack's supervisord.conf,
orthanc.json or PostgreSQL data directory, or when its environment points
HUB_ENV_FILE at this stack's .env (the worker, the API, the app and the viewer gateway).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings
from ops.stack.layout import StackLayout
from ops.stack.supervisor import pid_alive


@dataclass(frozen=True)
class StackProcess:
    pid: int
    role: str  # supervisord, postgres, orthanc, hub (worker, api, app or viewer)
    cmdline: tuple[str, ...]


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def _hub_env_file(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in raw.split(b"\0"):
        if entry.startswith(b"HUB_ENV_FILE="):
            return entry.split(b"=", 1)[1].decode(errors="replace")
    return None


def _role(cmdline: tuple[str, ...], pid: int, settings: Settings, layout: StackLayout, env_file: Path) -> str | None:
    conf = str(layout.supervisord_conf)
    orthanc_jsons = {str(layout.node_config(n.index)) for n in settings.orthanc_node_list}
    datadir = str(settings.postgres_storage.resolve())
    if conf in cmdline and any("supervisord" in part for part in cmdline):
        return "supervisord"
    if orthanc_jsons.intersection(cmdline):
        return "orthanc"
    if cmdline and cmdline[0].endswith("/postgres") and datadir in cmdline:
        return "postgres"
    if any(part in ("worker", "api", "streamlit", "viewer") for part in cmdline):
        target = _hub_env_file(pid)
        if target is not None and Path(target).resolve() == env_file.resolve():
            return "hub"
    return None


def stack_processes(settings: Settings, layout: StackLayout, env_file: Path) -> list[StackProcess]:
    """Every live process of this stack (PostgreSQL's backends are covered by their postmaster)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        cmdline = _cmdline(pid)
        role = _role(cmdline, pid, settings, layout, env_file) if cmdline else None
        if role and pid_alive(pid):
            found.append(StackProcess(pid, role, cmdline))
    return found


def terminate(processes: list[StackProcess], timeout: float = 60) -> list[StackProcess]:
    """SIGTERM (SIGINT for PostgreSQL: fast shutdown), then SIGKILL after `timeout`.

    Returns the processes that were still alive after SIGKILL (normally none).
    """
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT if proc.role == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in processes:
        if pid_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    return [p for p in processes if pid_alive(p.pid)]


# Dependants first, so nothing writes to PostgreSQL while it shuts down. Orphaned
# hub processes (their supervisord gone) can hang on their dead output pipe when
# asked to stop, so they get a short grace before SIGKILL.
STOP_ORDER: tuple[tuple[str, float], ...] = (("supervisord", 120), ("hub", 10), ("orthanc", 30), ("postgres", 60))


def terminate_in_order(processes: list[StackProcess]) -> list[StackProcess]:
    """`terminate` role by role in STOP_ORDER; returns whatever survived."""
    survivors: list[StackProcess] = []
    for role, timeout in STOP_ORDER:
        group = [p for p in processes if p.role == role]
        if group:
            survivors += terminate(group, timeout)
    return survivors
