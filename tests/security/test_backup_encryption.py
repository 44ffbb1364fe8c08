"""Encrypted backups (`make backup ENCRYPT=1`): nothing readable without the key, a full
round trip with it, and a wrong key (or a damaged archive) refused with nothing changed.

Real servers, as in tests/integration/test_tooling_backup.py (whose MiniStack fixture
this reuses): the harness's PostgreSQL, an Orthanc holding two studies a real worker
delivered to a real PACS. Encryption is age's (ops/tooling/encryption.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.settings import PROJECT_ROOT
from ops.tooling.backup import create_backup, list_backups, restore_backup
from tests.integration import test_tooling_backup as tooling_backup
from tests.integration.test_tooling_backup import HarnessControl, MiniStack, orthanc_snapshot, qi_snapshot

pytestmark = pytest.mark.integration
stack = tooling_backup.stack  # the MiniStack fixture: two delivered studies behind a real Orthanc


def _new_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return path


def _backup(stack: MiniStack, out: Path, key: Path) -> Path:
    """`make backup ENCRYPT=1` with the key given explicitly."""
    return create_backup(stack.settings, stack.env_file, out, encrypt=True, key_file=key)  # type: ignore[call-arg]


def _restore_cli(archive: Path, env_file: Path, key: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    return subprocess.run([sys.executable, "-m", "ops.tooling.backup", "--mode", "native", "restore", str(archive),
                           "--yes", "--key", str(key)],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300, check=False)


def _records(stack: MiniStack) -> dict[str, list[tuple]]:
    """The QI database's records (not the running worker's heartbeats, which move on)."""
    tables = ("studies", "series", "events", "routing_jobs", "job_series", "audit_log", "app_users", "qi_study")
    return {k: v for k, v in qi_snapshot(stack.settings).items() if k in tables}


def _leftovers(*directories: Path) -> list[Path]:
    """Decrypted copies left behind (there must never be any)."""
    return [p for d in directories for p in d.rglob("*") if ".hub-decrypted-" in str(p) or p.name.endswith(".tar")]


def test_encrypted_backup_round_trip(stack: MiniStack, tmp_path: Path) -> None:
    key = _new_key(tmp_path / "keys" / "backup-key.txt")
    rest = stack.orthanc.rest
    assert rest is not None
    patient_ids = [rest.get(f"/patients/{p}")["MainDicomTags"]["PatientID"] for p in rest.get("/patients")]
    before_orthanc = orthanc_snapshot(stack.orthanc)
    assert stack.worker is not None
    stack.worker.stop()
    stack.worker = None
    before_qi = qi_snapshot(stack.settings)

    archive = _backup(stack, tmp_path / "backups", key)

    assert archive.name.endswith(".tar.age") and archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    raw = archive.read_bytes()
    secret_key = next(line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    readable = [stack.values["ORTHANC_PASSWORD"], stack.values["POSTGRES_PASSWORD"], *patient_ids, "DICM",
                "manifest.json", "db/orthanc.dump", "PGDMP", secret_key]
    assert [s for s in readable if s.encode() in raw] == [], "readable without the key"
    assert [name for name in os.listdir(tmp_path / "backups")] == [archive.name]  # no clear copy beside it
    assert [(p, m) for p, m, _ in list_backups(tmp_path / "backups")] == [(archive, None)]

    # Damage what the backup covers, then restore with the key.
    rest.delete(f"/patients/{rest.get('/patients')[0]}")
    engine = create_engine(stack.settings.pg_url())
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE studies, series, events, routing_jobs, job_series, audit_log CASCADE"))
    engine.dispose()
    control = HarnessControl(stack)
    restored = restore_backup(archive, stack.env_file, control, check_timeout=60, key_file=key)  # type: ignore[call-arg]

    assert control.calls == ["stop", "start"]
    assert restored.counts["studies"] == 2
    assert orthanc_snapshot(stack.orthanc) == before_orthanc
    assert qi_snapshot(stack.settings) == before_qi
    assert _leftovers(stack.settings.state_dir, tmp_path / "backups") == []


def test_a_wrong_key_or_a_damaged_archive_is_refused_with_nothing_changed(stack: MiniStack, tmp_path: Path) -> None:
    right = _new_key(tmp_path / "keys" / "right.txt")
    wrong = _new_key(tmp_path / "keys" / "wrong.txt")
    public_only = tmp_path / "keys" / "public.txt"
    public_only.write_text(subprocess.run(["age-keygen", "-y", str(right)], check=True, capture_output=True,
                                          text=True).stdout)
    archive = _backup(stack, tmp_path / "backups", right)
    damaged = tmp_path / "damaged.tar.age"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.tar.age"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    before = orthanc_snapshot(stack.orthanc)
    before_qi = _records(stack)
    env_before = stack.env_file.read_bytes()
    cases = [(archive, wrong, "does not open"), (archive, public_only, "only a public key"),
             (damaged, right, "cannot be decrypted"), (truncated, right, "cannot be decrypted")]
    for candidate, key, message in cases:
        result = _restore_cli(candidate, stack.env_file, key)
        assert result.returncode == 3, (candidate.name, key.name, result.stdout, result.stderr)
        assert "refusing to restore" in result.stderr and message in result.stderr, result.stderr
        assert "nothing was changed" in result.stderr
    # The stack was never stopped and holds exactly what it held; no decrypted copy remains.
    assert stack.orthanc.proc is not None and stack.orthanc.proc.poll() is None
    assert stack.worker is not None and stack.worker.health()
    assert orthanc_snapshot(stack.orthanc) == before
    assert _records(stack) == before_qi
    assert stack.env_file.read_bytes() == env_before
    assert _leftovers(stack.settings.state_dir, tmp_path / "backups", tmp_path / "keys") == []
    # The right key restores the same archive (the refusals above were about the key).
    verify = subprocess.run([sys.executable, "-m", "ops.tooling.backup", "verify", str(archive), "--key", str(right)],
                            capture_output=True, text=True, env={**os.environ, "HUB_ENV_FILE": str(stack.env_file)},
                            cwd=PROJECT_ROOT, timeout=120, check=False)
    assert verify.returncode == 0 and ": OK (" in verify.stdout, verify.stdout + verify.stderr
