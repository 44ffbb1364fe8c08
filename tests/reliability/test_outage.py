"""A PACS outage while studies arrive: no job dies, nothing repeats, and delivery resumes
within one probe interval of the PACS coming back.

Each job has a budget of one counted attempt (RETRY_MAX_ATTEMPTS=1), so any attempt
spent on the outage would make a job dead. `make test` holds PACS2 down for 30 s;
`make test-long` for the issue's 10 minutes.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import all_jobs_final, send
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration

STUDIES = 50
PROBE_MAX_S = 5


def run_outage(topology, workers, db, hub_settings, outage_s: float) -> None:
    values = {**topology.values, "RETRY_MAX_ATTEMPTS": "1", "OUTAGE_PROBE_MAX": str(PROBE_MAX_S)}
    workers(values)
    studies = [make_study(1, 2, f"CR OUTAGE {i}") for i in range(STUDIES)]  # to PACS1 and PACS2, not the AI
    topology.pacs2.stop()
    down_at = time.monotonic()
    for i, study in enumerate(studies):
        send(study, hub_settings)
        time.sleep(min(0.2, outage_s / 2 / STUDIES) if i < STUDIES - 1 else 0)
    wait_until(lambda: topology.pacs1.instance_count == 2 * STUDIES, timeout=120, what="PACS1 delivered meanwhile")
    with db.connect() as conn:
        held = conn.execute(text("SELECT destination, kind FROM destination_holds")).all()
    assert [tuple(h) for h in held] == [("PACS2", "outage")]
    time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
    with db.connect() as conn:
        states = dict(conn.execute(text(
            "SELECT state, count(*) FROM routing_jobs WHERE destination = 'PACS2' GROUP BY state")).all())
        spent = conn.execute(text("SELECT max(attempts) FROM routing_jobs WHERE destination = 'PACS2'")).scalar()
    assert "dead" not in states and spent == 0, (states, spent)
    topology.pacs2.start()
    back = time.monotonic()
    wait_until(lambda: topology.pacs2.instance_count > 0, timeout=120, interval=0.05, what="PACS2 receiving again")
    first_in = time.monotonic() - back
    wait_until(lambda: topology.pacs2.instance_count == 2 * STUDIES, timeout=120, what="PACS2 delivered after")
    resumed_in = time.monotonic() - back
    wait_until(lambda: all_jobs_final(db, 2 * STUDIES), timeout=60, what="every job final")
    with db.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM routing_jobs GROUP BY state")).all())
        outage = conn.execute(text("SELECT count(*), bool_and(ended_at IS NOT NULL) FROM destination_outages")).one()
    assert states == {"succeeded": 2 * STUDIES}
    assert not topology.pacs1.duplicates() and not topology.pacs2.duplicates()
    assert tuple(outage) == (1, True)
    # sending resumes within one probe interval (plus the echo and the store), the backlog right after
    assert first_in < PROBE_MAX_S + 2, f"the first store came {first_in:.1f} s after the PACS came back"
    assert resumed_in < PROBE_MAX_S + 10, f"the backlog took {resumed_in:.1f} s after the PACS came back"
    print(f"outage {outage_s:.0f} s: PACS2 received again {first_in:.1f} s, everything {resumed_in:.1f} s "
          "after it came back")


def test_outage_while_studies_arrive(topology, workers, db, hub_settings):
    run_outage(topology, workers, db, hub_settings, outage_s=30)


@pytest.mark.long
@pytest.mark.timeout(1200)
def test_ten_minute_outage(topology, workers, db, hub_settings):
    run_outage(topology, workers, db, hub_settings, outage_s=600)
