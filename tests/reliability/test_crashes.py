"""Crashes during a flapping run: the worker and Orthanc are SIGKILLed, PostgreSQL is
fast-restarted, each in turn at a random point (seeded, see conftest.py).

After recovery nothing accepted is lost, every job is final and succeeded exactly
once, every peer holds every instance its rules name, and every timeline is
complete. A duplicate at a peer is allowed only inside the documented window: a store
under way when Orthanc crashed (Orthanc forgets it; the worker sends it again); the
test prints how many there were. The worker's kill may repeat nothing.

Orthanc's index lives in the same PostgreSQL, so the session's servers are the ones
that crash; they are left running and healthy afterwards for the tests that follow.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from testkit.harness.faults import FaultInjector, orthanc_answers, restart_postgres, sigkill_orthanc
from testkit.harness.flapping import Flapper
from testkit.harness.load import send_concurrently
from testkit.harness.waiting import wait_until
from testkit.synthetic import study_uids
from tests.reliability.checks import AI_SHARE, make_studies, verify_run
from tests.reliability.test_soak import SENDERS, wait_final

pytestmark = pytest.mark.integration

CRASH_STUDIES = 300


def test_crashes_lose_and_repeat_nothing(topology, workers, db, orthanc, pg_server, hub_settings, seed):
    rng = random.Random(seed)
    studies = make_studies(CRASH_STUDIES, rng)
    originals = {str(ds.SOPInstanceUID) for study in studies for ds in study}
    ai_studies = {str(study[0].StudyInstanceUID) for i, study in enumerate(studies) if i % AI_SHARE == 0}
    current = [workers(topology.values, "w0")]

    def kill_worker() -> str:
        current[0].kill()
        current.append(workers(topology.values, f"w{len(current)}"))
        return "restarted"

    def kill_orthanc() -> str:
        sigkill_orthanc(orthanc)
        return "restarted"

    def restart_db() -> str:
        return "Orthanc died with it" if restart_postgres(pg_server, orthanc) else "Orthanc rode it out"

    faults = [("worker SIGKILL", kill_worker), ("Orthanc SIGKILL", kill_orthanc),
              ("PostgreSQL fast restart", restart_db)]
    injector = FaultInjector(faults, random.Random(rng.random()), gap_s=(1.0, 4.0))
    flapper = Flapper(topology.pacs, seed, mode="stop")
    sending = ThreadPoolExecutor(1, thread_name_prefix="senders")
    began = time.monotonic()
    try:
        flapper.start()
        load = sending.submit(send_concurrently, studies, SENDERS, "127.0.0.1", hub_settings.dicom_port,
                              hub_settings.orthanc_aet)
        injector.run()  # on this thread: see FaultInjector
        report = load.result(timeout=300)
        flapper.stop()
        db.dispose()  # its pooled connections died with PostgreSQL
        returned = topology.ai.wait_returned(len(ai_studies), timeout=120)
        assert returned, f"seed {seed}: the AI node returned only {len(topology.ai.returned_studies)} studies"
        wait_final(db, topology.ai, 2 * CRASH_STUDIES + 2 * len(ai_studies), seed, timeout=240)
    finally:
        flapper.stop()
        sending.shutdown(wait=True)
        if pg_server.proc is None or pg_server.proc.poll() is not None:
            pg_server.stop()
            pg_server.start()
        if orthanc.proc is None or orthanc.proc.poll() is not None:
            orthanc.stop()
            orthanc.start()
        wait_until(lambda: orthanc_answers(orthanc), timeout=60, what="Orthanc healthy after the crash test")
    assert report.accepted == study_uids(ds for study in studies for ds in study), \
        f"seed {seed}: {len(report.given_up)} studies never accepted"
    # Only an Orthanc crash (or a database restart that takes Orthanc with it) may repeat a
    # store: the worker's own kill must not (the send protocol adopts what Orthanc has).
    orthanc_faults = [at for at, (_, name, _) in zip(injector.struck_at, injector.done, strict=True)
                      if name != "worker SIGKILL"]
    figures = verify_run(db, orthanc.rest, topology, originals, report.accepted, ai_studies,
                         duplicates_allowed_after_retries=True, faults_at=orthanc_faults)
    print(f"seed {seed}: faults {injector.done}; {report.retries} sender retries, "
          f"{time.monotonic() - began:.0f} s; {figures.summary()}")
    assert [name for _, name, _ in injector.done] == [name for name, _ in faults]
