"""Uninstall and restore delete only what the stack created (ops/datadirs.py).

Probes: `make uninstall` with DICOM_STORAGE=/var/lib (a system path, refused whatever
it holds) and with a directory the stack did not create (no ownership marker), both
confirmed with CONFIRM=uninstall; `make restore` into either. Each must be refused
before anything is stopped or deleted. The uninstall probes run in-process with
`shutil.rmtree` guarded, so that code without these checks fails the test instead of
deleting /var/lib.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.settings import PROJECT_ROOT, Settings, load_settings
from ops.tooling import backup, exitcodes, uninstall
from ops.tooling.archive import ENV_MEMBER, MANIFEST, ORTHANC_CONFIG_MEMBER, ORTHANC_DUMP, QI_DUMP, Manifest, add_bytes
from testkit.harness.stack import make_values, write_env

SYSTEM_PATHS = ("/", "/var", "/var/lib", "/var/log", "/etc", "/etc/orthanc", "/usr/local/share", "/opt", "/home",
                "/root", "/tmp", "/boot/grub", "/var/lib/postgresql", "/var/lib/orthanc")


@pytest.fixture
def guarded_rmtree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """shutil.rmtree that only ever deletes under tmp_path; returns what it was asked to delete."""
    real = shutil.rmtree
    asked: list[Path] = []

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        target = Path(path).resolve()
        asked.append(target)
        if tmp_path.resolve() not in target.parents:
            raise AssertionError(f"the test stopped an attempt to delete {target}")
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return asked


def _mark(path: Path, role: str) -> None:
    """What `make run` / `make setup` do to a directory they create.

    (Code from before the markers just creates it: the probes below then fail on what
    that code does, not on a missing module.)
    """
    try:
        from ops import datadirs
    except ImportError:
        path.mkdir(parents=True, exist_ok=True)
        return
    datadirs.create_owned(path, role)


def _site(tmp_path: Path, **overrides: str) -> tuple[Path, Settings]:
    """A configuration whose three data directories were created by the stack (marked)."""
    base = tmp_path / "site"
    values = make_values(base, base / "pgdata", STATE_DIR=str(base / "state"), **overrides)
    env_file = write_env(values, tmp_path / ".env")
    settings = load_settings(env_file)
    for role, path in (("DICOM_STORAGE", base / "orthanc-storage"), ("POSTGRES_STORAGE", base / "pgdata"),
                       ("STATE_DIR", base / "state")):
        _mark(path, role)
        (path / "data.bin").write_bytes(b"the hub's own data")
    return env_file, settings


def _uninstall(env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *args: str) -> tuple[int, str]:
    monkeypatch.setenv("HUB_ENV_FILE", str(env_file))
    code = uninstall.main(["--mode", "native", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_system_paths_are_refused_whatever_they_hold() -> None:
    from ops import datadirs

    for path in (*SYSTEM_PATHS, str(PROJECT_ROOT), str(PROJECT_ROOT.parent), str(PROJECT_ROOT / ".venv"),
                 str(Path.home())):
        assert datadirs.system_path_problem(Path(path)), path
        with pytest.raises(datadirs.NotOwned, match="refusing"):
            datadirs.check_owned(Path(path), "DICOM_STORAGE")
    assert datadirs.system_path_problem(Path("/opt/orthanc/orthanc-storage")) is None  # the default is fine
    assert datadirs.system_path_problem(Path("/srv/hub/dicom")) is None


def test_uninstall_refuses_a_system_path_even_when_confirmed(
    tmp_path: Path, guarded_rmtree: list[Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env_file, settings = _site(tmp_path)
    write_env({**make_values(tmp_path / "site", settings.postgres_storage, STATE_DIR=str(settings.state_dir)),
               "DICOM_STORAGE": "/var/lib"}, env_file)

    code, output = _uninstall(env_file, monkeypatch, capsys, "uninstall", "--confirm", "uninstall")

    assert code == exitcodes.CONFIG, output
    assert "DICOM_STORAGE=/var/lib" in output and "system directory" in output and "nothing was removed" in output
    assert guarded_rmtree == []
    assert env_file.exists() and Path("/var/lib/dpkg").is_dir()
    for path in (settings.postgres_storage, settings.state_dir):
        assert (path / "data.bin").exists(), "a refusal must remove nothing at all"


def test_uninstall_refuses_a_directory_the_stack_did_not_create(
    tmp_path: Path, guarded_rmtree: list[Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    foreign = tmp_path / "someone-elses-data"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("not the hub's")
    env_file, settings = _site(tmp_path)
    values = make_values(tmp_path / "site", settings.postgres_storage, STATE_DIR=str(settings.state_dir),
                         DICOM_STORAGE=str(foreign))
    write_env(values, env_file)

    code, output = _uninstall(env_file, monkeypatch, capsys, "uninstall", "--confirm", "uninstall")

    assert code == exitcodes.CONFIG, output
    assert f"DICOM_STORAGE={foreign}" in output and "did not create" in output and "nothing was removed" in output
    assert guarded_rmtree == []
    assert (foreign / "precious.txt").read_text() == "not the hub's"
    assert env_file.exists()
    for path in (settings.postgres_storage, settings.state_dir):
        assert (path / "data.bin").exists()


def test_an_older_install_is_refused_with_the_command_that_marks_it(
    tmp_path: Path, guarded_rmtree: list[Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env_file, settings = _site(tmp_path)
    from ops import datadirs

    (settings.dicom_storage / datadirs.MARKER).unlink()  # made before markers existed
    (settings.dicom_storage / "data.bin").unlink()
    stored = settings.dicom_storage / "3f" / "a2" / "3fa2c0de-0000-4000-8000-000000000000"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"DICM")

    code, output = _uninstall(env_file, monkeypatch, capsys, "uninstall", "--confirm", "uninstall")
    assert code == exitcodes.CONFIG and "make mark-data-dirs" in output, output
    assert stored.exists() and guarded_rmtree == []

    code, output = _uninstall(env_file, monkeypatch, capsys, "mark")
    assert code == exitcodes.OK and f"DICOM_STORAGE {settings.dicom_storage}: marked" in output, output
    code, output = _uninstall(env_file, monkeypatch, capsys, "uninstall", "--confirm", "uninstall")
    assert code == exitcodes.OK, output
    assert not env_file.exists()
    assert not any(p.exists() for p in (settings.dicom_storage, settings.postgres_storage, settings.state_dir))


def test_marking_refuses_what_is_not_the_hubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    env_file, settings = _site(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    values = make_values(tmp_path / "site", settings.postgres_storage, STATE_DIR=str(settings.state_dir),
                         DICOM_STORAGE=str(foreign))
    write_env(values, env_file)
    code, output = _uninstall(env_file, monkeypatch, capsys, "mark")
    assert code == exitcodes.CONFIG and "not the hub's" in output, output
    from ops import datadirs

    assert not datadirs.is_marked(foreign)


# --- restore --------------------------------------------------------------------------------


def _archive(path: Path, env_file: Path) -> Path:
    """A well-formed archive (it passes verification); its dumps are never reached."""
    manifest = Manifest(created_at="2026-01-01T00:00:00+00:00", hub_version="test", qi_schema_revision=None,
                        orthanc_version=None, source={}, counts={"studies": 0, "instances": 0})
    with tarfile.open(path, "w") as tar:
        for name, data in ((ORTHANC_DUMP, b"dump"), (QI_DUMP, b"dump"), (ENV_MEMBER, env_file.read_bytes()),
                           (ORTHANC_CONFIG_MEMBER, b"{}")):
            add_bytes(tar, manifest, data, name, 0)
        add_bytes(tar, None, manifest.to_json(), MANIFEST, 0)
    return path


class RefusingControl:
    """A StackControl that fails the test if restore gets as far as using it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stop_all(self) -> None:
        self.calls.append("stop")

    def start_all(self) -> None:
        self.calls.append("start")

    @contextmanager
    def maintenance_db(self, settings: Settings) -> Iterator[str]:
        raise AssertionError("restore reached the databases")
        yield ""


@pytest.mark.parametrize("dicom_storage", ["/var/lib", "foreign"])
def test_restore_refuses_to_replace_storage_the_stack_did_not_create(
    dicom_storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    env_file, settings = _site(tmp_path)
    target = Path(dicom_storage) if dicom_storage.startswith("/") else tmp_path / dicom_storage
    if not target.exists():
        target.mkdir()
        (target / "precious.txt").write_text("not the hub's")
    before = sorted(p.name for p in target.iterdir())
    values = make_values(tmp_path / "site", settings.postgres_storage, STATE_DIR=str(settings.state_dir),
                         DICOM_STORAGE=str(target))
    write_env(values, env_file)
    archive = _archive(tmp_path / "hub-backup-20260101T000000Z.tar", env_file)

    control = RefusingControl()
    with pytest.raises(ValueError, match="DICOM_STORAGE=.*refusing"):  # datadirs.NotOwned
        backup.restore_backup(archive, env_file, control)  # type: ignore[arg-type]
    assert control.calls == [], "the stack was stopped before the refusal"

    # The command line says so, exits 3, and changes nothing either.
    made: list[RefusingControl] = []

    def control_for(*_: Any) -> RefusingControl:
        made.append(RefusingControl())
        return made[-1]

    monkeypatch.setattr(backup, "control_for", control_for)
    monkeypatch.setenv("HUB_ENV_FILE", str(env_file))
    assert backup.main(["--mode", "native", "restore", str(archive), "--yes"]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert "refusing to restore" in err and "DICOM_STORAGE" in err and "nothing was changed" in err
    assert all(c.calls == [] for c in made)
    assert sorted(p.name for p in target.iterdir()) == before
