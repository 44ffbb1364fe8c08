"""Chaos: studies through an AI node with per-study inference times, PACS outages and
worker SIGKILLs at random instants, all at once (seeded: RELIABILITY_SEED replays).

Every peer must hold every instance its rules name exactly once (counted at the peer by
SOPInstanceUID), no job may die although each has a budget of two counted attempts
(outages are holds, not attempts), every timeline must be complete, and each study's
`ai_round_trip_s` in the QI report must agree with the AI node's own clock: from the
study's first instance received to its results going out, within 1 s (Orthanc's stage
times are whole seconds) plus the time the transfers took (the study to the node, and
the results back to Orthanc).

`make test` runs 50 studies and 5 kills; `make test-long` runs 500 studies and 30 kills.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from testkit.harness.faults import FaultInjector
from testkit.harness.flapping import Flapper
from testkit.harness.load import send_concurrently
from testkit.synthetic import make_study
from tests.reliability.checks import ai_rounds, negative_durations, verify_run
from tests.reliability.conftest import LEG_LENGTH
from tests.reliability.test_soak import SENDERS, wait_final

pytestmark = pytest.mark.integration


def run_chaos(topology, workers, db, orthanc, hub_settings, seed: int, studies_n: int, kills: int) -> None:
    rng = random.Random(seed)
    studies = [make_study(1, rng.choice((1, 2)), LEG_LENGTH) for _ in range(studies_n)]
    uids = {str(study[0].StudyInstanceUID) for study in studies}
    originals = {str(ds.SOPInstanceUID) for study in studies for ds in study}
    inference = {uid: rng.uniform(0.2, 3.0) for uid in sorted(uids)}
    topology.ai.delay_for = inference.__getitem__
    values = {**topology.values, "RETRY_MAX_ATTEMPTS": "2", "OUTAGE_PROBE_MAX": "2"}
    current = [workers(values, "w0")]

    def kill_worker() -> str:
        current[-1].kill()
        current.append(workers(values, f"w{len(current)}"))
        return "restarted"

    injector = FaultInjector([("worker SIGKILL", kill_worker)] * kills, random.Random(rng.random()),
                             gap_s=(0.5, 4.0))
    flapper = Flapper(topology.pacs, seed, mode="stop", up_s=(2.0, 6.0), down_s=(1.0, 5.0))
    sending = ThreadPoolExecutor(1, thread_name_prefix="senders")
    try:
        flapper.start()
        load = sending.submit(send_concurrently, studies, SENDERS, "127.0.0.1", hub_settings.dicom_port,
                              hub_settings.orthanc_aet)
        injector.run()  # on this thread: see FaultInjector
        load.result(timeout=600)
        flapper.stop()
        assert topology.ai.wait_returned(studies_n, timeout=300), \
            f"seed {seed}: the AI node returned only {len(topology.ai.returned_studies)} studies"
        wait_final(db, topology.ai, 4 * studies_n, seed, timeout=600)
    finally:
        flapper.stop()
        sending.shutdown(wait=True)
    print(f"seed {seed}: faults {injector.done}")
    figures = verify_run(db, orthanc.rest, topology, originals, uids, uids, duplicates_allowed_after_retries=False)
    print(figures.summary())
    assert len(topology.ai.returned_studies) == studies_n, f"seed {seed}: the AI node processed a study twice: {ai_rounds(topology)}"
    assert negative_durations(db) == []
    with db.connect() as conn:
        rows = dict(conn.execute(text(
            "SELECT study_instance_uid, ai_round_trip_s FROM qi_study WHERE study_instance_uid = ANY(:u)"),
            {"u": sorted(uids)}).all())
        outages = conn.execute(text("SELECT count(*) FROM destination_outages")).scalar_one()
    node = topology.ai
    off = {}
    for uid in uids:
        measured = node.results_sent_at[uid] - node.first_received_at[uid]
        transfer = (node.last_received_at[uid] - node.first_received_at[uid]) + node.results_transfer_s[uid]
        hub = rows.get(uid)
        if hub is None or abs(float(hub) - measured) > 1.0 + transfer:
            off[uid] = (hub, round(measured, 3), round(transfer, 3))
    assert not off, f"seed {seed}: AI round trips that disagree with the AI node's clock: {off}"
    print(f"seed {seed}: {outages} PACS outages held and released, {kills} worker kills, "
          f"{time.strftime('%H:%M:%S')}")


def test_chaos_exactly_once_and_true_round_trips(topology, workers, db, orthanc, hub_settings, seed):
    run_chaos(topology, workers, db, orthanc, hub_settings, seed, studies_n=50, kills=5)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_chaos_long(topology, workers, db, orthanc, hub_settings, seed):
    run_chaos(topology, workers, db, orthanc, hub_settings, seed, studies_n=500, kills=30)
