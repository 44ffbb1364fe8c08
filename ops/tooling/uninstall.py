"""`make clean` (stop, drop caches), `make reset` (remove the configuration, keep the data)
and `make uninstall` (remove everything).

Both stop the stack first and both ask for a typed word, because an administrator
working over SSH can hit the wrong line in their shell history. Scripts pass the
word with `CONFIRM=reset` / `CONFIRM=uninstall`.

Kept by `reset`: DICOM_STORAGE, POSTGRES_STORAGE, backups, logs, and the cluster's
superuser secret (STATE_DIR/postgres-superuser.secret, which belongs to the data:
without it a later setup could not update the database roles). A later `make setup`
writes a new .env and the stack starts on the same data.

Removed by `uninstall`: the above data too, STATE_DIR (with its backups unless
--keep-backups), and .env. The code checkout and its .venv stay (remove the
directory to remove them); nothing outside these paths is touched. The backup
encryption key (BACKUP_KEY_FILE) is never removed: kept backups need it.

`uninstall` deletes only directories the stack created: each must hold the hub's
ownership marker, and system paths are refused outright (ops/datadirs.py). Every
check runs before the confirmation, so a refusal changes nothing. `mark` (make
mark-data-dirs) marks the directories of an install made before markers existed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.envfile import EnvFileError
from core.settings import PROJECT_ROOT, Settings, SettingsError, env_file_path, read_config, settings_from_values
from ops import datadirs, pgcluster
from ops.tooling import exitcodes
from ops.tooling.control import ControlError, control_for, resolve_mode

RENDERED = ("orthanc.json", "supervisord.conf", "stack-pids.json", "supervisord.pid", "supervisor.sock")


def check_removable(settings: Settings) -> list[str]:
    """Every reason not to delete the configured data directories (empty: all may go).

    A system path is refused whatever it holds; any other directory must carry the
    hub's ownership marker (ops/datadirs.py).
    """
    problems = []
    for role, path in datadirs.configured(settings).items():
        try:
            datadirs.check_owned(path, role)
        except datadirs.NotOwned as exc:
            problems.append(str(exc))
    return problems


def remove_tree(path: Path) -> None:
    """Remove `path`; of a mount point (a dedicated DICOM disk) only the contents."""
    if not path.exists():
        return
    if not os.path.ismount(path):
        shutil.rmtree(path)
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _size(path: Path) -> str:
    if not path.exists():
        return "absent"
    proc = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True, check=False)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout else "?"


def _confirm(word: str, given: str | None, what: str) -> bool:
    if given is not None:
        return given == word
    if not sys.stdin.isatty():
        print(f"not on a terminal: pass CONFIRM={word} to {what}", file=sys.stderr)
        return False
    try:
        return input(f"Type '{word}' to {what}: ").strip() == word
    except EOFError:
        return False


def _stop(mode: str, env_file: Path, settings: Settings | None) -> None:
    """Stop the stack, and a PostgreSQL left running by maintenance (pg_ctl)."""
    if env_file.exists():
        try:
            control_for(mode, env_file).stop_all()
        except (ControlError, SettingsError) as exc:
            print(f"warning: could not stop the stack cleanly: {exc}", file=sys.stderr)
    if settings is not None and pgcluster.is_initialised(settings.postgres_storage) and pgcluster.is_running(
        settings.postgres_storage
    ):
        pgcluster.stop(settings.postgres_storage)


def _settings(env_file: Path) -> Settings | None:
    try:
        return settings_from_values(read_config(env_file))
    except (SettingsError, EnvFileError):
        return None


def reset(env_file: Path, mode: str, confirm: str | None) -> int:
    settings = _settings(env_file)
    print(f"This stops the stack and removes the configuration: {env_file}"
          + (f" and the rendered files in {settings.state_dir}" if settings else ""))
    print("It keeps the DICOM storage, the PostgreSQL data, the backups and the logs.")
    if not _confirm("reset", confirm, "remove the configuration"):
        print("aborted: nothing was changed", file=sys.stderr)
        return exitcodes.ABORTED
    _stop(mode, env_file, settings)
    env_file.unlink(missing_ok=True)
    if settings is not None:
        for name in RENDERED:
            (settings.state_dir / name).unlink(missing_ok=True)
    print("configuration removed; `make setup` creates a new one and starts on the same data")
    return exitcodes.OK


def uninstall(env_file: Path, mode: str, confirm: str | None, keep_backups: bool) -> int:
    settings = _settings(env_file)
    if settings is None:
        print(f"error: {env_file} is missing or invalid, so the data paths are unknown; "
              "nothing was removed (remove the directories by hand, or restore the .env)", file=sys.stderr)
        return exitcodes.CONFIG
    problems = check_removable(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("nothing was removed", file=sys.stderr)
        return exitcodes.CONFIG
    backups = settings.state_dir / "backups"
    n_backups = len(list(backups.glob("hub-backup-*.tar*"))) if backups.is_dir() else 0
    print("This stops the stack and PERMANENTLY removes:")
    print(f"  DICOM storage     {settings.dicom_storage} ({_size(settings.dicom_storage)})")
    print(f"  PostgreSQL data   {settings.postgres_storage} ({_size(settings.postgres_storage)})")
    print(f"  state and logs    {settings.state_dir}"
          + ("" if keep_backups else f", including {n_backups} backup(s) in {backups}"))
    print(f"  configuration     {env_file}")
    if n_backups and not keep_backups:
        print("  (copy the backups elsewhere first, or run with KEEP_BACKUPS=1)")
    key = settings.backup_key_file.resolve()
    if key.exists() and any(p.resolve() in key.parents for p in datadirs.configured(settings).values()):
        print(f"  and the backup key {key}, without which encrypted backups cannot be restored: copy it first")
    if not _confirm("uninstall", confirm, "remove all of this"):
        print("aborted: nothing was changed", file=sys.stderr)
        return exitcodes.ABORTED
    _stop(mode, env_file, settings)
    if resolve_mode(mode) == "compose":
        from ops.stack import compose

        subprocess.run(compose.compose_argv(env_file, "down", "--volumes", "--remove-orphans"),
                       env=compose.compose_env(settings, env_file), check=False)
    for path in (settings.dicom_storage, settings.postgres_storage):
        remove_tree(path)
    if settings.state_dir.exists():
        for entry in settings.state_dir.iterdir():
            if keep_backups and entry.name in ("backups", datadirs.MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if not keep_backups and not os.path.ismount(settings.state_dir):
            settings.state_dir.rmdir()
    env_file.unlink(missing_ok=True)
    print("uninstalled: data, configuration and state removed"
          + (f"; backups kept in {backups}" if keep_backups else ""))
    print(f"the code and its virtual environment remain in {PROJECT_ROOT}")
    if settings.backup_key_file.exists():
        print(f"the backup key {settings.backup_key_file} was kept: encrypted backups cannot be restored without it")
    return exitcodes.OK


def mark(env_file: Path) -> int:
    """`make mark-data-dirs`: mark an older install's data directories as the hub's."""
    settings = _settings(env_file)
    if settings is None:
        print(f"error: {env_file} is missing or invalid, so the data paths are unknown", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        for line in datadirs.mark_existing(settings):
            print(line)
    except (datadirs.NotOwned, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    return exitcodes.OK


CACHES = (".pytest_cache", ".ruff_cache")


def clean(env_file: Path, mode: str) -> int:
    """Stop everything and remove caches; data, configuration, backups and logs stay."""
    _stop(mode, env_file, _settings(env_file))
    for name in CACHES:
        shutil.rmtree(PROJECT_ROOT / name, ignore_errors=True)
    for cache in PROJECT_ROOT.rglob("__pycache__"):
        if ".venv" not in cache.relative_to(PROJECT_ROOT).parts:
            shutil.rmtree(cache, ignore_errors=True)
    print("stopped; caches removed; data, configuration, backups and logs kept")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make clean|reset|uninstall", description=__doc__)
    parser.add_argument("--mode", default=os.environ.get("STACK_MODE", "auto"), choices=("auto", "native", "compose"))
    parser.add_argument("--confirm", default=None, help="the confirmation word, for scripts")
    parser.add_argument("action", choices=("clean", "reset", "uninstall", "mark"))
    parser.add_argument("--keep-backups", action="store_true")
    args = parser.parse_args(argv)
    env_file = env_file_path()
    if args.action == "clean":
        return clean(env_file, args.mode)
    if args.action == "reset":
        return reset(env_file, args.mode, args.confirm)
    if args.action == "mark":
        return mark(env_file)
    try:
        return uninstall(env_file, args.mode, args.confirm, args.keep_backups)
    except OSError as exc:
        print(f"error: removal stopped part-way: {exc}", file=sys.stderr)
        return exitcodes.FAILED


if __name__ == "__main__":
    sys.exit(main())
