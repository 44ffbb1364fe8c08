"""Issue 18, part 3: changed storage paths never start an empty hub; `make migrate-storage`
copies with sha256 checks, resumes after an interruption and keeps the old copy.

Real files in tmp dirs; the one full-stack move is in tests/integration/test_tooling_fullstack.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT, Settings, settings_from_values
from ops import datadirs, storage_paths
from ops.rules_file import RULES_EXAMPLE
from ops.stack import native
from ops.tooling import migrate_storage
from testkit.harness.stack import make_values, write_env


def _settings(base: Path, **overrides: str) -> Settings:
    values = make_values(base, base / "old" / "pgdata", **{"DICOM_STORAGE": str(base / "old" / "dicom"), **overrides})
    return settings_from_values(values)


def _fill(directory: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != datadirs.MARKER}


DICOM_FILES = {f"{a:02x}/{b:02x}/{a:02x}{b:02x}-instance-{n}": os.urandom(3000 + n)
               for a, b, n in ((0x0a, 0x1b, 1), (0x0a, 0x2c, 2), (0xff, 0x00, 3), (0x12, 0x34, 4), (0x12, 0x35, 5))}


@pytest.fixture
def started(tmp_path: Path) -> Settings:
    """A hub whose last successful start used tmp_path/old/{dicom,pgdata}, both holding data."""
    settings = _settings(tmp_path)
    datadirs.create_owned(settings.dicom_storage, "DICOM_STORAGE")
    _fill(settings.dicom_storage, DICOM_FILES)
    datadirs.create_owned(settings.postgres_storage, "POSTGRES_STORAGE", 0o700)
    _fill(settings.postgres_storage, {"PG_VERSION": b"15\n", "base/1/1259": b"x" * 8192, "pg_wal/000001": b"w"})
    (settings.postgres_storage / "pg_tblspc").mkdir()  # empty directories matter to PostgreSQL
    settings.state_dir.mkdir(parents=True)
    storage_paths.record_start(settings, "native")
    return settings


def test_changed_path_to_an_empty_place_is_refused_with_both_paths(started: Settings, tmp_path: Path) -> None:
    new = tmp_path / "new" / "dicom"
    moved = _settings(tmp_path, DICOM_STORAGE=str(new))
    with pytest.raises(storage_paths.StorageMoved) as refused:
        storage_paths.check_before_start(moved, accept=False)
    message = str(refused.value)
    assert str(started.dicom_storage) in message and str(new) in message
    assert "make migrate-storage" in message and "ACCEPT_NEW_STORAGE=yes" in message
    assert "POSTGRES_STORAGE" not in message  # unchanged, not named
    # A directory holding only the hub's marker (setup created it) is still empty.
    datadirs.create_owned(new, "DICOM_STORAGE")
    with pytest.raises(storage_paths.StorageMoved):
        storage_paths.check_before_start(moved, accept=False)
    # An old place that is gone (an unmounted disk) is no reason to start empty either.
    gone = _settings(tmp_path, POSTGRES_STORAGE=str(tmp_path / "new" / "pgdata"))
    storage_paths.write_json(started.state_dir / storage_paths.RECORD,
                             {"DICOM_STORAGE": str(started.dicom_storage), "POSTGRES_STORAGE": str(tmp_path / "gone"),
                              "started_at": storage_paths.now_iso()})
    with pytest.raises(storage_paths.StorageMoved, match="no longer exists"):
        storage_paths.check_before_start(gone, accept=False)


def test_moved_by_hand_or_accepted_on_purpose_starts(started: Settings, tmp_path: Path) -> None:
    new = tmp_path / "new" / "dicom"
    moved = _settings(tmp_path, DICOM_STORAGE=str(new))
    found = storage_paths.check_before_start(moved, accept=True)  # ACCEPT_NEW_STORAGE=yes
    assert [c.role for c in found] == ["DICOM_STORAGE"]
    assert "empty new place" in storage_paths.describe_accepted(found)[0]
    _fill(new, {"ab/cd/abcd": b"moved by hand"})
    found = storage_paths.check_before_start(moved, accept=False)
    assert "holds data" in storage_paths.describe_accepted(found)[0]
    storage_paths.record_start(moved, "native")
    assert storage_paths.changes(moved) == []
    assert storage_paths.check_before_start(started, accept=False)  # going back is a change too, to a full place


@pytest.mark.parametrize("command", ["start", "restart"])
def test_make_start_refuses_before_creating_anything(started: Settings, tmp_path: Path, command: str) -> None:
    """`make start` (or `restart`, before it stops anything) on the moved paths: exit code, the
    message on stderr, nothing created."""
    new_dicom, new_pg = tmp_path / "new" / "dicom", tmp_path / "new" / "pgdata"
    rules = tmp_path / "site-config" / "routing.yml"  # absent, as on a fresh clone
    values = make_values(tmp_path, new_pg, DICOM_STORAGE=str(new_dicom), STATE_DIR=str(started.state_dir),
                         ROUTING_RULES=str(rules))
    env_file = write_env(values, tmp_path / ".env")
    proc = subprocess.run([sys.executable, "-m", "ops.stack", "--mode", "native", command], cwd=PROJECT_ROOT,
                          env={**os.environ, "HUB_ENV_FILE": str(env_file)}, capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout
    for text in (str(started.dicom_storage), str(new_dicom), str(started.postgres_storage), str(new_pg),
                 "make migrate-storage", "Nothing was started"):
        assert text in proc.stderr
    assert not new_dicom.exists() and not new_pg.exists()
    assert not (started.state_dir / "supervisord.conf").exists()
    if command == "start":  # `restart` refuses before anything: no rules file either
        # The active rules file is the site's, made from the tracked example (ops/rules_file.py).
        assert rules.read_text() == RULES_EXAMPLE.read_text()


def test_native_run_refuses_during_an_unfinished_move(started: Settings) -> None:
    storage_paths.write_json(started.state_dir / storage_paths.MIGRATION, {
        "state": "copying", "moves": {"DICOM_STORAGE": {"from": "/a", "to": str(started.dicom_storage)}}})
    with pytest.raises(native.StackError, match=r"(?s)unfinished.*migrate-storage` again"):
        native.run(started, started.state_dir / ".env", lambda _: None)


def test_copy_interrupted_then_resumed_skips_verified_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target, journal = tmp_path / "src", tmp_path / "dst", tmp_path / "journal.jsonl"
    _fill(source, DICOM_FILES)
    (source / "empty-dir").mkdir()
    os.chmod(source / "0a", 0o750)
    real_copy = migrate_storage._copy_one
    calls: list[Path] = []

    def dies_on_the_third(src: Path, dest: Path) -> str:
        calls.append(src)
        if len(calls) == 3:
            dest.with_name(dest.name + migrate_storage.PART_SUFFIX).write_bytes(b"torn")  # a half-written copy
            raise KeyboardInterrupt
        return real_copy(src, dest)

    monkeypatch.setattr(migrate_storage, "_copy_one", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        migrate_storage.copy_verified(source, target, journal, "DICOM_STORAGE")
    assert len(journal.read_text().splitlines()) == 2
    monkeypatch.setattr(migrate_storage, "_copy_one", real_copy)

    progress: list[str] = []
    copied, skipped = migrate_storage.copy_verified(source, target, journal, "DICOM_STORAGE", progress.append)
    assert (copied, skipped) == (3, 2)
    assert _digests(target) == _digests(source)
    assert (target / "empty-dir").is_dir() and os.stat(target / "0a").st_mode & 0o777 == 0o750
    assert not list(target.rglob(f"*{migrate_storage.PART_SUFFIX}"))
    assert progress[-1].startswith("DICOM_STORAGE: 5/5 files") and progress[-1].endswith("(100%)")
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert {e["path"]: e["sha256"] for e in entries} == _digests(source)
    # A verified file that went missing from the target is copied again, not trusted.
    (target / next(iter(DICOM_FILES))).unlink()
    assert migrate_storage.copy_verified(source, target, journal, "DICOM_STORAGE") == (1, 4)


def test_a_copy_that_reads_back_differently_stops_the_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    _fill(source, {"aa/bb/one": b"payload"})
    monkeypatch.setattr(migrate_storage, "_sha256", lambda _path: "0" * 64)  # the disk returns other bytes
    with pytest.raises(migrate_storage.MigrationError, match="sha256 differs"):
        migrate_storage.copy_verified(source, target, tmp_path / "j.jsonl", "DICOM_STORAGE")
    assert not (target / "aa" / "bb" / "one").exists() and not (tmp_path / "j.jsonl").read_text()


class _Control:
    """Stands in for the stack: the move only asks it to stop and to start."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.calls = settings, []  # type: ignore[var-annotated]

    def stop_all(self) -> None:
        self.calls.append("stop")

    def start_all(self) -> None:
        self.calls.append("start")
        storage_paths.check_before_start(self.settings, accept=False)  # what native.run does first
        storage_paths.record_start(self.settings, "native")

    def maintenance_db(self, settings: Settings):  # noqa: ANN201 - unused by the move
        raise AssertionError("the move needs no database")


def test_migrate_resumes_records_and_keeps_the_old_copy_until_confirmed(
        started: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new_dicom, new_pg = tmp_path / "new" / "dicom", tmp_path / "new" / "pgdata"
    moved = _settings(tmp_path, DICOM_STORAGE=str(new_dicom), POSTGRES_STORAGE=str(new_pg))
    before = {"dicom": _digests(started.dicom_storage), "pg": _digests(started.postgres_storage)}
    control = _Control(moved)
    monkeypatch.setattr(migrate_storage.pgcluster, "is_running", lambda _d: False)

    real_copy = migrate_storage._copy_one
    count = {"n": 0}

    def interrupted(src: Path, dest: Path) -> str:
        count["n"] += 1
        if count["n"] == 4:
            raise OSError(28, "No space left on device")
        return real_copy(src, dest)

    monkeypatch.setattr(migrate_storage, "_copy_one", interrupted)
    with pytest.raises(OSError):
        migrate_storage.migrate(moved, control)  # type: ignore[arg-type]
    with pytest.raises(storage_paths.StorageMoved, match="unfinished"):
        storage_paths.check_before_start(moved, accept=True)  # a partial copy never starts, even accepted
    monkeypatch.setattr(migrate_storage, "_copy_one", real_copy)

    lines: list[str] = []
    plan = migrate_storage.migrate(moved, control, say=lines.append)  # type: ignore[arg-type]
    assert control.calls == ["stop", "stop", "start"]
    assert plan["state"] == "copied" and "resuming the unfinished move" in lines
    assert any("verified before" in line for line in lines)
    assert {"dicom": _digests(new_dicom), "pg": _digests(new_pg)} == before
    assert (new_pg / "pg_tblspc").is_dir() and datadirs.is_marked(new_dicom) and datadirs.is_marked(new_pg)
    assert storage_paths.changes(moved) == []
    assert started.dicom_storage.is_dir() and started.postgres_storage.is_dir(), "the old copy is kept"

    removed = migrate_storage.delete_old(moved)
    assert removed == [started.dicom_storage, started.postgres_storage]
    assert not started.dicom_storage.exists() and not started.postgres_storage.exists()
    assert storage_paths.read_migration(moved.state_dir) is None
    assert _digests(new_dicom) == before["dicom"]


def test_delete_old_waits_for_a_start_on_the_new_paths(started: Settings, tmp_path: Path) -> None:
    moved = _settings(tmp_path, DICOM_STORAGE=str(tmp_path / "new" / "dicom"))
    control = _Control(moved)
    migrate_storage.migrate(moved, control, start=False)  # type: ignore[arg-type]
    with pytest.raises(migrate_storage.MigrationError, match="has not started"):
        migrate_storage.delete_old(moved)
    assert started.dicom_storage.is_dir()
    control.start_all()
    assert migrate_storage.delete_old(moved) == [started.dicom_storage]


def test_refusals_before_anything_is_changed(started: Settings, tmp_path: Path) -> None:
    full = tmp_path / "elsewhere"
    _fill(full, {"notes.txt": b"someone's files"})
    with pytest.raises(migrate_storage.MigrationError, match="already holds files"):
        migrate_storage.migrate(_settings(tmp_path, DICOM_STORAGE=str(full)), _Control(started))  # type: ignore[arg-type]
    inside = started.dicom_storage / "sub"
    with pytest.raises(migrate_storage.MigrationError, match="overlap"):
        migrate_storage.migrate(_settings(tmp_path, DICOM_STORAGE=str(inside)), _Control(started))  # type: ignore[arg-type]
    with pytest.raises(migrate_storage.MigrationError, match="nothing to move"):
        migrate_storage.migrate(started, _Control(started))  # type: ignore[arg-type]
    assert storage_paths.read_migration(started.state_dir) is None


def test_a_running_clusters_socket_is_left_out_and_links_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _fill(source, {"PG_VERSION": b"15\n"})
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(source / ".s.PGSQL.5432"))
        assert list(migrate_storage.scan(source).files) == ["PG_VERSION"]
    (source / "pg_wal").symlink_to(tmp_path)
    with pytest.raises(migrate_storage.MigrationError, match="symbolic link"):
        migrate_storage.scan(source)


def test_setup_refuses_moved_paths_before_creating_directories(
        started: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ops.tooling import exitcodes, wizard

    new_dicom = tmp_path / "new" / "dicom"
    values = make_values(tmp_path, started.postgres_storage, DICOM_STORAGE=str(new_dicom),
                         STATE_DIR=str(started.state_dir))
    env_file = write_env(values, tmp_path / ".env")
    monkeypatch.setenv("HUB_ENV_FILE", str(env_file))
    monkeypatch.delenv(storage_paths.ACCEPT_ENV, raising=False)
    assert wizard.main(["--defaults", "--no-start"]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert str(started.dicom_storage) in err and str(new_dicom) in err and "make migrate-storage" in err
    assert not new_dicom.exists()
