"""Optional encryption of backup archives with age (Debian package `age`).

Why: an archive holds every study (patient data) and `.env` (every password). Mode
600 protects it on this server, but archives are copied off it, to disks and shares
with other readers. Encrypted, a copy is useless without the key.

Why age: a small, audited tool with one job, packaged by Debian (bookworm: 1.1.1),
with no agent, keyring or configuration to manage. It encrypts to public keys
(X25519) and authenticates every 64 KiB chunk (ChaCha20-Poly1305), so a truncated or
altered archive fails to decrypt instead of yielding wrong data.

The key file (BACKUP_KEY_FILE, made by `make backup-key`, mode 600) is an age
identity: its public half encrypts, its secret half decrypts. It never goes into an
archive. A site may keep only the public key (`age1...`) on the server and the
secret key offline: backups are still encrypted here, and a restore is given the
secret key (`make restore KEY=...`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ops.stack.packages import INSTALL_SCRIPT

SUFFIX = ".age"
MAGIC = b"age-encryption.org/v1\n"
SECRET_PREFIX = "AGE-SECRET-KEY-"
PUBLIC_PREFIX = "age1"


class EncryptionError(RuntimeError):
    """Encryption or decryption is impossible or failed; the message says what to do."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise EncryptionError(f"`{name}` is not installed: install the Debian package age "
                              f"(as root: {INSTALL_SCRIPT} age; `make run` installs it natively)")
    return found


def is_encrypted(path: Path) -> bool:
    """True when `path` starts with age's header (whatever its name)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _key_lines(key_file: Path) -> list[str]:
    try:
        text = key_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncryptionError(f"the backup key {key_file} does not exist: create one with `make backup-key`, "
                              "or set BACKUP_KEY_FILE (or KEY=) to the key's path") from None
    except OSError as exc:
        raise EncryptionError(f"cannot read the backup key {key_file}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def recipients(key_file: Path) -> list[str]:
    """The public keys an archive is encrypted to: those in the file, and those of its secret keys."""
    lines = _key_lines(key_file)
    found = [line for line in lines if line.startswith(PUBLIC_PREFIX)]
    if any(line.startswith(SECRET_PREFIX) for line in lines):
        proc = subprocess.run([_tool("age-keygen"), "-y", str(key_file)], capture_output=True, text=True,
                              timeout=30, check=False)
        if proc.returncode != 0:
            raise EncryptionError(f"{key_file} is not a valid age key: {proc.stderr.strip()}")
        found += [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if not found:
        raise EncryptionError(f"{key_file} holds no age key (neither AGE-SECRET-KEY-... nor age1...)")
    return sorted(set(found))


def create_key(key_file: Path) -> str:
    """Write a new age identity to `key_file` (mode 600); return its public key.

    Refuses to replace an existing key: backups made with it would become unreadable.
    """
    if key_file.exists():
        raise EncryptionError(f"{key_file} already exists: a new key would make the backups encrypted with "
                              "it unreadable; remove or move it first if you really mean to replace it")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        proc = subprocess.run([_tool("age-keygen"), "-o", str(key_file)], capture_output=True, text=True,
                              timeout=30, check=False)
    finally:
        os.umask(old_umask)
    if proc.returncode != 0:
        key_file.unlink(missing_ok=True)
        raise EncryptionError(f"age-keygen failed: {proc.stderr.strip()}")
    key_file.chmod(0o600)
    return recipients(key_file)[0]


def encrypt_command(key_file: Path) -> list[str]:
    """`age --encrypt` to the key's recipients, reading stdin and writing stdout.

    Public keys only on the command line: nothing secret shows in `ps`.
    """
    argv = [_tool("age"), "--encrypt"]
    for recipient in recipients(key_file):
        argv += ["--recipient", recipient]
    return argv


def decrypt_file(source: Path, target: Path, key_file: Path) -> None:
    """Decrypt `source` into a new file `target` (mode 600) with the secret key in `key_file`.

    A wrong key, or an archive cut short or altered, raises EncryptionError and leaves
    no `target`.
    """
    if not any(line.startswith(SECRET_PREFIX) for line in _key_lines(key_file)):
        raise EncryptionError(f"{key_file} holds only a public key, which encrypts but cannot decrypt: "
                              "give the secret key with KEY=/path/to/backup-key.txt")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.run([_tool("age"), "--decrypt", "--identity", str(key_file), str(source)],
                                  stdout=out, stderr=subprocess.PIPE, text=False, timeout=24 * 3600, check=False)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        message = proc.stderr.decode(errors="replace").strip()
        if "no identity matched" in message:
            raise EncryptionError(f"the key {key_file} does not open {source.name} (it was encrypted for "
                                  "another key): give the right one with KEY=...")
        raise EncryptionError(f"{source.name} cannot be decrypted (damaged or truncated?): {message}")
