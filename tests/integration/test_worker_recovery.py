"""The worker rides out Orthanc and PostgreSQL restarts and a cleared change log."""

from __future__ import annotations

import httpx
import pytest

from hub.synthetic import make_study
from tests.harness.faults import sigkill_orthanc
from tests.harness.waiting import wait_until
from tests.harness.worker_proc import ALL_TO_PACS, all_jobs_final, jobs, rules_file, send

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
