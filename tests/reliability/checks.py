"""What a reliability run must end with, checked against the peers, Orthanc and the database.

`expected_receipts` derives from Orthanc's contents (the ground truth of what was
accepted) where each instance must arrive; `verify_run` compares that with what
each SCP counted and checks the database: every job final and succeeded once,
every (series, destination) routed once, every study's timeline complete and in
order. It returns the figures a report needs and raises with all problems at once.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from sqlalchemy import Engine, text

from testkit.harness.load import OrthancContents, PeerCheck, check_peer
from testkit.harness.stack import OrthancRest
from testkit.synthetic import make_study
from tests.reliability.conftest import LEG_LENGTH, Topology

AI_SHARE = 10  # one study in AI_SHARE goes to the AI node


def make_studies(count: int, rng: random.Random) -> list[list[Dataset]]:
    """`count` small studies (one series of 1-2 instances); every AI_SHARE-th is a leg length."""
    return [
        make_study(1, rng.choice((1, 2)), LEG_LENGTH if i % AI_SHARE == 0 else f"CR SOAK {i}")
        for i in range(count)
    ]


def expected_receipts(contents: OrthancContents, originals: set[str], ai_studies: set[str]) -> dict[str, set[str]]:
    """SOPInstanceUIDs each peer must hold: originals to both PACS (and leg lengths to the
    AI), the AI's results (every other instance in Orthanc) to PACS1."""
    held = set(contents.study_of)
    original = held & originals
    return {
        "PACS1": held,
        "PACS2": original,
        "MERCURE": {sop for sop in original if contents.study_of[sop] in ai_studies},
    }


@dataclass
class RunFigures:
    studies: int
    instances: int
    peers: list[PeerCheck]
    jobs: int
    attempts_over_one: int
    failed_events: int

    def summary(self) -> str:
        peers = ", ".join(f"{p.aet}: {p.expected} expected, {len(p.missing)} missing, "
                          f"{len(p.unexpected)} unexpected, {p.extra_receipts} duplicate receipts"
                          for p in self.peers)
        return (f"{self.studies} studies, {self.instances} instances in Orthanc; {self.jobs} jobs, "
                f"{self.attempts_over_one} retried, {self.failed_events} failed attempts; {peers}")


def _timeline_problems(engine: Engine, ai_resent: set[str]) -> list[str]:
    """Every study: received <= stable <= queued <= started <= delivered, per job; AI studies
    also ai_sent <= ai_result_received <= ai_result_stable <= the results' delivery.

    In `ai_resent` studies (their AI send was retried or under way at a crash) the AI may
    have answered an attempt whose outcome was lost, so its results can precede ai_sent."""
    problems: list[str] = []
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT s.study_uid, e.type, e.job_id, e.at FROM events e JOIN studies s ON s.id = e.study_id "
            "ORDER BY e.at, e.id")).all()
        job_rows = conn.execute(text("SELECT id, purpose FROM routing_jobs")).all()
    purpose = dict(job_rows)
    first: dict[str, dict[str, datetime]] = defaultdict(dict)
    per_job: dict[int, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    study_of_job: dict[int, str] = {}
    last_delivered: dict[str, datetime] = {}
    for uid, type_, job_id, at in rows:
        if type_ == "delivered":
            last_delivered[uid] = at.replace(microsecond=0)
        first[uid].setdefault(type_, at.replace(microsecond=0))  # Orthanc's times are whole seconds
        if job_id is not None:
            per_job[job_id][type_].append(at.replace(microsecond=0))
            study_of_job[job_id] = uid
    for uid, at in first.items():
        missing = [t for t in ("received", "stable", "rule_matched", "delivery_queued", "delivered") if t not in at]
        if missing:
            problems.append(f"{uid}: no {missing} in its timeline")
            continue
        if not at["received"] <= at["stable"] <= at["delivery_queued"]:
            problems.append(f"{uid}: received/stable/queued out of order {at}")
        if "ai_sent" in at:
            stages = [at.get(t) for t in ("ai_sent", "ai_result_received", "ai_result_stable")]
            if None in stages or not (uid in ai_resent or stages[0] <= stages[1]) \
                    or not stages[1] <= stages[2] <= last_delivered[uid]:
                problems.append(f"{uid}: AI stages missing or out of order {stages}")
    for job_id, kinds in per_job.items():
        done = "ai_sent" if purpose.get(job_id) == "ai" else "delivered"
        queued, started, ok = kinds.get("delivery_queued", []), kinds.get("delivery_started", []), kinds.get(done, [])
        if len(queued) != 1 or len(ok) != 1 or not started:
            problems.append(f"job {job_id} ({study_of_job[job_id]}): {len(queued)} queued, {len(started)} started, "
                            f"{len(ok)} {done} events")
        elif not queued[0] <= min(started) <= ok[0] + timedelta(seconds=1):
            problems.append(f"job {job_id}: queued {queued[0]}, started {min(started)}, {done} {ok[0]} out of order")
    return problems


def verify_run(engine: Engine, rest: OrthancRest, topo: Topology, originals: set[str], accepted: set[str],
               ai_studies: set[str], *, duplicates_allowed_after_retries: bool,
               faults_at: Sequence[datetime] = ()) -> RunFigures:
    """Check a finished run; raise AssertionError listing every problem, else return its figures.

    Without `duplicates_allowed_after_retries` no peer may hold any instance twice. With
    it, a duplicate is tolerated only in a study whose job to that peer was retried, or
    was under way when a crash struck (`faults_at`): the documented window, where a store
    that failed or was lost part-way, or whose Orthanc job id a killed worker never
    recorded, is sent again whole. For the same reason, in such a study the AI's results
    may arrive before the resend that records `ai_sent`.
    """
    contents = OrthancContents.read(rest)
    expected = expected_receipts(contents, originals, ai_studies)
    peers = [check_peer(scp, expected[scp.aet]) for scp in (*topo.pacs, topo.ai)]
    problems: list[str] = []
    lost = accepted - contents.studies
    if lost:
        problems.append(f"{len(lost)} accepted studies missing from Orthanc")
    with engine.connect() as conn:
        db_studies = set(conn.execute(text("SELECT study_uid FROM studies")).scalars())
        jobs = conn.execute(text("SELECT id, state, attempts FROM routing_jobs")).all()
        twice = conn.execute(text(
            "SELECT count(*) FROM (SELECT 1 FROM job_series GROUP BY series_id, destination "
            "HAVING count(*) > 1) d")).scalar_one()
        unrouted = conn.execute(text("SELECT count(*) FROM series WHERE routed_at IS NULL")).scalar_one()
        not_delivered = conn.execute(text(
            "SELECT count(*) FROM studies WHERE status <> 'delivered'")).scalar_one()
        failed_events = conn.execute(text(
            "SELECT count(*) FROM events WHERE type = 'delivery_failed'")).scalar_one()
        resent = conn.execute(text(
            "SELECT s.study_uid, j.destination, j.purpose FROM routing_jobs j JOIN studies s ON s.id = j.study_id "
            "WHERE j.attempts > 1 OR EXISTS (SELECT 1 FROM unnest(CAST(:faults AS timestamptz[])) f(t) "
            "WHERE j.created_at <= f.t AND j.finished_at >= f.t)"), {"faults": list(faults_at)}).all()
    retried = {f"{uid}/{destination}" for uid, destination, _ in resent}
    ai_resent = {uid for uid, _, purpose in resent if purpose == "ai"} if duplicates_allowed_after_retries else set()
    if db_studies != contents.studies:
        problems.append(f"database studies {len(db_studies)} != Orthanc studies {len(contents.studies)}")
    if unrouted:
        problems.append(f"{unrouted} series never routed")
    if not_delivered:
        problems.append(f"{not_delivered} studies not in status delivered")
    if twice:
        problems.append(f"{twice} (series, destination) pairs routed twice")
    bad_jobs = [(j.id, j.state) for j in jobs if j.state != "succeeded"]
    if bad_jobs:
        problems.append(f"jobs not succeeded: {bad_jobs[:20]}")
    for peer in peers:
        if peer.missing or peer.unexpected:
            problems.append(f"{peer.aet}: {len(peer.missing)} missing, {len(peer.unexpected)} unexpected")
        for sop in peer.duplicates:
            explained = f"{contents.study_of.get(sop)}/{peer.aet}" in retried
            if not duplicates_allowed_after_retries or not explained:
                problems.append(f"{peer.aet}: {sop} received {peer.duplicates[sop]} times"
                                f"{'' if explained else ' with no retry or crash to explain it'}")
    problems += _timeline_problems(engine, ai_resent)
    figures = RunFigures(len(contents.studies), len(contents.study_of), peers, len(jobs),
                         sum(1 for j in jobs if j.attempts > 1), failed_events)
    if problems:
        raise AssertionError(f"{figures.summary()}\n" + "\n".join(problems[:60]))
    return figures


def ai_rounds(topo: Topology) -> str:
    """The AI node's rounds of the studies it processed more than once, for a failure message.

    Round sizes tell a repeat (a round re-sending instances, also a duplicate receipt)
    from a split (one store's instances arriving more than the node's quiet time apart)."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for uid, received in topo.ai.rounds:
        sizes[uid].append(received)
    twice = {uid: n for uid, n in sizes.items() if len(n) > 1}
    return f"{len(topo.ai.returned_studies)} rounds returned; instances per round of studies seen twice: {twice}"


DURATION_COLUMNS = ("wait_stable_s", "to_ai_s", "ai_round_trip_s", "result_settle_s", "to_destinations_s",
                    "turnaround_s")


def negative_durations(engine: Engine) -> list[tuple[str, str, float]]:
    """(study, column, value) of every negative stage duration in the QI view `qi_study`."""
    found: list[tuple[str, str, float]] = []
    with engine.connect() as conn:
        for column in DURATION_COLUMNS:
            rows = conn.execute(text(
                f"SELECT study_instance_uid, {column} FROM qi_study WHERE {column} < 0")).all()  # noqa: S608 (names)
            found += [(uid, column, value) for uid, value in rows]
    return found
