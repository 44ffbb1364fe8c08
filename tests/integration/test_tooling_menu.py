"""`make menu` driven through a pseudo-terminal (pexpect) against a real QI database."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime

import pexpect
import pytest
from sqlalchemy import create_engine

from core.recorder import StudyInfo, upsert_study
from testkit.harness.stack import QiDatabase
from tests.integration.test_tooling_wizard import make_argv

pytestmark = pytest.mark.integration


def test_menu_runs_entries_and_comes_back(qi_db: QiDatabase) -> None:
    engine = create_engine(qi_db.url)
    with engine.begin() as conn:
        upsert_study(conn, StudyInfo(study_uid="1.2.826.0.1.3680043.99.1", accession_number="ACCMENU1",
                                     description="MENU TEST STUDY"),
                     source_aet="MOD1", received_at=datetime.now(UTC))
    engine.dispose()
    env = {**os.environ, "HUB_ENV_FILE": str(qi_db.env_file), "TERM": "dumb", "COLUMNS": "200"}
    argv = make_argv("menu")
    log = io.StringIO()
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", timeout=60, dimensions=(60, 200))
    child.logfile_read = log
    try:
        child.expect_exact("Orthanc routing hub")
        child.expect_exact("Uninstall everything")
        child.expect_exact("Choose: ")
        child.sendline("42")
        child.expect_exact("no entry '42'")
        child.expect_exact("Choose: ")
        child.sendline("9")  # ./orthanc studies, against the real database
        child.expect_exact("ACCMENU1")
        child.expect_exact("[done]")
        child.expect_exact("Press Enter to return to the menu")
        child.sendline("")
        child.expect_exact("Choose: ")
        child.sendline("15")  # restore asks for a file; empty goes back without running anything
        child.expect_exact("Backup file to restore (empty to go back): ")
        child.sendline("")
        child.expect_exact("Choose: ")
        child.sendline("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, log.getvalue()
    after_prompt = log.getvalue().split("Backup file to restore (empty to go back): ")[1]
    assert "$ make" not in after_prompt, "an empty answer must not run the restore"
