"""The worker rides out Orthanc and PostgreSQL restarts and a cleared change log."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from testkit.harness.faults import sigkill_orthanc
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, all_jobs_final, jobs, rules_file, send
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration


def health_status(worker) -> dict:
    try:
        return httpx.get(worker.health_url, timeout=5).json()
    except httpx.HTTPError:
        return {}


def orthanc_answers(orthanc) -> bool:
    try:
        return orthanc.rest.http.get("/system", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_recovers_after_orthanc_restart(env, workers, db, pacs, orthanc, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    worker = workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    orthanc.stop()
    try:
        wait_until(lambda: health_status(worker).get("orthanc") is False, timeout=30, what="Orthanc reported down")
        assert health_status(worker)["status"] == "degraded"
    finally:
        orthanc.start()
    send(make_study(1, 2, "CR AFTER ORTHANC RESTART"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=60, what="delivery after restart")
    assert health_status(worker)["status"] == "ok"


def test_recovers_after_postgres_restart(env, workers, db, pacs, pg_server, clean_orthanc, hub_settings, tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    worker = workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    db.dispose()
    pg_server.stop()
    try:
        wait_until(lambda: health_status(worker).get("database") is False, timeout=30, what="database down")
    finally:
        pg_server.start()
    wait_until(lambda: health_status(worker).get("status") == "ok", timeout=60, what="worker healthy again")
    # Orthanc's index is in the same PostgreSQL: it refuses C-STOREs during the outage
    # (so the modality keeps the study) and accepts again once the database is back.
    wait_until(lambda: orthanc_answers(clean_orthanc), timeout=60, what="Orthanc answering again")
    send(make_study(1, 2, "CR AFTER DB OUTAGE"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=90,
               what="delivery after the database came back")
    assert [j["state"] for j in jobs(db)] == ["succeeded"]


def test_keeps_working_after_the_change_log_is_cleared(env, workers, db, pacs, clean_orthanc, hub_settings,
                                                       tmp_path):
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    send(make_study(1, 1, "CR BEFORE CLEAR"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 1), timeout=40, what="first delivery")
    clean_orthanc.rest.delete("/changes")
    send(make_study(1, 1, "CR AFTER CLEAR"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 2) and pacs.instance_count == 2, timeout=40, what="second delivery")
    assert pacs.total_receipts == 2


def test_study_orthanc_never_announced_stable_is_still_routed(env, workers, db, pacs, orthanc, clean_orthanc,
                                                              hub_settings, tmp_path):
    """Orthanc keeps stability timers in memory: SIGKILLed before a study's StableStudy,
    it never announces that study after the restart. The worker's sweep routes it anyway."""
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    send(make_study(1, 2, "CR KILLED BEFORE STABLE"), hub_settings)  # STABLE_AGE is 1 s
    sigkill_orthanc(orthanc)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=90,
               what="delivery of the study Orthanc forgot to announce")
    changes = orthanc.rest.get("/changes", since=0, limit=1000)["Changes"]
    assert "StableStudy" not in {c["ChangeType"] for c in changes}, "Orthanc announced it after all"
    assert [j["state"] for j in jobs(db)] == ["succeeded"]



@dataclass
class SilentPeer:
    """A loopback port that accepts connections and never answers: a store to it stays
    running until Orthanc's DICOM timeout. `accepted` holds the connections so far."""

    port: int
    accepted: list[socket.socket]


@pytest.fixture
def silent_peer() -> Iterator[SilentPeer]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    peer = SilentPeer(server.getsockname()[1], [])
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                peer.accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        done.set()
        thread.join(5)
        for conn in peer.accepted:
            conn.close()
        server.close()


def test_store_under_way_when_orthanc_crashes_is_sent_again_by_the_worker_alone(
        env, workers, db, pacs, orthanc, clean_orthanc, hub_settings, tmp_path, silent_peer):
    """After a crash Orthanc must not replay a store job by itself (SaveJobs off): the
    store may have finished just before the crash, and a replay nobody records is a
    duplicate at the PACS. The worker, which records every send, resends instead."""
    clean_orthanc.rest.put_modality("PACS", pacs.aet, silent_peer.port)
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    send(make_study(1, 2, "CR STORE CUT BY A CRASH"), hub_settings)
    wait_until(lambda: silent_peer.accepted and [j["orthanc_job_id"] for j in jobs(db)] != [None],
               timeout=40, what="the store under way to the silent peer")
    lost_job = jobs(db)[0]["orthanc_job_id"]
    time.sleep(1)  # Orthanc saves its job registry every 100 ms when saving is on
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)  # the PACS answers from now on
    sigkill_orthanc(orthanc)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=90,
               what="delivery by the worker's resend")
    time.sleep(2)  # a replay of the old job would reach the silent peer again by now
    assert len(silent_peer.accepted) == 1, "Orthanc replayed the store it was running when it crashed"
    assert pacs.total_receipts == 2
    with pytest.raises(httpx.HTTPStatusError):
        orthanc.rest.get(f"/jobs/{lost_job}")
    [job] = jobs(db)
    assert job["state"] == "succeeded" and job["orthanc_job_id"] != lost_job
    with db.connect() as conn:
        errors = conn.execute(text("SELECT detail->>'error' FROM events WHERE type = 'delivery_failed'")).scalars().all()
    assert errors == [f"Orthanc no longer knows job {lost_job}"]
