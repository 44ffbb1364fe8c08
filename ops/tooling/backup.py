"""`make backup`, `make backup-list`, `make restore FILE=...`.

Consistency, without stopping DICOM reception:
1. The QI database is dumped first (pg_dump -Fc, its own snapshot).
2. Orthanc's index is dumped next, inside an exported snapshot (`pg_export_snapshot`),
   and the list of DICOM files that snapshot references is read in the same
   transaction. The worker's /changes cursor (in the QI dump) is therefore never
   ahead of the index dump: after a restore the worker at most re-reads a few
   changes (recording is idempotent) and never skips one.
3. Exactly the referenced files are copied from DICOM_STORAGE. Orthanc never
   rewrites a stored file (OverwriteInstances is off), so a file that is referenced
   is complete; a file deleted meanwhile fails the backup loudly. Files received
   after the snapshot are simply not in this backup.
Every failing step raises: nothing is hidden, and a failed backup leaves no archive.

Optionally (`make backup ENCRYPT=1`, or BACKUP_ENCRYPT=1) the tar is streamed through
`age` to the public half of BACKUP_KEY_FILE, which never goes into an archive
(ops/tooling/encryption.py): `hub-backup-....tar.age`.

Restore decrypts an encrypted archive first (into a private directory, deleted
afterwards; a wrong key is refused), then verifies the whole archive (manifest,
member list, sizes, sha256) before it stops anything. It replaces DICOM_STORAGE's
contents only when the directory is the hub's (marked, empty or absent:
ops/datadirs.py). Then it stops the stack, recreates both databases empty,
pg_restores them, migrates the QI schema forward, replaces the DICOM storage, starts
the stack and checks that Orthanc holds the backed-up number of studies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from core.db import migrate
from core.disk import human_size
from core.envfile import read_env_file, write_private
from core.orthanc_client import orthanc_verify
from core.settings import (
    DEFAULTS_FILE,
    PROJECT_ROOT,
    Settings,
    SettingsError,
    env_file_path,
    load_settings,
    settings_from_values,
)
from ops import datadirs, pgcluster
from ops.orthanc_config import render_orthanc_config
from ops.tooling import encryption, exitcodes
from ops.tooling.archive import (
    ENV_MEMBER,
    MANIFEST,
    ORTHANC_CONFIG_MEMBER,
    ORTHANC_DUMP,
    QI_DUMP,
    ROUTING_MEMBER,
    STORAGE_PREFIX,
    ArchiveError,
    Manifest,
    add_bytes,
    add_file,
    read_manifest,
    verify_archive,
)
from ops.tooling.control import ControlError, StackControl, control_for

PG_DUMP = pgcluster.PG_BIN / "pg_dump"
PG_RESTORE = pgcluster.PG_BIN / "pg_restore"
ARCHIVE_PREFIX = "hub-backup-"
RESTORE_TMP = ".hub-restore-tmp"
Say = Callable[[str], None]


class BackupError(RuntimeError):
    """A backup or restore step failed; the message says which and why."""


def _quiet(_: str) -> None:
    pass


def backup_dir(settings: Settings) -> Path:
    return settings.state_dir / "backups"


def hub_version() -> str:
    """The code's git commit (with -dirty), or 'unknown' outside a git checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _pg_env(settings: Settings) -> dict[str, str]:
    """Environment for pg_dump/pg_restore: the password travels in the environment,
    never on the command line (visible to every user in `ps`)."""
    return {
        **os.environ,
        "PGHOST": settings.postgres_host,
        "PGPORT": str(settings.postgres_port),
        "PGUSER": settings.postgres_user,
        "PGPASSWORD": settings.postgres_password.get_secret_value(),
        "PGCONNECT_TIMEOUT": "10",
    }


def _run_pg(argv: list[str], settings: Settings, what: str) -> None:
    if not Path(argv[0]).is_file():
        raise BackupError(f"{argv[0]} is missing: install the PostgreSQL 15 client tools "
                          "(apt-get install postgresql-client-15); compose hosts need them too")
    proc = subprocess.run(argv, env=_pg_env(settings), capture_output=True, text=True, timeout=6 * 3600, check=False)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-2000:]}")


def _owner_connect(settings: Settings, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host=settings.postgres_host, port=settings.postgres_port, user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(), dbname=dbname, connect_timeout=10,
    )


def _qi_revision(settings: Settings) -> str | None:
    with _owner_connect(settings, settings.qi_db) as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None


def _orthanc_version(settings: Settings) -> str | None:
    try:
        response = httpx.get(f"{settings.orthanc_url}/system", timeout=5, verify=orthanc_verify(settings),
                             auth=(settings.orthanc_username, settings.orthanc_password.get_secret_value()))
        return str(response.json().get("Version")) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, OSError):
        return None


def storage_path(settings: Settings, uuid: str) -> Path:
    """Where Orthanc's filesystem storage keeps attachment `uuid`: xx/yy/uuid."""
    return settings.dicom_storage / uuid[0:2] / uuid[2:4] / uuid


def _dump_orthanc_index(settings: Settings, target: Path) -> tuple[list[str], dict[str, int]]:
    """pg_dump the index inside an exported snapshot; return the files and counts it references."""
    with _owner_connect(settings, settings.postgres_db) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            uuids = [str(r[0]) for r in conn.execute("SELECT uuid FROM attachedfiles ORDER BY uuid")]
            counts = {
                "studies": int(conn.execute("SELECT count(*) FROM resources WHERE resourcetype = 1").fetchone()[0]),  # type: ignore[index]
                "instances": int(conn.execute("SELECT count(*) FROM resources WHERE resourcetype = 3").fetchone()[0]),  # type: ignore[index]
            }
            _run_pg([str(PG_DUMP), "-Fc", "--snapshot", snapshot, "-f", str(target), settings.postgres_db],
                    settings, f"pg_dump of {settings.postgres_db}")
    return uuids, counts


def _encryption_key(settings: Settings, out_dir: Path, key_file: Path | None) -> Path:
    """The age key to encrypt with; refused inside the backup directory, which gets copied."""
    key = (key_file or settings.backup_key_file).resolve()
    if out_dir.resolve() in key.parents:
        raise BackupError(f"the backup key {key} is inside the backup directory {out_dir}: whoever copies the "
                          "backups would get the key too; keep it elsewhere (BACKUP_KEY_FILE)")
    return key


def archive_name(name: str, encrypt: bool) -> str:
    """The file name `make backup FILE=name` writes: `name`, with `.tar` (and `.age` when
    encrypted) added when missing. A compressed-looking name is refused: the archive is
    a plain tar (DICOM files do not compress), and `.tar.gz` would mislead whoever restores."""
    if not name or name in (".", "..") or "/" in name:
        raise BackupError(f"FILE={name!r}: give a file name (or a path to one)")
    if name.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
        raise BackupError(f"FILE={name}: the backup is a plain tar archive, not compressed; name it "
                          f"{name.split('.')[0]}.tar")
    base = name.removesuffix(encryption.SUFFIX)
    if not base.endswith(".tar"):
        base += ".tar"
    if name.endswith(encryption.SUFFIX) and not encrypt:
        raise BackupError(f"FILE={name}: a .age name is for an encrypted backup (ENCRYPT=1)")
    return base + (encryption.SUFFIX if encrypt else "")


def resolve_backup_file(file: str, default_dir: Path, encrypt: bool) -> Path:
    """`make backup FILE=...`: a bare name goes into the backup directory, a path is used as
    given (relative to the project directory, where make runs)."""
    given = Path(file)
    directory = given.parent.resolve() if "/" in file else default_dir
    return directory / archive_name(given.name, encrypt)


def create_backup(settings: Settings, env_file: Path, out_dir: Path, *, say: Say = _quiet,
                  encrypt: bool | None = None, key_file: Path | None = None, name: str | None = None) -> Path:
    """Write a verified-format backup archive into `out_dir` and return its path.

    PostgreSQL must be accepting connections (the caller arranges it). With `encrypt`
    (default: BACKUP_ENCRYPT) the tar is streamed through `age` to the key's public
    key, so no unencrypted copy ever touches the disk; the archive is then
    `hub-backup-....tar.age`. `name` (`make backup FILE=...`, see `archive_name`)
    replaces the dated name; an existing file of that name is never overwritten.
    """
    encrypt = settings.backup_encrypt if encrypt is None else encrypt
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    try:
        age_argv = encryption.encrypt_command(_encryption_key(settings, out_dir, key_file)) if encrypt else None
    except encryption.EncryptionError as exc:
        raise BackupError(str(exc)) from None
    started = datetime.now(UTC)
    if name is not None:
        name = archive_name(name, encrypt)
        if (out_dir / name).exists():
            raise BackupError(f"{out_dir / name} exists already: choose another FILE name (nothing was written)")
    else:
        plain_name = f"{ARCHIVE_PREFIX}{started.strftime('%Y%m%dT%H%M%SZ')}.tar"
        name = plain_name + (encryption.SUFFIX if encrypt else "")
        if (out_dir / plain_name).exists() or (out_dir / (plain_name + encryption.SUFFIX)).exists():
            time.sleep(1.1)
            return create_backup(settings, env_file, out_dir, say=say, encrypt=encrypt, key_file=key_file)
    final = out_dir / name
    part = out_dir / f".{name}.part"
    old_umask = os.umask(0o077)
    workdir = Path(tempfile.mkdtemp(prefix=".hub-backup-", dir=out_dir))
    age: subprocess.Popen[bytes] | None = None
    try:
        manifest = Manifest(
            created_at=started.isoformat(timespec="seconds"),
            hub_version=hub_version(),
            qi_schema_revision=_qi_revision(settings),
            orthanc_version=_orthanc_version(settings),
            source={
                "hostname": socket.gethostname(),
                "orthanc_aet": settings.orthanc_aet,
                "postgres_db": settings.postgres_db,
                "qi_db": settings.qi_db,
                "dicom_storage": str(settings.dicom_storage),
                "postgres_storage": str(settings.postgres_storage),
            },
            counts={},
        )
        say(f"dumping the QI database {settings.qi_db}")
        qi_dump = workdir / "qi.dump"
        _run_pg([str(PG_DUMP), "-Fc", "-f", str(qi_dump), settings.qi_db], settings, f"pg_dump of {settings.qi_db}")
        say(f"dumping Orthanc's index {settings.postgres_db}")
        orthanc_dump = workdir / "orthanc.dump"
        uuids, counts = _dump_orthanc_index(settings, orthanc_dump)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw:
            if age_argv is not None:
                say("encrypting with age as it is written")
                age = subprocess.Popen(age_argv, stdin=subprocess.PIPE, stdout=raw, stderr=subprocess.PIPE)
                assert age.stdin is not None
            sink = raw if age is None else age.stdin
            with tarfile.open(fileobj=sink, mode="w" if age is None else "w|", format=tarfile.PAX_FORMAT) as tar:
                _write_members(tar, manifest, settings, env_file, orthanc_dump, qi_dump, uuids, counts, started, say)
            if age is not None:
                assert age.stdin is not None and age.stderr is not None
                age.stdin.close()
                error = age.stderr.read().decode(errors="replace").strip()
                if age.wait() != 0:
                    raise BackupError(f"age failed to encrypt the archive: {error}")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, final)
        return final
    except BaseException:
        if age is not None and age.poll() is None:
            age.kill()
            age.wait()
        part.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.umask(old_umask)


def _write_members(tar: tarfile.TarFile, manifest: Manifest, settings: Settings, env_file: Path,
                   orthanc_dump: Path, qi_dump: Path, uuids: list[str], counts: dict[str, int],
                   started: datetime, say: Say) -> None:
    """Every member, in the archive's order, and the manifest last."""
    add_file(tar, manifest, orthanc_dump, ORTHANC_DUMP)
    add_file(tar, manifest, qi_dump, QI_DUMP)
    add_file(tar, manifest, env_file, ENV_MEMBER)
    rendered = json.dumps(render_orthanc_config(settings), indent=2, sort_keys=True).encode()
    add_bytes(tar, manifest, rendered, ORTHANC_CONFIG_MEMBER, started.timestamp())
    if settings.routing_rules.is_file():
        add_file(tar, manifest, settings.routing_rules, ROUTING_MEMBER)
    say(f"copying {len(uuids)} DICOM storage files")
    total = 0
    for uuid in uuids:
        source = storage_path(settings, uuid)
        if not source.is_file():
            raise BackupError(
                f"{source} is referenced by Orthanc's index but missing from DICOM_STORAGE "
                "(deleted during the backup, or the storage is damaged): run the backup again; "
                "if it fails again, check the storage"
            )
        member = STORAGE_PREFIX + str(source.relative_to(settings.dicom_storage))
        add_file(tar, manifest, source, member)
        total += manifest.members[member]["size"]
    manifest.counts = {**counts, "storage_files": len(uuids), "storage_bytes": total}
    add_bytes(tar, None, manifest.to_json(), MANIFEST, started.timestamp())


ENCRYPTED = "encrypted with age (contents shown by `python -m ops.tooling.backup verify FILE`)"


def list_backups(directory: Path) -> list[tuple[Path, Manifest | None, str | None]]:
    """Archives in `directory`, oldest first, with their manifest or why it is not shown
    (unreadable, or ENCRYPTED: reading an encrypted manifest means decrypting it all)."""
    found: list[tuple[Path, Manifest | None, str | None]] = []
    # Every archive, the dated ones and those named with `make backup FILE=...`.
    paths = [p for p in (*directory.glob("*.tar"), *directory.glob(f"*.tar{encryption.SUFFIX}"))
             if not p.name.startswith(".")]
    for path in sorted(paths) if directory.is_dir() else []:
        if encryption.is_encrypted(path):
            found.append((path, None, ENCRYPTED))
            continue
        try:
            found.append((path, read_manifest(path), None))
        except ArchiveError as exc:
            found.append((path, None, str(exc)))
    return found


# --- restore ---------------------------------------------------------------------------


def _extract_member(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    assert handle is not None
    return handle.read()


def _recreate_databases(settings: Settings, superuser_password: str) -> None:
    """Drop both databases (ending their sessions) and create them empty, owned by POSTGRES_USER."""
    with pgcluster.connect_superuser(settings.postgres_host, settings.postgres_port, superuser_password) as conn:
        for name in (settings.postgres_db, settings.qi_db):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    pgcluster.ensure_roles_and_databases(settings, superuser_password=superuser_password)


def _restore_dump(settings: Settings, dump: Path, dbname: str) -> None:
    _run_pg([str(PG_RESTORE), "--no-owner", "--exit-on-error", "--single-transaction", "-d", dbname, str(dump)],
            settings, f"pg_restore into {dbname}")


def _restore_storage(tar: tarfile.TarFile, manifest: Manifest, storage: Path) -> None:
    """Replace DICOM_STORAGE's contents with the archive's files.

    Files are first written under DICOM_STORAGE/.hub-restore-tmp and then moved into
    place, which works when DICOM_STORAGE is itself a mount point (it cannot be
    renamed then). They get the owner of DICOM_STORAGE, so Orthanc can read them.
    """
    storage.mkdir(parents=True, exist_ok=True)
    owner = storage.stat()
    tmp = storage / RESTORE_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o750)
    for member in tar:
        if not member.name.startswith(STORAGE_PREFIX):
            continue
        relative = member.name[len(STORAGE_PREFIX):]
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        handle = tar.extractfile(member)
        assert handle is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(handle, out, 1024 * 1024)
    for entry in storage.iterdir():
        if entry.name in (RESTORE_TMP, datadirs.MARKER):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in tmp.iterdir():
        os.replace(entry, storage / entry.name)
    tmp.rmdir()
    for root, dirs, files in os.walk(storage):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), owner.st_uid, owner.st_gid, follow_symlinks=False)


def check_restored(settings: Settings, manifest: Manifest, timeout: float = 180) -> None:
    """Wait for Orthanc and compare its study and instance counts with the manifest."""
    deadline = time.monotonic() + timeout
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{settings.orthanc_url}/statistics", auth=auth, timeout=5,
                                 verify=orthanc_verify(settings))
            if response.status_code == 200:
                stats = response.json()
                got = {"studies": int(stats["CountStudies"]), "instances": int(stats["CountInstances"])}
                want = {k: manifest.counts.get(k) for k in got}
                if got != want:
                    raise BackupError(f"Orthanc holds {got} after the restore, the backup had {want}")
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(1)
    raise BackupError(f"Orthanc did not answer within {timeout:.0f} s after the restore ({last})")


def default_key_file(env_file: Path) -> Path:
    """BACKUP_KEY_FILE of `env_file`, or of config/env.defaults when there is no usable .env."""
    try:
        return load_settings(env_file).backup_key_file
    except SettingsError:
        raw = Path(read_env_file(DEFAULTS_FILE)["BACKUP_KEY_FILE"])
        return raw if raw.is_absolute() else (PROJECT_ROOT / raw).resolve()


def _scratch_dir(env_file: Path, archive: Path) -> Path:
    """A private directory for the decrypted copy: in STATE_DIR when it exists (the
    same disk as the data), else next to the archive, else the system's temp dir."""
    candidates = []
    with contextlib.suppress(SettingsError):
        candidates.append(load_settings(env_file).state_dir)
    candidates += [archive.resolve().parent, Path(tempfile.gettempdir())]
    for directory in candidates:
        if directory.is_dir() and os.access(directory, os.W_OK | os.X_OK):
            return Path(tempfile.mkdtemp(prefix=".hub-decrypted-", dir=directory))
    raise ArchiveError("no writable directory for the decrypted copy of the archive")


@contextlib.contextmanager
def opened_archive(archive: Path, env_file: Path, key_file: Path | None = None,
                   say: Say = _quiet) -> Iterator[Path]:
    """The archive as a plain tar: itself, or (age-encrypted) a decrypted private copy
    that is deleted afterwards. Decryption failures (wrong key, damage) raise
    ArchiveError, before anything is changed."""
    if not encryption.is_encrypted(archive):
        yield archive
        return
    key = key_file or default_key_file(env_file)
    scratch = _scratch_dir(env_file, archive)
    try:
        plain = scratch / archive.name.removesuffix(encryption.SUFFIX)
        say(f"decrypting {archive.name} with {key} into {scratch}")
        try:
            encryption.decrypt_file(archive, plain, key)
        except encryption.EncryptionError as exc:
            raise ArchiveError(str(exc)) from None
        yield plain
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore_backup(
    archive: Path, env_file: Path, control: StackControl, *, say: Say = _quiet, check_timeout: float = 180,
    key_file: Path | None = None,
) -> Manifest:
    """Restore `archive` into the stack configured by `env_file` (see module docstring).

    An age-encrypted archive is decrypted first (with `key_file`, default
    BACKUP_KEY_FILE), then verified like any other. Raises ArchiveError when the
    archive is unusable (or the key wrong) and datadirs.NotOwned when DICOM_STORAGE is
    not the hub's to replace, both before anything is changed.
    """
    with opened_archive(archive, env_file, key_file, say) as plain:
        return _restore_plain(plain, env_file, control, say=say, check_timeout=check_timeout)


def _restore_plain(archive: Path, env_file: Path, control: StackControl, *, say: Say,
                   check_timeout: float) -> Manifest:
    manifest = verify_archive(archive)
    say(f"archive verified: {len(manifest.members)} members, backup of {manifest.created_at}")
    with tarfile.open(archive, mode="r:") as tar:
        archived_env = _extract_member(tar, ENV_MEMBER)
    if env_file.exists():
        settings = load_settings(env_file)
        say(f"keeping the current configuration {env_file} (paths, ports and secrets)")
    else:
        from core.envfile import parse_env_text

        values = read_env_file(DEFAULTS_FILE)
        values.update(parse_env_text(archived_env.decode("utf-8"), ENV_MEMBER))
        settings = settings_from_values(values)
    settings.check_storage()
    # Restore empties DICOM_STORAGE: only the hub's own (marked, or empty) may be.
    datadirs.check_owned(settings.dicom_storage, "DICOM_STORAGE", allow_empty=True)
    if not env_file.exists():
        write_private(env_file, archived_env.decode("utf-8"))
        say(f"no configuration found: restored the backup's .env to {env_file}")
    datadirs.create_owned(settings.dicom_storage, "DICOM_STORAGE")
    datadirs.create_owned(settings.state_dir, "STATE_DIR", 0o700)
    say("stopping the stack")
    control.stop_all()
    work = Path(tempfile.mkdtemp(prefix=".hub-restore-", dir=settings.state_dir))
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member, filename in ((ORTHANC_DUMP, "orthanc.dump"), (QI_DUMP, "qi.dump")):
                (work / filename).write_bytes(_extract_member(tar, member))
            if ROUTING_MEMBER in manifest.members and not settings.routing_rules.exists():
                settings.routing_rules.parent.mkdir(parents=True, exist_ok=True)
                settings.routing_rules.write_bytes(_extract_member(tar, ROUTING_MEMBER))
        with control.maintenance_db(settings) as superuser_password:
            say("recreating the databases empty")
            _recreate_databases(settings, superuser_password)
            say(f"restoring {settings.postgres_db} and {settings.qi_db}")
            _restore_dump(settings, work / "orthanc.dump", settings.postgres_db)
            _restore_dump(settings, work / "qi.dump", settings.qi_db)
            say("migrating the QI schema forward")
            migrate(settings.pg_url())
        say(f"restoring {manifest.counts.get('storage_files', 0)} DICOM files into {settings.dicom_storage}")
        with tarfile.open(archive, mode="r:") as tar:
            _restore_storage(tar, manifest, settings.dicom_storage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("starting the stack")
    control.start_all()
    say("checking the restored stack")
    check_restored(settings, manifest, timeout=check_timeout)
    return manifest


# --- command line ------------------------------------------------------------------------


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} Type 'restore' to go on: ").strip() == "restore"


def _restore_command(args: argparse.Namespace, env_file: Path, say: Say) -> int:
    """Decrypt (when encrypted) and verify, confirm, restore; refusals change nothing."""
    refused = "\nnothing was changed."
    try:
        with opened_archive(args.file, env_file, args.key, say) as plain:
            manifest = verify_archive(plain)
            print(f"{args.file}: verified ({manifest.counts.get('studies', '?')} studies, made "
                  f"{manifest.created_at} by hub {manifest.hub_version})")
            if not args.yes and os.environ.get("CONFIRM") != "yes" and not _confirm(
                "This replaces the hub's databases and DICOM storage with the backup's."
            ):
                print("aborted: nothing was changed (non-interactive runs need CONFIRM=yes)", file=sys.stderr)
                return exitcodes.ABORTED
            restore_backup(plain, env_file, control_for(args.mode, env_file), say=say)
    except (ArchiveError, datadirs.NotOwned) as exc:
        print(f"error: refusing to restore: {exc}{refused}", file=sys.stderr)
        return exitcodes.CONFIG
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except (BackupError, ControlError, pgcluster.PgClusterError, psycopg.Error, OSError) as exc:
        print(f"error: the restore failed: {exc}\nThe stack may be stopped and the databases or storage "
              "partly restored: fix the cause and run the same restore again (the archive is unchanged), "
              "or `make run` to start what is there.", file=sys.stderr)
        return exitcodes.FAILED
    print("restore complete; the stack is running and holds the backed-up studies")
    return exitcodes.OK


def _key_command(env_file: Path) -> int:
    """`make backup-key`: create BACKUP_KEY_FILE and say how to keep it."""
    key_file = default_key_file(env_file)
    try:
        public = encryption.create_key(key_file)
    except encryption.EncryptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    print(f"backup key written: {key_file} (mode 600)\npublic key: {public}")
    print("Copy this file OFF the server now (a password manager, a safe): without it no encrypted backup "
          "can be restored, and whoever has it can read them all.")
    print("Then `make backup ENCRYPT=1`, or BACKUP_ENCRYPT=1 in .env for every backup.")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops.tooling.backup", description="Backups of the routing hub.")
    parser.add_argument("--mode", default=os.environ.get("STACK_MODE", "auto"), choices=("auto", "native", "compose"))
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="write a backup archive")
    create.add_argument("--dir", type=Path, default=None, help="directory for the archive (default STATE_DIR/backups)")
    create.add_argument("--file", default=None,
                        help="the archive's name (in --dir) or path, instead of hub-backup-<time>.tar (make backup FILE=)")
    crypt = create.add_mutually_exclusive_group()
    crypt.add_argument("--encrypt", dest="encrypt", action="store_true", default=None,
                       help="encrypt with age for BACKUP_KEY_FILE (default: BACKUP_ENCRYPT)")
    crypt.add_argument("--no-encrypt", dest="encrypt", action="store_false")
    listing = sub.add_parser("list", help="list the backups")
    listing.add_argument("--dir", type=Path, default=None)
    verify = sub.add_parser("verify", help="verify an archive without restoring it")
    verify.add_argument("file", type=Path)
    verify.add_argument("--key", type=Path, default=None, help="age key for an encrypted archive")
    restore = sub.add_parser("restore", help="restore an archive (replaces the current data)")
    restore.add_argument("file", type=Path)
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--key", type=Path, default=None,
                         help="age secret key for an encrypted archive (default BACKUP_KEY_FILE)")
    sub.add_parser("key", help="create the age key for encrypted backups (BACKUP_KEY_FILE)")
    args = parser.parse_args(argv)
    env_file = env_file_path()
    say: Say = lambda message: print(f"==> {message}", flush=True)  # noqa: E731

    if args.command == "key":
        return _key_command(env_file)

    if args.command == "verify":
        try:
            with opened_archive(args.file, env_file, args.key) as plain:
                manifest = verify_archive(plain)
        except ArchiveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exitcodes.CONFIG
        print(f"{args.file}: OK ({len(manifest.members)} members, {manifest.counts}, made {manifest.created_at})")
        return exitcodes.OK

    if args.command == "restore":
        return _restore_command(args, env_file, say)

    try:
        settings = load_settings(env_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    directory = args.dir or backup_dir(settings)
    if args.command == "list":
        entries = list_backups(directory)
        if not entries:
            print(f"no backups in {directory}")
        for path, listed, problem in entries:
            size = human_size(path.stat().st_size)
            if listed is None:
                print(f"{path}  {size}  {problem if problem == ENCRYPTED else 'UNREADABLE: ' + str(problem)}")
            else:
                print(f"{path}  {size}  made {listed.created_at}  hub {listed.hub_version}  "
                      f"{listed.counts.get('studies', '?')} studies, {listed.counts.get('instances', '?')} instances")
        return exitcodes.OK

    control = control_for(args.mode, env_file)
    name = None
    try:
        if args.file:
            target = resolve_backup_file(args.file, directory, settings.backup_encrypt if args.encrypt is None
                                         else args.encrypt)
            directory, name = target.parent, target.name
        with control.maintenance_db(settings):
            path = create_backup(settings, env_file, directory, say=say, encrypt=args.encrypt, name=name)
    except (BackupError, ControlError, pgcluster.PgClusterError, psycopg.Error, OSError) as exc:
        print(f"error: the backup failed: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    if encryption.is_encrypted(path):
        print(f"backup written, encrypted with age: {path} ({human_size(path.stat().st_size)})")
        return exitcodes.OK
    manifest = read_manifest(path)
    print(f"backup written: {path} ({human_size(path.stat().st_size)}, {manifest.counts.get('studies')} studies, "
          f"{manifest.counts.get('storage_files')} files)")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
