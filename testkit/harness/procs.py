"""Child processes that never outlive the test session.

Each server runs in the foreground as a direct child, in its own session (a Ctrl-C
reaches pytest first, which then stops the servers in order), with a parent-death
signal so that even a SIGKILLed pytest takes its servers down with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _parent_death_signal(sig: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def spawn(
    argv: Sequence[str],
    logfile: Path,
    *,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    death_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr appended to `logfile`."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log = open(logfile, "ab")  # noqa: SIM115 - the child owns it; closed below
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_parent_death_signal(death_signal),  # noqa: PLW1509 - no threads run code in the child
        )
    finally:
        log.close()


def terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
    """Send `sig`, wait up to `timeout`, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    return proc.wait(timeout=30)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
