"""A store Orthanc could not connect for is an outage, even when the peer is back for the echo.

The dispatcher asks a failed store's destination for a C-ECHO, and counts the attempt
against RETRY_MAX_ATTEMPTS when it answers. A PACS that was down when the store ran and
came back just before the echo (a restart, a flapping link: the chaos test's flapper)
answered, so each such failure spent an attempt and a few made the job `dead`, although
nothing was ever wrong with what was sent. Real Orthanc, PostgreSQL and storage SCP; the
only stand-in is when the PACS comes back: just before the dispatcher's echo.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.orthanc_client import EchoResult, OrthancClient
from testkit.dicom_peers import StorageSCP
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, jobs, rules_file, send
from testkit.synthetic import make_study
from worker.dispatcher import UNREACHABLE, Dispatcher
from worker.rules_watch import RulesHolder
from worker.tailer import Tailer

pytestmark = pytest.mark.integration


class BackForTheEcho(OrthancClient):
    """The real client; the PACS is started again just before the dispatcher's C-ECHO."""

    pacs: StorageSCP

    def echo(self, name: str, timeout: int = 5, *, raise_unreachable: bool = False) -> EchoResult:
        if not self.pacs.running:
            self.pacs.start()
        return super().echo(name, timeout, raise_unreachable=raise_unreachable)


@pytest.fixture
def down_pacs(tmp_path, clean_orthanc) -> Iterator[StorageSCP]:
    """A PACS Orthanc knows, not started: its port is closed."""
    scp = StorageSCP("PACS", free_port(), tmp_path / "pacs")
    clean_orthanc.rest.put_modality("PACS", scp.aet, scp.port)
    yield scp
    if scp.running:
        scp.stop()


def routed_study(qi_db, db, hub_settings, tmp_path, client: OrthancClient) -> None:
    """Send a study to Orthanc and let a real Tailer record and route it to PACS."""
    send(make_study(1, 2, "CR UNREACHABLE"), hub_settings)
    wait_until(lambda: any(c["ChangeType"] == "StableStudy" for c in client.changes(0, 1000)["Changes"]),
               timeout=30, what="study stable in Orthanc")
    rules = RulesHolder(Path(rules_file(tmp_path, ALL_TO_PACS)), db)
    rules.reload()
    tailer = Tailer(qi_db.settings, db, client, rules)
    while tailer.step():
        pass
    assert len(jobs(db)) == 1


def test_a_store_that_could_not_connect_holds_the_destination_without_spending_an_attempt(
        qi_db, db, hub_settings, tmp_path, down_pacs):
    client = BackForTheEcho.from_settings(qi_db.settings)
    assert isinstance(client, BackForTheEcho)
    client.pacs = down_pacs
    try:
        routed_study(qi_db, db, hub_settings, tmp_path, client)
        dispatcher = Dispatcher(qi_db.settings, db, client, worker_id="unreachable-test")
        batch = dispatcher.claim(1)
        dispatcher.run(batch)
    finally:
        client.close()
    assert down_pacs.running, "the PACS came back before the echo, as in a flap"
    job: dict[str, Any] = dict(jobs(db)[0])
    assert job["attempts"] == 0, job
    assert UNREACHABLE in job["last_error"] and "could not be connected to: outage hold" in job["last_error"]
    with db.connect() as conn:  # an outage hold, which the prober's first echo lifts (tests/reliability/test_outage.py)
        hold = conn.execute(text("SELECT kind, reason FROM destination_holds WHERE destination = 'PACS'")).one()
    assert tuple(hold) == ("outage", "could not be connected to")
