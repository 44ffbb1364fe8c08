"""`make upgrade`: back up, migrate the QI database forward, restart; the data stays.

Run after replacing the code (git pull, or unpacking a release) — the Makefile
installs the pinned dependencies first. The backup comes first so that a failed
migration can be undone with `make restore`. Orthanc's PostgreSQL plugin upgrades
its own index schema when Orthanc starts.
"""

from __future__ import annotations

import argparse
import os
import sys

import psycopg

from core.db import migrate
from core.settings import SettingsError, env_file_path, load_settings
from ops import pgcluster
from ops.tooling import exitcodes
from ops.tooling.backup import BackupError, backup_dir, create_backup
from ops.tooling.control import ControlError, control_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make upgrade", description=__doc__)
    parser.add_argument("--mode", default=os.environ.get("STACK_MODE", "auto"), choices=("auto", "native", "compose"))
    parser.add_argument("--no-backup", action="store_true", help="skip the safety backup (not recommended)")
    parser.add_argument("--no-restart", action="store_true", help="migrate only; do not restart the stack")
    args = parser.parse_args(argv)
    env_file = env_file_path()
    try:
        settings = load_settings(env_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    control = control_for(args.mode, env_file)
    try:
        with control.maintenance_db(settings):
            if not args.no_backup:
                print("==> safety backup before the upgrade", flush=True)
                path = create_backup(settings, env_file, backup_dir(settings))
                print(f"    {path}")
            print("==> migrating the QI database forward", flush=True)
            migrate(settings.pg_url())
        if not args.no_restart:
            print("==> restarting the stack with the new code", flush=True)
            control.stop_all()
            control.start_all()
    except (BackupError, ControlError, pgcluster.PgClusterError, psycopg.Error, OSError) as exc:
        print(f"error: the upgrade failed: {exc}\nthe data is untouched; a backup made before it is listed by "
              "`make backup-list`", file=sys.stderr)
        return exitcodes.FAILED
    print("upgrade complete")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
