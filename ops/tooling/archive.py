"""The backup archive format: a plain tar with a manifest of sha256 checksums.

Kept apart from the backup and restore procedures so that verification, which must
run before a restore touches anything, is small enough to read in one sitting.

Layout of an archive (`hub-backup-YYYYmmddTHHMMSSZ.tar`, mode 600):

    db/orthanc.dump      pg_dump -Fc of POSTGRES_DB (Orthanc's index)
    db/qi.dump           pg_dump -Fc of QI_DB (worker tables, events, QI views)
    config/env           the .env in force (holds secrets: hence mode 600)
    config/orthanc.json  Orthanc's configuration rendered from that .env
    config/routing.yml   the routing rules file, when present
    storage/xx/yy/uuid   every DICOM file the Orthanc index dump references
    manifest.json        last: format, versions, time, counts, size+sha256 of each member

An encrypted backup (`hub-backup-....tar.age`) is this same tar inside age's format
(ops/tooling/encryption.py); restore decrypts it, then verifies it here as any other.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

FORMAT = "orthanc-hub-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ORTHANC_DUMP = "db/orthanc.dump"
QI_DUMP = "db/qi.dump"
ENV_MEMBER = "config/env"
ORTHANC_CONFIG_MEMBER = "config/orthanc.json"
ROUTING_MEMBER = "config/routing.yml"
STORAGE_PREFIX = "storage/"
REQUIRED = (ORTHANC_DUMP, QI_DUMP, ENV_MEMBER, ORTHANC_CONFIG_MEMBER)
_CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """The file is not a usable hub backup; the message says why, for an operator."""


@dataclass
class Manifest:
    """What an archive holds and how to check it."""

    created_at: str
    hub_version: str
    qi_schema_revision: str | None
    orthanc_version: str | None
    source: dict[str, Any]
    counts: dict[str, int]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"the manifest is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArchiveError("this is not a routing hub backup (the manifest names another format)")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ArchiveError(
                f"backup format version {version!r} is not supported by this version of the hub "
                f"(it reads versions 1 to {FORMAT_VERSION}); upgrade the hub first"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ArchiveError(f"the manifest is incomplete or has unknown fields ({exc})") from None


class HashingReader:
    """A file object that hashes what tarfile reads from it, so each file is read once."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


def add_file(tar: tarfile.TarFile, manifest: Manifest, source: Path, name: str) -> None:
    """Add `source` as member `name`; record its size and checksum in the manifest.

    tarfile raises when the file shrinks while it is read, so a file changed during the
    backup fails the backup instead of producing a silently wrong archive.
    """
    info = tarfile.TarInfo(name)
    stat = source.stat()
    info.size = stat.st_size
    info.mtime = int(stat.st_mtime)
    info.mode = 0o600
    with source.open("rb") as handle:
        reader = HashingReader(handle)
        tar.addfile(info, reader)
        if reader.size != stat.st_size or handle.read(1):
            raise OSError(f"{source} changed while it was being backed up")
    manifest.members[name] = {"size": reader.size, "sha256": reader.sha256.hexdigest()}


def add_bytes(tar: tarfile.TarFile, manifest: Manifest | None, data: bytes, name: str, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))
    if manifest is not None:
        manifest.members[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _has_end_marker(path: Path, data_end: int) -> bool:
    """True when two zero blocks follow the last member, as tar writes at the end.

    Without this check, an archive cut inside its final padding would read as complete.
    """
    with path.open("rb") as handle:
        handle.seek(data_end)
        tail = handle.read(2 * tarfile.BLOCKSIZE)
    return len(tail) == 2 * tarfile.BLOCKSIZE and not any(tail)


def verify_archive(path: Path) -> Manifest:
    """Check an archive completely (format, version, members, sizes, checksums).

    Reads every byte; raises ArchiveError with a message an operator can act on.
    Nothing outside the archive is touched.
    """
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist or is not a file")
    seen: dict[str, dict[str, Any]] = {}
    manifest_raw: bytes | None = None
    data_end = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                data_end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if not member.isfile():
                    raise ArchiveError(f"unexpected member {member.name!r} (not a regular file): not a hub backup")
                if not _safe_name(member.name):
                    raise ArchiveError(f"unsafe member name {member.name!r}: refusing this archive")
                if member.name in seen or (member.name == MANIFEST and manifest_raw is not None):
                    raise ArchiveError(f"member {member.name!r} appears twice: refusing this archive")
                handle = tar.extractfile(member)
                assert handle is not None
                if member.name == MANIFEST:
                    manifest_raw = handle.read()
                    continue
                digest = hashlib.sha256()
                size = 0
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                if size != member.size:
                    raise ArchiveError(f"{path.name} is truncated (member {member.name!r} is cut short)")
                seen[member.name] = {"size": size, "sha256": digest.hexdigest()}
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{path.name} is corrupt or truncated: {exc}") from None
    if manifest_raw is not None and not _has_end_marker(path, data_end):
        raise ArchiveError(f"{path.name} is truncated (its end-of-archive marker is missing)")
    if manifest_raw is None:
        if not seen:
            raise ArchiveError(f"{path.name} is not a hub backup (no manifest.json, no known members)")
        raise ArchiveError(f"{path.name} has no manifest.json: it is truncated or not a hub backup")
    manifest = Manifest.from_json(manifest_raw)
    missing = sorted(set(manifest.members) - set(seen))
    if missing:
        raise ArchiveError(f"members listed in the manifest are missing (truncated archive?): {', '.join(missing[:5])}")
    extra = sorted(set(seen) - set(manifest.members))
    if extra:
        raise ArchiveError(f"members not listed in the manifest: {', '.join(extra[:5])}: refusing this archive")
    for name, expected in manifest.members.items():
        if seen[name] != {"size": expected.get("size"), "sha256": expected.get("sha256")}:
            raise ArchiveError(f"checksum mismatch for {name}: the archive is corrupt")
    absent = [name for name in REQUIRED if name not in manifest.members]
    if absent:
        raise ArchiveError(f"the backup lacks {', '.join(absent)}: it is incomplete")
    return manifest


def read_manifest(path: Path) -> Manifest:
    """Read only the manifest (quick; for listings). Does not verify checksums."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            assert handle is not None
            return Manifest.from_json(handle.read())
    except KeyError:
        raise ArchiveError(f"{path.name} has no manifest.json") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{path.name} is corrupt or truncated: {exc}") from None
