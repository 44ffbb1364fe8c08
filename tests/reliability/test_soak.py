"""Soak: hundreds of studies from four concurrent senders while both PACS flap.

Afterwards every study must be at every peer its rules name, each instance exactly
once (counted at the SCPs), with one succeeded job per routing and a complete
timeline. The PACS go down by closing their port between associations ("stop"
flaps), so no store is ever cut in the middle and no duplicate is acceptable.

`test_refusals_mid_association` measures the window that remains: a PACS that
starts refusing inside an association fails the store part-way, and the retry sends
the whole batch again (C-STORE has no way to ask what the peer already holds). It
asserts that every duplicate comes from such a retried job, and prints the figures.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest
from sqlalchemy import text

from testkit.dicom_peers import AINode
from testkit.harness.flapping import Flapper
from testkit.harness.load import send_concurrently
from testkit.harness.waiting import WaitTimeout, wait_until
from testkit.harness.worker_proc import all_jobs_final, jobs
from testkit.synthetic import study_uids
from tests.reliability.checks import AI_SHARE, make_studies, verify_run

pytestmark = pytest.mark.integration

SOAK_STUDIES = int(os.environ.get("SOAK_STUDIES", "500"))
SENDERS = 4


SETTLE_S = 2.0  # longer than the worker's POLL_INTERVAL plus recording a new series


def wait_final(db, ai: AINode, expected_jobs: int, seed: int, timeout: float = 180) -> None:
    """Wait until the run has settled: the AI node idle, every series routed and every job
    final, twice SETTLE_S apart (a study the AI received twice gets a second round of
    results, and so more jobs, later). On a timeout, say which jobs are not final and why."""

    def settled() -> bool:
        if not ai.idle or not all_jobs_final(db, expected_jobs):
            return False
        with db.connect() as conn:
            return not conn.execute(text("SELECT count(*) FROM series WHERE routed_at IS NULL")).scalar_one()

    def settled_twice() -> bool:
        if not settled():
            return False
        time.sleep(SETTLE_S)
        return settled()

    try:
        wait_until(settled_twice, timeout=timeout, interval=0.5, what="every job final")
    except WaitTimeout:
        rows = jobs(db)
        states = Counter((r["destination"], r["state"]) for r in rows)
        stuck = [(r["id"], r["state"], r["attempts"], r["last_error"]) for r in rows if r["state"] != "succeeded"]
        with db.connect() as conn:
            unrouted = conn.execute(text(
                "SELECT kind, stable_at IS NOT NULL AS stable, count(*) FROM series WHERE routed_at IS NULL "
                "GROUP BY 1, 2")).all()
        raise AssertionError(f"seed {seed}: {len(rows)}/{expected_jobs} jobs, {dict(states)}; "
                             f"first unfinished: {stuck[:5]}; unrouted series (kind, stable, n): "
                             f"{[tuple(r) for r in unrouted]}") from None


def run_soak(topology, workers, db, orthanc, hub_settings, seed: int, *, count: int, mode: str,
             duplicates_allowed: bool) -> str:
    rng = random.Random(seed)
    studies = make_studies(count, rng)
    originals = {str(ds.SOPInstanceUID) for study in studies for ds in study}
    ai_studies = {str(study[0].StudyInstanceUID) for i, study in enumerate(studies) if i % AI_SHARE == 0}
    workers(topology.values)
    flapper = Flapper(topology.pacs, seed, mode=mode).start()
    began = time.monotonic()
    try:
        report = send_concurrently(studies, SENDERS, "127.0.0.1", hub_settings.dicom_port, hub_settings.orthanc_aet)
        returned = topology.ai.wait_returned(len(ai_studies), timeout=max(120, 0.06 * count))
    finally:
        flapper.stop()
    assert returned, (f"seed {seed}: the AI node returned {len(topology.ai.returned_studies)} of "
                      f"{len(ai_studies)} studies; errors {topology.ai.errors[:3]}")
    assert report.accepted == study_uids(ds for study in studies for ds in study), \
        f"seed {seed}: Orthanc did not accept {len(report.given_up)} studies"
    expected_jobs = 2 * count + 2 * len(ai_studies)
    wait_final(db, topology.ai, expected_jobs, seed, timeout=max(180, 0.06 * count))
    figures = verify_run(db, orthanc.rest, topology, originals, report.accepted, ai_studies,
                         duplicates_allowed_after_retries=duplicates_allowed)
    summary = (f"seed {seed}, {mode} flaps: {flapper.downs} outages, {report.retries} sender retries, "
               f"{time.monotonic() - began:.0f} s; {figures.summary()}")
    print(summary)
    assert figures.failed_events > 0, f"no send ever failed, so the flaps tested nothing: {summary}"
    return summary


def test_soak_with_flapping_destinations(topology, workers, db, orthanc, hub_settings, seed):
    run_soak(topology, workers, db, orthanc, hub_settings, seed, count=SOAK_STUDIES, mode="stop",
             duplicates_allowed=False)


def test_refusals_mid_association(topology, workers, db, orthanc, hub_settings, seed):
    run_soak(topology, workers, db, orthanc, hub_settings, seed, count=100, mode="refuse",
             duplicates_allowed=True)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_long_soak_with_flapping_destinations(topology, workers, db, orthanc, hub_settings, seed):
    """`make test-long`: ten times the soak (about 10 minutes here), same guarantees."""
    run_soak(topology, workers, db, orthanc, hub_settings, seed, count=10 * SOAK_STUDIES, mode="stop",
             duplicates_allowed=False)
