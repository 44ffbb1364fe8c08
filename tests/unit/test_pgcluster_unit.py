"""Pure parts of ops.pgcluster: SCRAM verifiers and the foreground command line."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from ops import pgcluster


def test_scram_verifier_matches_rfc_5802() -> None:
    verifier = pgcluster.scram_verifier("correct horse")
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt_b64 = params.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert method == "SCRAM-SHA-256" and iterations == "4096"
    salted = hashlib.pbkdf2_hmac("sha256", b"correct horse", base64.b64decode(salt_b64), 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", "sha256").digest()
    assert pgcluster.scram_verifier("correct horse") != verifier  # fresh salt each time


def test_postgres_argv(tmp_path: Path) -> None:
    argv = pgcluster.postgres_argv(tmp_path / "data", 5555, "127.0.0.1")
    assert argv[0].endswith("/postgres")
    assert argv[1:5] == ["-D", str((tmp_path / "data").resolve()), "-p", "5555"]
    assert "listen_addresses=127.0.0.1" in argv
    long_dir = tmp_path / ("x" * 100)
    assert "unix_socket_directories=" in pgcluster.postgres_argv(long_dir, 5555)
