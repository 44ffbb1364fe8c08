"""`make menu`: one numbered menu over setup, the stack, destinations, backups and removal.

Each entry runs the same `make` target or `./orthanc` command an administrator would
type, in the same terminal (so a wizard or a confirmation inside it works), and then
comes back. It adds no logic of its own, so the menu can never drift from the targets.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

from core.settings import PROJECT_ROOT, SettingsError, env_file_path, load_settings
from ops.tooling import exitcodes


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    argv: tuple[str, ...]
    asks: str | None = None  # an extra question whose answer is appended (e.g. FILE=)


def _make(*args: str) -> tuple[str, ...]:
    return ("make", "--no-print-directory", "-C", str(PROJECT_ROOT), *args)


def _cli(*args: str) -> tuple[str, ...]:
    return (str(PROJECT_ROOT / "orthanc"), *args)


ENTRIES: tuple[Entry, ...] = (
    Entry("1", "Status of the services (make status)", _make("status")),
    Entry("2", "Health, queue and versions (./orthanc status)", _cli("status")),
    Entry("3", "Start the stack (make run)", _make("run")),
    Entry("4", "Stop the stack (make stop)", _make("stop")),
    Entry("5", "Restart the stack (make restart)", _make("restart")),
    Entry("6", "Setup wizard (make setup)", _make("setup")),
    Entry("7", "Apply destinations from .env (make seed-modalities)", _make("seed-modalities")),
    Entry("8", "Destinations with C-ECHO (./orthanc destinations)", _cli("destinations")),
    Entry("9", "Recent studies (./orthanc studies)", _cli("studies")),
    Entry("10", "Routing queue (./orthanc queue)", _cli("queue")),
    Entry("11", "Retry every dead job (./orthanc retry --dead)", _cli("retry", "--dead")),
    Entry("12", "Recent logs (./orthanc logs)", _cli("logs", "-n", "30")),
    Entry("13", "Back up now (make backup)", _make("backup")),
    Entry("14", "List backups (make backup-list)", _make("backup-list")),
    Entry("15", "Restore a backup (make restore FILE=...)", _make("restore"), asks="Backup file to restore"),
    Entry("16", "Upgrade: backup, migrate, restart (make upgrade)", _make("upgrade")),
    Entry("17", "Remove the configuration, keep data (make reset)", _make("reset")),
    Entry("18", "Uninstall everything (make uninstall)", _make("uninstall")),
)


def render_menu() -> str:
    lines = ["", "Orthanc routing hub"]
    try:
        settings = load_settings()
        lines[-1] += f"  ({settings.orthanc_aet}, configuration {env_file_path()})"
    except SettingsError:
        lines.append(f"  (no valid configuration at {env_file_path()}: start with 6, the setup wizard)")
    lines += [f"  {e.key:>2}) {e.label}" for e in ENTRIES]
    lines.append("   q) Quit")
    return "\n".join(lines)


def run_entry(entry: Entry, extra: str | None = None) -> int:
    argv = list(entry.argv)
    if extra is not None:
        argv.append(f"FILE={extra}")
    print(f"$ {shlex.join(argv[0:1] + argv[4:] if argv[0] == 'make' else argv)}", flush=True)
    try:
        return subprocess.call(argv, env=os.environ.copy())
    except KeyboardInterrupt:
        return 130


def main() -> int:
    by_key = {e.key: e for e in ENTRIES}
    while True:
        print(render_menu())
        try:
            choice = input("Choose: ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            print()
            return exitcodes.OK
        if choice in ("q", "quit", "exit"):
            return exitcodes.OK
        entry = by_key.get(choice)
        if entry is None:
            print(f"  ! no entry {choice!r}: type a number from the list, or q")
            continue
        extra = None
        if entry.asks:
            try:
                extra = input(f"{entry.asks} (empty to go back): ").strip()
            except EOFError:
                return exitcodes.OK
            if not extra:
                continue
        code = run_entry(entry, extra)
        print(f"[{'done' if code == 0 else f'exit code {code}'}]")
        try:
            input("Press Enter to return to the menu")
        except EOFError:
            return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
