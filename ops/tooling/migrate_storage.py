"""`make migrate-storage`: move DICOM_STORAGE and POSTGRES_STORAGE to the paths in `.env`.

The operator edits the two paths in `.env`; `make start` then refuses (ops/storage_paths.py)
and names this command. It:

1. compares `.env` with the paths of the last successful start (STATE_DIR/storage-paths.json);
   the new place must be empty, or hold this move's own partial copy;
2. writes the plan (STATE_DIR/storage-migration.json, state `copying`), so that every start
   is refused until the copy is complete;
3. stops the stack, and checks that PostgreSQL's old cluster is stopped: its data directory
   is copied only while the cluster is shut down, which is what makes a file copy of it valid;
4. copies every file (directories with their modes and owners, files with their modes,
   owners and times) into a temporary name, reads the copy back, compares sha256 with the
   source's, then renames it; each verified file is appended to a journal
   (STATE_DIR/storage-migration/<ROLE>.jsonl), so a re-run after an interruption skips
   what is verified and continues;
5. marks the new places as the hub's (ops/datadirs.py), records them as the storage paths,
   sets the plan to `copied` and starts the stack.

The old copies stay. `make migrate-storage CONFIRM_DELETE_OLD=yes` deletes them, only
after a successful start on the new paths, and only directories that carry the hub's
ownership marker. docs/operations.md, "Moving storage".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.disk import human_size
from core.settings import Settings, SettingsError, env_file_path, load_settings
from ops import datadirs, pgcluster, storage_paths
from ops.tooling import exitcodes
from ops.tooling.control import ControlError, StackControl, control_for
from ops.tooling.uninstall import remove_tree

Say = Callable[[str], None]
JOURNAL_DIR = "storage-migration"
PART_SUFFIX = ".hub-move-part"
CHUNK = 1024 * 1024
PROGRESS_EVERY_S = 2.0
# Never copied: the source's ownership marker (the new place gets its own, naming its path).
SKIPPED = {datadirs.MARKER}


class MigrationError(RuntimeError):
    """The move cannot go on; the message says why and what to do. Nothing is deleted."""


@dataclass
class Tree:
    """What a source directory holds: its directories and files, relative, with sizes."""

    dirs: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _quiet(_: str) -> None:
    pass


def scan(source: Path) -> Tree:
    """Every directory and regular file under `source`; symlinks and devices are refused
    (the hub creates none, and a copied symlink would still point at the old place).
    Sockets are left out: a running cluster's, gone once it stops (the copy scans again)."""
    tree = Tree()
    for root, dirs, files in os.walk(source):
        rel_root = os.path.relpath(root, source)
        for name in sorted(dirs):
            path = os.path.join(root, name)
            if os.path.islink(path):
                raise MigrationError(f"{path} is a symbolic link: move it by hand (the hub never creates one)")
            tree.dirs.append(os.path.normpath(os.path.join(rel_root, name)))
        for name in sorted(files):
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISSOCK(info.st_mode):
                continue  # a running PostgreSQL's socket: recreated at start, never copied
            if not stat.S_ISREG(info.st_mode):
                raise MigrationError(f"{path} is not a regular file (a link or a device): move it by hand")
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel in SKIPPED or name.endswith(PART_SUFFIX):
                continue
            tree.files[rel] = info.st_size
    return tree


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _same_owner_and_mode(target: Path, source_info: os.stat_result) -> None:
    os.chmod(target, stat.S_IMODE(source_info.st_mode))
    if os.geteuid() == 0:
        os.chown(target, source_info.st_uid, source_info.st_gid)


def _read_journal(journal: Path) -> dict[str, dict[str, Any]]:
    """The files verified by earlier runs, by relative path; a torn last line is ignored."""
    verified: dict[str, dict[str, Any]] = {}
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return verified
    for line in lines:
        try:
            entry = json.loads(line)
            verified[str(entry["path"])] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return verified


class _Progress:
    """'DICOM_STORAGE: 1200/5000 files, 1.2 GiB/4.0 GiB (30%)', at most every few seconds."""

    def __init__(self, role: str, tree: Tree, say: Say) -> None:
        self.role, self.say = role, say
        self.files_total, self.bytes_total = len(tree.files), tree.total_bytes
        self.files = self.bytes = 0
        self.last = time.monotonic()

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.show()

    def show(self) -> None:
        self.last = time.monotonic()
        percent = 100 * self.bytes / self.bytes_total if self.bytes_total else 100
        self.say(f"{self.role}: {self.files}/{self.files_total} files, {human_size(self.bytes)}/"
                 f"{human_size(self.bytes_total)} ({percent:.0f}%)")


def copy_verified(source: Path, target: Path, journal: Path, role: str, say: Say = _quiet) -> tuple[int, int]:
    """Copy `source` into `target`, verifying each file's sha256; resumable through `journal`.

    A file already in the journal, present in `target` with the journal's size, and
    unchanged in `source` (same size) is skipped. Returns (files copied now, files
    skipped as verified before).
    """
    tree = scan(source)
    verified = _read_journal(journal)
    target.mkdir(parents=True, exist_ok=True)
    _same_owner_and_mode(target, source.stat())
    for rel in tree.dirs:
        made = target / rel
        made.mkdir(exist_ok=True)
        _same_owner_and_mode(made, (source / rel).stat())
    progress = _Progress(role, tree, say)
    copied = skipped = 0
    journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with journal.open("a", encoding="utf-8") as log:
        for rel, size in tree.files.items():
            done = verified.get(rel)
            dest = target / rel
            if done and done.get("size") == size and dest.is_file() and dest.stat().st_size == size:
                skipped += 1
                progress.add(size)
                continue
            digest = _copy_one(source / rel, dest)
            log.write(json.dumps({"path": rel, "size": size, "sha256": digest}) + "\n")
            log.flush()
            copied += 1
            progress.add(size)
        os.fsync(log.fileno())
    progress.show()
    return copied, skipped


def _copy_one(src: Path, dest: Path) -> str:
    """Copy one file through a temporary name, read the copy back and compare sha256."""
    part = dest.with_name(dest.name + PART_SUFFIX)
    sha = hashlib.sha256()
    info = src.stat()
    with src.open("rb") as reader, open(part, "wb") as writer:
        while chunk := reader.read(CHUNK):
            sha.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    expected = sha.hexdigest()
    if _sha256(part) != expected:
        part.unlink(missing_ok=True)
        raise MigrationError(f"the copy of {src} does not match it (sha256 differs): check the new disk; "
                             "run the move again to retry")
    _same_owner_and_mode(part, info)
    os.utime(part, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(part, dest)
    return expected


# --- the procedure ------------------------------------------------------------------------


def _journal(settings: Settings, role: str) -> Path:
    return settings.state_dir / JOURNAL_DIR / f"{role}.jsonl"


def plan_moves(settings: Settings) -> dict[str, dict[str, str]]:
    """The moves to make: an unfinished plan's, or the paths changed since the last start.

    Refuses (MigrationError) a new place that holds data of its own, overlapping paths,
    system paths and a missing old place, before anything is changed.
    """
    migration = storage_paths.read_migration(settings.state_dir)
    wanted = storage_paths.configured(settings)
    if migration and migration.get("state") == "copying":
        moves: dict[str, dict[str, str]] = migration["moves"]
        if any(Path(m["to"]) != wanted[role] for role, m in moves.items()):
            raise MigrationError(
                "an unfinished move goes to " + ", ".join(f"{r}={m['to']}" for r, m in moves.items())
                + ", but .env now says " + ", ".join(f"{r}={wanted[r]}" for r in moves)
                + ": put those paths back in .env and run this again to finish it")
        return moves
    record = storage_paths.read_record(settings.state_dir)
    if not record:
        raise MigrationError("no start has been recorded in STATE_DIR yet (storage-paths.json), so there is no old "
                             "place to move from: start the stack once with the old paths, then move")
    moves = {c.role: {"from": str(c.old), "to": str(c.new)} for c in storage_paths.changes(settings)}
    for role, move in moves.items():
        old, new = Path(move["from"]), Path(move["to"])
        if not old.is_dir():
            raise MigrationError(f"{role}: the old place {old} does not exist (an unmounted disk?): nothing to copy")
        if old == new or old in new.parents or new in old.parents:
            raise MigrationError(f"{role}: {old} and {new} overlap; choose a new place outside the old one")
        problem = datadirs.system_path_problem(new)
        if problem:
            raise MigrationError(f"{role}={new}: {problem}; choose another place")
        if storage_paths.holds_data(new):
            raise MigrationError(
                f"{role}: the new place {new} already holds files. If you moved the data there by hand, "
                "just start the stack (`make start`): it accepts and records it. Otherwise empty it or "
                "choose another place")
    return moves


def _check_space(moves: dict[str, dict[str, str]], trees: dict[str, Tree]) -> None:
    needed: dict[int, int] = {}
    where: dict[int, Path] = {}
    for role, move in moves.items():
        probe = Path(move["to"])
        while not probe.exists():
            probe = probe.parent
        device = probe.stat().st_dev
        needed[device] = needed.get(device, 0) + trees[role].total_bytes
        where[device] = probe
    for device, size in needed.items():
        free = shutil.disk_usage(where[device]).free
        if free < size:
            raise MigrationError(f"{where[device]} has {human_size(free)} free, the move needs {human_size(size)} there: "
                                 "free some space or choose another place")


def _stop_old_cluster(old_pg: Path, say: Say) -> None:
    """The cluster is copied only shut down: stop it if something left it running."""
    if pgcluster.is_initialised(old_pg) and pgcluster.is_running(old_pg):
        say(f"stopping the PostgreSQL cluster in {old_pg}")
        pgcluster.stop(old_pg, mode="fast")
    if (old_pg / "postmaster.pid").exists():
        raise MigrationError(f"{old_pg}/postmaster.pid is still there: PostgreSQL did not shut down cleanly. "
                             "Start and stop the stack with the old paths once (`make start` then `make stop`), "
                             "then run this again")


def migrate(settings: Settings, control: StackControl, *, say: Say = _quiet, start: bool = True) -> dict[str, Any]:
    """Move the storage (module docstring); return the finished plan."""
    moves = plan_moves(settings)
    if not moves:
        raise MigrationError("DICOM_STORAGE and POSTGRES_STORAGE are where the last start recorded them: "
                             "nothing to move (edit the paths in .env first)")
    resumed = (storage_paths.read_migration(settings.state_dir) or {}).get("state") == "copying"
    for role, move in moves.items():
        say(f"{role}: {move['from']} -> {move['to']}")
    trees = {role: scan(Path(move["from"])) for role, move in moves.items()}
    if not resumed:
        _check_space(moves, trees)
    plan = {"moves": moves, "state": "copying", "started_at": storage_paths.now_iso()}
    storage_paths.write_json(settings.state_dir / storage_paths.MIGRATION, plan)
    say("resuming the unfinished move" if resumed else "the plan is written: starts are refused until the copy is done")
    say("stopping the stack")
    control.stop_all()
    if "POSTGRES_STORAGE" in moves:
        _stop_old_cluster(Path(moves["POSTGRES_STORAGE"]["from"]), say)
    for role, move in moves.items():
        old, new = Path(move["from"]), Path(move["to"])
        tree = trees[role]
        say(f"copying {role}: {len(tree.files)} files, {human_size(tree.total_bytes)}, each checked with sha256")
        copied, skipped = copy_verified(old, new, _journal(settings, role), role, say)
        say(f"{role}: {copied} files copied and verified" + (f", {skipped} verified before" if skipped else ""))
        datadirs.mark(new, role)
    plan.update(state="copied", copied_at=storage_paths.now_iso())
    storage_paths.write_json(settings.state_dir / storage_paths.RECORD, {
        **{role: str(path) for role, path in storage_paths.configured(settings).items()},
        "started_at": None, "moved_at": plan["copied_at"],
    })
    storage_paths.write_json(settings.state_dir / storage_paths.MIGRATION, plan)
    old_places = ", ".join(m["from"] for m in moves.values())
    say(f"copy complete and verified; the new paths are recorded. The old copy stays in {old_places}")
    if start:
        say("starting the stack on the new paths")
        control.start_all()
    return plan


def delete_old(settings: Settings, *, say: Say = _quiet) -> list[Path]:
    """Delete the old copies of a finished move, once the stack has started on the new paths."""
    plan = storage_paths.read_migration(settings.state_dir)
    if not plan:
        raise MigrationError("no finished move to clean up (no STATE_DIR/storage-migration.json)")
    if plan.get("state") != "copied":
        raise MigrationError("the move is unfinished: run `make migrate-storage` to finish it first; "
                             "the old copy is the only complete one")
    record = storage_paths.read_record(settings.state_dir) or {}
    started = record.get("started_at")
    if not started or str(started) < str(plan.get("copied_at")):
        raise MigrationError("the stack has not started successfully on the new paths since the move: "
                             "`make start`, check the hub, then delete the old copy")
    wanted = storage_paths.configured(settings)
    removed = []
    for role, move in plan["moves"].items():
        old, new = Path(move["from"]), Path(move["to"])
        if wanted[role] != new or Path(str(record.get(role))) != new:
            raise MigrationError(f"{role} in .env ({wanted[role]}) is not the moved-to {new}: nothing deleted")
        try:
            datadirs.check_owned(old, role)
        except datadirs.NotOwned as exc:
            raise MigrationError(f"not deleting the old copy: {exc}") from None
        if old.exists():
            say(f"deleting the old copy {old}")
            remove_tree(old)
            removed.append(old)
    shutil.rmtree(settings.state_dir / JOURNAL_DIR, ignore_errors=True)
    storage_paths.forget_migration(settings.state_dir)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make migrate-storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default=os.environ.get("STACK_MODE", "auto"), choices=("auto", "native", "compose"))
    parser.add_argument("--delete-old", action="store_true",
                        help="delete the old copies of a finished move (make migrate-storage CONFIRM_DELETE_OLD=yes)")
    parser.add_argument("--no-start", action="store_true", help="do not start the stack after the copy")
    args = parser.parse_args(argv)
    env_file = env_file_path()
    say: Say = lambda message: print(f"==> {message}", flush=True)  # noqa: E731
    try:
        settings = load_settings(env_file)
        if args.delete_old:
            removed = delete_old(settings, say=say)
            print("deleted the old copies: " + ", ".join(map(str, removed)) if removed else
                  "the old copies were already gone; the move is closed")
            return exitcodes.OK
        plan = storage_paths.read_migration(settings.state_dir)
        if plan and plan.get("state") == "copied" and not storage_paths.changes(settings):
            olds = ", ".join(m["from"] for m in plan["moves"].values())
            print(f"the move is complete; the old copy is kept in {olds}.\nOnce the hub looks right, delete it with "
                  "`make migrate-storage CONFIRM_DELETE_OLD=yes`.")
            return exitcodes.OK
        if plan and plan.get("state") == "copied":
            storage_paths.forget_migration(settings.state_dir)  # a new move: the previous one's old copy stays
            shutil.rmtree(settings.state_dir / JOURNAL_DIR, ignore_errors=True)
        migrate(settings, control_for(args.mode, env_file, say), say=say, start=not args.no_start)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except (MigrationError, storage_paths.StorageMoved) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except (ControlError, pgcluster.PgClusterError, OSError) as exc:
        print(f"error: the move stopped: {exc}\nNothing was deleted; the old place is intact. Fix the cause and "
              "run `make migrate-storage` again: it continues where it stopped.", file=sys.stderr)
        return exitcodes.FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was deleted. Run `make migrate-storage` again to continue.", file=sys.stderr)
        return 130
    print("storage moved; the old copy is kept until you run `make migrate-storage CONFIRM_DELETE_OLD=yes`")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
