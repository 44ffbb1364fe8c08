"""A change committed after later ones (two Orthanc nodes writing one index) is not lost.

Orthanc's Changes.seq comes from a PostgreSQL sequence: with two writers, a change can
take seq N, commit after N+1 has, and be invisible when the tailer's cursor passes N.
In orthanc-postgresql 4.0 every Changes insert then updates one GlobalIntegers row
(trigger InsertedChange), which serialises the commits of writers that reached it, so
the window is the instant between nextval and that trigger: narrow, not closed. The
test opens it wide on the real index: a transaction takes seq N for a StableStudy
change with triggers off for its session (session_replication_role = replica, so it
holds no GlobalIntegers lock), another study's changes commit above it, and the
worker's cursor passes N. Study A's own earlier changes are removed, so only the
late change can bring it in (the stability sweep looks only at series the hub has
recorded). Without the tailer's gap re-reads (worker/tailer.py, fill_gaps) study A is
never recorded nor delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, rules_file, send, study_row
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration



def cursor(db) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT value FROM worker_state WHERE name = 'changes_cursor'")).scalar() or 0)


def delivered(db, uid: str) -> bool:
    row = study_row(db, uid)
    return row is not None and row["status"] == "delivered"


def test_change_committed_below_the_cursor_is_handled(env, workers, db, clean_orthanc, pacs, hub_settings,
                                                      pg_server, tmp_path):
    rest = clean_orthanc.rest
    rest.put_modality("PACS", pacs.aet, pacs.port)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)}

    # A cursor above 0 (the tailer waits for no gaps below a fresh cursor).
    first = workers(values, "first")
    warmup = make_study(1, 1, "WARMUP")
    send(warmup, hub_settings)
    wait_until(lambda: delivered(db, warmup[0].StudyInstanceUID), timeout=30, what="warm-up study delivered")
    first.stop()
    start = cursor(db)

    # Study A arrives while no worker runs; its changes are then removed, as if never seen.
    study_a = make_study(1, 2, "LATE CHANGE")
    uid_a = study_a[0].StudyInstanceUID
    send(study_a, hub_settings)
    a_id = rest.lookup(uid_a)
    stable = wait_until(lambda: [c["Seq"] for c in rest.get("/changes", since=start, limit=1000)["Changes"]
                                 if c["ChangeType"] == "StableStudy" and c["ID"] == a_id],
                        timeout=30, what="study A stable in Orthanc")
    with pg_server.connect(hub_settings.postgres_db) as index:
        stable_study, study_level = index.execute(
            "SELECT changetype, resourcetype FROM changes WHERE seq = %s", (stable[0],)).fetchone()
        index.execute("DELETE FROM changes WHERE seq > %s", (start,))

    # Another writer takes seq N for A's StableStudy and commits only later.
    late = pg_server.connect(hub_settings.postgres_db)
    try:
        late.autocommit = False
        late.execute("SET LOCAL session_replication_role = replica")
        seq = late.execute(
            "INSERT INTO changes (changetype, internalid, resourcetype, date) "
            "SELECT %s, internalid, %s, %s FROM resources WHERE publicid = %s RETURNING seq",
            (stable_study, study_level, datetime.now(UTC).strftime("%Y%m%dT%H%M%S"), a_id)).fetchone()[0]

        workers(values, "second")
        study_b = make_study(1, 1, "COMMITTED FIRST")
        send(study_b, hub_settings)
        wait_until(lambda: delivered(db, study_b[0].StudyInstanceUID), timeout=30, what="study B delivered")
        assert cursor(db) > seq, "the cursor must have passed the uncommitted change"
        assert study_row(db, uid_a) is None
        late.commit()
    finally:
        late.close()

    wait_until(lambda: delivered(db, uid_a), timeout=30, what="study A delivered through its late change")
    sops = {str(ds.SOPInstanceUID) for ds in study_a}
    assert sops <= set(pacs.receipts)
    assert not pacs.duplicates()
