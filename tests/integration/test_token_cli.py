"""`./orthanc token list | create | revoke`: the workflow API's bearer tokens from the command line.

Run as the real executable against a real, migrated QI database (only PostgreSQL is
needed), with the exit codes of ops.tooling.exitcodes. The tokens are core.auth's, the
same functions the app's API tokens page calls.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from sqlalchemy import create_engine, text

from core import auth
from core.settings import PROJECT_ROOT
from testkit.harness.stack import QiDatabase

pytestmark = pytest.mark.integration


def token_cli(qi_db: QiDatabase, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(qi_db.env_file), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("STACK_MODE", None)
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), "token", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def test_create_list_and_revoke_a_token(qi_db: QiDatabase) -> None:
    created = token_cli(qi_db, "create", "--name", "ris-integration", "--role", "operator")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    # The secret is the whole of stdout, once; the message on stderr does not repeat it.
    assert created.stdout == secret + "\n" and secret.startswith(auth.TOKEN_PREFIX)
    assert secret not in created.stderr and "ris-integration" in created.stderr

    engine = create_engine(qi_db.url)
    try:
        with engine.begin() as conn:
            check = auth.verify_token(conn, secret)
            assert check.ok and check.token is not None and check.token.role == "operator"
            stored = conn.execute(text("SELECT token_hash FROM api_tokens")).scalar_one()
            assert stored == hashlib.sha256(secret.encode()).hexdigest()

        listed = token_cli(qi_db, "list")
        assert listed.returncode == 0, listed.stderr
        assert "ris-integration" in listed.stdout and "operator" in listed.stdout and "active" in listed.stdout
        assert secret not in listed.stdout + listed.stderr

        assert token_cli(qi_db, "create", "--name", "ris-integration", "--role", "viewer").returncode == 1
        assert token_cli(qi_db, "create", "--name", "bad name!", "--role", "viewer").returncode == 2
        assert token_cli(qi_db, "create", "--name", "x", "--role", "root").returncode == 2

        revoked = token_cli(qi_db, "revoke", "ris-integration")
        assert revoked.returncode == 0, revoked.stderr
        assert token_cli(qi_db, "revoke", "ris-integration").returncode == 1
        assert token_cli(qi_db, "revoke", "no-such-token").returncode == 5
        assert "revoked" in token_cli(qi_db, "list").stdout
        with engine.begin() as conn:
            assert auth.verify_token(conn, secret).problem == "this token is revoked"
            entries = conn.execute(text("SELECT action, source, target, before::text, after::text FROM audit_log "
                                        "ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [(a, s, t) for a, s, t, _, _ in entries] == [
        ("token.create", "cli", "token:ris-integration"), ("token.revoke", "cli", "token:ris-integration")]
    assert secret not in str(entries)
