"""Exactly once at every step of the send protocol, on a loaded machine.

A worker armed with a failpoint (core/failpoints.py) SIGKILLs itself at one exact step;
a fresh worker then takes over, beside a CPU hog on every core. Every study goes to the
AI node (MERCURE) and both PACS, and the AI's results to PACS1, so the store steps are
armed on the AI node, where a repeat would mean the AI processing a study twice and two
result series reaching a clinical PACS.

Each run must end with every instance at every peer exactly once (counted at the peer
by SOPInstanceUID), a complete and ordered timeline for every study, and no negative
duration in the QI views.
"""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import text

from core.failpoints import Failpoint
from testkit.harness.faults import CpuHog
from testkit.harness.worker_proc import send
from testkit.synthetic import make_study
from tests.reliability.checks import ai_rounds, negative_durations, verify_run
from tests.reliability.conftest import LEG_LENGTH
from tests.reliability.test_soak import wait_final

pytestmark = pytest.mark.integration

STUDIES = 6
CASES = [
    (Failpoint.AFTER_CLAIM, "MERCURE"),
    (Failpoint.AFTER_STORE_ACCEPTED, "MERCURE"),
    (Failpoint.AFTER_STORE_SUCCESS, "MERCURE"),
    (Failpoint.TAILER_MID_BATCH, None),
]


def adopted_stores(db) -> int:
    with db.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM events WHERE type = 'delivery_started' AND detail ? 'adopted'")).scalar_one()


@pytest.mark.parametrize(("point", "scope"), CASES, ids=[p.value for p, _ in CASES])
def test_a_kill_at_each_step_repeats_and_loses_nothing(point, scope, topology, workers, db, orthanc, hub_settings):
    studies = [make_study(1, 2, LEG_LENGTH) for _ in range(STUDIES)]
    originals = {str(ds.SOPInstanceUID) for study in studies for ds in study}
    uids = {str(study[0].StudyInstanceUID) for study in studies}
    armed = f"{point.value}@{scope}" if scope else point.value
    with CpuHog():
        doomed = workers(topology.values, "armed", {"HUB_FAILPOINT": armed})
        for study in studies:
            send(study, hub_settings)
        assert doomed.wait_exit(timeout=90) == -signal.SIGKILL, "the failpoint was never reached"
        workers(topology.values, "successor")
        assert topology.ai.wait_returned(STUDIES, timeout=120), "the AI node did not answer every study"
        wait_final(db, topology.ai, 4 * STUDIES, seed=0, timeout=180)
    figures = verify_run(db, orthanc.rest, topology, originals, uids, uids, duplicates_allowed_after_retries=False)
    assert all(not p.duplicates for p in figures.peers)
    assert topology.ai.returned_studies and len(topology.ai.returned_studies) == STUDIES, \
        f"the AI node processed a study twice: {ai_rounds(topology)}"
    assert negative_durations(db) == []
    if point is Failpoint.AFTER_STORE_ACCEPTED:
        # The store Orthanc had accepted was found in its job list and followed, not resent.
        assert adopted_stores(db) >= 1
