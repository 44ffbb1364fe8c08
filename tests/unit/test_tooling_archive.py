"""Archive verification (ops.tooling.archive) on hand-made archives: no servers needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ops.tooling.archive import (
    ENV_MEMBER,
    MANIFEST,
    ORTHANC_CONFIG_MEMBER,
    ORTHANC_DUMP,
    QI_DUMP,
    ArchiveError,
    Manifest,
    add_bytes,
    read_manifest,
    verify_archive,
)

MEMBERS = {ORTHANC_DUMP: b"orthanc-dump", QI_DUMP: b"qi-dump", ENV_MEMBER: b"A=1\n",
           ORTHANC_CONFIG_MEMBER: b"{}", "storage/ab/cd/abcd-1": b"DICM" * 100}


def build(path: Path, members: dict[str, bytes] = MEMBERS, *, manifest_edit=None, extra: dict[str, bytes] | None = None,
          skip_manifest: bool = False) -> Path:
    manifest = Manifest(created_at="2026-11-28T00:00:00+00:00", hub_version="test", qi_schema_revision="0002",
                        orthanc_version="1.10.1", source={}, counts={"studies": 1})
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_bytes(tar, manifest, data, name, 0)
        for name, data in (extra or {}).items():
            add_bytes(tar, None, data, name, 0)
        raw = manifest.to_json()
        if manifest_edit:
            data = json.loads(raw)
            manifest_edit(data)
            raw = json.dumps(data).encode()
        if not skip_manifest:
            add_bytes(tar, None, raw, MANIFEST, 0)
    return path


def test_a_good_archive_verifies(tmp_path: Path) -> None:
    manifest = verify_archive(build(tmp_path / "a.tar"))
    assert manifest.counts == {"studies": 1} and set(manifest.members) == set(MEMBERS)
    assert read_manifest(tmp_path / "a.tar").hub_version == "test"


@pytest.mark.parametrize("where", ["header", "data", "manifest", "end-marker"])
def test_truncated_archives_are_refused(tmp_path: Path, where: str) -> None:
    """Cut inside a member's header, its data, the manifest, or the end-of-archive marker.

    (Cutting only the zero padding after the end marker loses nothing and is accepted.)"""
    path = build(tmp_path / "a.tar")
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        storage = tar.getmember("storage/ab/cd/abcd-1")
        manifest = tar.getmember(MANIFEST)
    end = manifest.offset_data + -(-manifest.size // 512) * 512
    cut = {"header": storage.offset + 100, "data": storage.offset_data + 50,
           "manifest": manifest.offset_data + 10, "end-marker": end + 512}[where]
    bad = tmp_path / "cut.tar"
    bad.write_bytes(data[:cut])
    with pytest.raises(ArchiveError, match="truncated|corrupt"):
        verify_archive(bad)


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = build(tmp_path / "a.tar")
    with tarfile.open(path) as tar:
        offset = tar.getmember("storage/ab/cd/abcd-1").offset_data + 10
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="checksum mismatch for storage/ab/cd/abcd-1"):
        verify_archive(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip_manifest": True}, "no manifest.json"),
        ({"manifest_edit": lambda m: m.update(format="tarball")}, "not a routing hub backup"),
        ({"manifest_edit": lambda m: m.update(format_version=99)}, "format version 99 is not supported"),
        ({"manifest_edit": lambda m: m.update(surprise=1)}, "unknown fields"),
        ({"extra": {"storage/zz/zz/extra": b"x"}}, "not listed in the manifest"),
        ({"members": {k: v for k, v in MEMBERS.items() if k != QI_DUMP}}, "lacks db/qi.dump"),
        ({"extra": {"../escape": b"x"}}, "unsafe member name"),
    ],
)
def test_foreign_or_inconsistent_archives_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        verify_archive(build(tmp_path / "a.tar", **kwargs))


def test_not_a_tar_and_symlinks_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(ArchiveError):
        verify_archive(junk)
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("storage/evil")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="not a regular file"):
        verify_archive(link)
    with pytest.raises(ArchiveError, match="does not exist"):
        verify_archive(tmp_path / "absent.tar")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w", fileobj=io.BytesIO()):
        pass
    empty.write_bytes(b"\x00" * 1024)
    with pytest.raises(ArchiveError, match="not a hub backup"):
        verify_archive(empty)
