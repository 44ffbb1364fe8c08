"""Talking to the stack's supervisord over its Unix socket (XML-RPC), and starting it.

The XML-RPC interface gives exact process states and pids, so `status` and `stop`
never parse supervisorctl's human output.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from core.settings import PROJECT_ROOT
from ops.stack.layout import StackLayout


class SupervisorError(RuntimeError):
    """supervisord could not be started, reached or told what to do."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int
    description: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def proxy(layout: StackLayout) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{layout.socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def is_up(layout: StackLayout) -> bool:
    """True when a supervisord answers on this stack's socket."""
    if not layout.socket.exists():
        return False
    try:
        return bool(proxy(layout).supervisor.getState()["statename"] == "RUNNING")
    except (OSError, xmlrpc.client.Error):
        return False


def supervisord_pid(layout: StackLayout) -> int | None:
    try:
        return int(proxy(layout).supervisor.getPID())
    except (OSError, xmlrpc.client.Error):
        pid = read_pidfile(layout.supervisord_pidfile)
        return pid if pid and pid_alive(pid) else None


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_supervisord(layout: StackLayout, timeout: float = 30) -> None:
    """Start supervisord (it daemonizes) and wait until it answers on its socket."""
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(layout.supervisord_conf)],
        cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise SupervisorError(f"supervisord did not start ({proc.returncode}): {proc.stdout}{proc.stderr}".strip())
    deadline = time.monotonic() + timeout
    while not is_up(layout):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord is not answering on {layout.socket}; see {layout.supervisord_log}")
        time.sleep(0.1)


def processes(layout: StackLayout) -> dict[str, ProcessInfo]:
    try:
        infos = proxy(layout).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        raise SupervisorError(f"cannot reach supervisord on {layout.socket}: {exc}") from None
    return {
        i["name"]: ProcessInfo(i["name"], i["statename"], int(i["pid"]), i["description"]) for i in infos
    }


def start_process(layout: StackLayout, name: str, *, wait: bool = True) -> None:
    """Start `name`; with `wait`, block until it has stayed up for its `startsecs`.

    Without `wait` the caller watches the program's health probe instead, so that several
    programs start side by side rather than one `startsecs` after another."""
    try:
        proxy(layout).supervisor.startProcess(name, wait)
    except xmlrpc.client.Fault as exc:
        if "ALREADY_STARTED" in exc.faultString:
            return
        raise SupervisorError(
            f"{name} did not start ({exc.faultString}); see {layout.log_file(name)}") from None


def stop_process(layout: StackLayout, name: str) -> None:
    try:
        proxy(layout).supervisor.stopProcess(name, True)
    except xmlrpc.client.Fault as exc:
        if "NOT_RUNNING" not in exc.faultString:
            raise SupervisorError(f"{name} did not stop ({exc.faultString})") from None


def update(layout: StackLayout, order: tuple[str, ...]) -> list[str]:
    """Apply a re-rendered supervisord.conf like `supervisorctl update`: programs whose
    section changed are stopped (dependants first, by `order`) and re-added. Returns
    the programs that changed or were added; an autostart program starts again by
    itself, the others are left for the caller to start in order."""
    try:
        rpc = proxy(layout).supervisor
        added, changed, removed = rpc.reloadConfig()[0]
        rank = {name: i for i, name in enumerate(order)}
        for name in sorted([*removed, *changed], key=lambda n: -rank.get(n, len(order))):
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc.stopProcessGroup(name, True)
            rpc.removeProcessGroup(name)
        for name in sorted([*changed, *added], key=lambda n: rank.get(n, len(order))):
            rpc.addProcessGroup(name)
    except (OSError, xmlrpc.client.Error) as exc:
        raise SupervisorError(f"supervisord could not reload {layout.supervisord_conf}: {exc}") from None
    return [*changed, *added]


def shutdown(layout: StackLayout, timeout: float = 120) -> None:
    """Ask supervisord to stop every program (in reverse priority) and exit; wait for it."""
    pid = supervisord_pid(layout)
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        proxy(layout).supervisor.shutdown()
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord (pid {pid}) still running after {timeout:.0f} s")
        time.sleep(0.2)
