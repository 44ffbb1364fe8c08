"""Retention against the real Orthanc and PostgreSQL: the policy, the guards, the records it leaves.

A worker routes five small studies for real (two routine, one a rule keeps 30 days, one
to a held destination, one waiting for its AI result); retention then runs in this
process with its clock moved forward (core/retention.run's `now`), since nothing is
deleted within an hour of its last arrival. The disk watermark on a full filesystem is
tests/reliability/test_retention_disk.py.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from core import qi, retention
from core.operations import OperationError, hold_destination, resend_study
from core.orthanc_client import OrthancClient
from core.settings import PROJECT_ROOT, Settings, settings_from_values
from core.states import AuditSource, EventType
from testkit.harness.stack import write_env
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import jobs, rules_file, send
from testkit.synthetic import make_study
from worker.main import SessionLock
from worker.retention import Retention

pytestmark = pytest.mark.integration


def lease(engine: Engine) -> SessionLock:
    """The worker's retention lease, on unpooled connections: releasing it really ends its session
    (a pooled connection would keep the advisory lock when returned to the pool)."""
    return SessionLock(create_engine(engine.url, poolclass=NullPool), retention.RETENTION_LOCK_KEY)

RULES = """
version: 1
rules:
  - name: routine
    when: {kind: original, all: [{tag: StudyDescription, contains: ROUTINE}]}
    then: {deliver_to: [PACS]}
  - name: keep-long
    keep_days: 30
    when: {kind: original, all: [{tag: StudyDescription, contains: KEEP}]}
    then: {deliver_to: [PACS]}
  - name: held
    when: {kind: original, all: [{tag: StudyDescription, contains: HELD}]}
    then: {deliver_to: [HELD]}
  - name: ai
    when: {kind: original, all: [{tag: StudyDescription, contains: LEG}]}
    then: {send_to_ai: true, deliver_to: [PACS]}
"""
NAMES = ("CR ROUTINE 1", "CR ROUTINE 2", "CR KEEP", "CR HELD", "CR LEG")


def ids_by_description(db: Engine) -> dict[str, int]:
    with db.connect() as conn:
        return {r.description: r.id for r in conn.execute(text("SELECT id, description FROM studies"))}


def orthanc_studies(orthanc) -> set[str]:
    return set(orthanc.rest.get("/studies"))


@pytest.fixture
def routed(env, workers, db, clean_orthanc, make_pacs, hub_settings, tmp_path) -> dict:
    """Five studies routed by a real worker: 5 jobs succeeded, the HELD one queued."""
    pacs, held, ai = make_pacs("PACS"), make_pacs("HELD"), make_pacs("MERCURE")  # the AI node never answers
    for name, scp in (("PACS", pacs), ("HELD", held), ("MERCURE", ai)):
        clean_orthanc.rest.put_modality(name, scp.aet, scp.port)
    with db.begin() as conn:
        hold_destination(conn, "HELD", actor="test", source=AuditSource.CLI)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, RULES)}
    workers(values)
    for name in NAMES:
        send(make_study(1, 1, name), hub_settings)

    def settled() -> bool:
        states = sorted(j["state"] for j in jobs(db))
        return states == ["queued"] + ["succeeded"] * 5

    wait_until(settled, timeout=60, what="five jobs succeeded and the held one queued")
    return {"values": values, "ids": ids_by_description(db)}


def settings_with(values: dict, **overrides: str) -> Settings:
    return settings_from_values({**values, **{k.upper(): v for k, v in overrides.items()}})


def test_only_fully_delivered_studies_go_with_their_reasons_and_records(routed, db, clean_orthanc, tmp_path):
    ids = routed["ids"]
    by_id = {v: k for k, v in ids.items()}
    settings = settings_with(routed["values"], retention_days_after_delivery="7")
    now = datetime.now(UTC)
    assert len(orthanc_studies(clean_orthanc)) == 5

    with OrthancClient.from_settings(settings) as orthanc:
        # 1. The hour guard: eight days "later" than delivery would be, but everything was touched
        # 30 min before the clock, so nothing goes, and each study says why it stays.
        plan = retention.dry_run(db, orthanc, settings, now=now + timedelta(minutes=30), free_bytes=10**12,
                                 total_bytes=10**12)
        assert plan.purge == []
        reasons = {by_id[d.study]: d.reason for d in plan.kept()}
        assert "is queued" in reasons["CR HELD"] and reasons["CR LEG"].startswith("AI result pending from MERCURE")
        for name in ("CR ROUTINE 1", "CR ROUTINE 2", "CR KEEP"):
            assert reasons[name].startswith("touched 30 min ago"), reasons

        # 2. Eight days on: the two routine studies are due, oldest first; the rule keeps its study
        # 30 days; the held and AI-pending ones stay whatever their age.
        later = now + timedelta(days=8)
        plan = retention.dry_run(db, orthanc, settings, now=later, free_bytes=10**12, total_bytes=10**12)
        assert [by_id[d.study] for d in plan.purge] == ["CR ROUTINE 1", "CR ROUTINE 2"]
        assert all("more than 7 days ago (RETENTION_DAYS_AFTER_DELIVERY 7)" in d.reason for d in plan.purge)
        kept = {by_id[d.study]: d for d in plan.kept()}
        assert kept["CR KEEP"].reason.startswith("kept by rule keep-long (keep_days 30) until ")
        assert kept["CR HELD"].category == "job not final" and kept["CR LEG"].category == "AI result pending"
        assert len(orthanc_studies(clean_orthanc)) == 5, "a dry run deletes nothing"

        # 3. The CLI's dry run says the same, without patient data.
        env_file = write_env({**routed["values"], "RETENTION_DAYS_AFTER_DELIVERY": "7"}, tmp_path / "cli.env")
        cli = subprocess.run([str(PROJECT_ROOT / "orthanc"), "retention", "--dry-run"], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "HUB_ENV_FILE": str(env_file), "COLUMNS": "250"}, check=False)
        assert cli.returncode == 0, cli.stderr
        assert "would delete: 0 studies" in cli.stdout and "touched" in cli.stdout and "is queued" in cli.stdout
        assert "SYNTHETIC" not in cli.stdout, "no patient name in the output"

        # 4. The worker's retention, with its lease, runs the day policy eight days on.
        worker = Retention(settings, db, orthanc, lease(db), clock=lambda: later)
        try:
            result = worker.run_once()
        finally:
            worker.lease.release()
    assert result is not None and sorted(by_id[i] for i in result.purged) == ["CR ROUTINE 1", "CR ROUTINE 2"]
    assert len(orthanc_studies(clean_orthanc)) == 3

    # 5. The records stay, marked purged, with the timeline event and the audit line; QI keeps counting.
    gone = [ids["CR ROUTINE 1"], ids["CR ROUTINE 2"]]
    with db.begin() as conn:
        qi.refresh(conn)
    with db.connect() as conn:
        purged = dict(conn.execute(text("SELECT id, purged_at IS NOT NULL FROM studies")).all())
        assert {i for i, p in purged.items() if p} == set(gone)
        events = conn.execute(text("SELECT study_id, detail FROM events WHERE type = :t ORDER BY study_id"),
                              {"t": EventType.PURGED}).all()
        audits = conn.execute(text("SELECT actor, source, target, after FROM audit_log WHERE action = 'study.purge' "
                                   "ORDER BY target")).all()
        assert conn.execute(text("SELECT count(*) FROM qi_study")).scalar_one() == 5
        state = conn.execute(text("SELECT purged, actor FROM retention_status")).one()
    assert [e.study_id for e in events] == sorted(gone)
    assert all(e.detail["policy"] == "days" and e.detail["actor"] == "worker" for e in events)
    assert {a.target for a in audits} == {f"study:{i}" for i in gone}
    assert all(a.source == "worker" and a.after["in_orthanc"] is False for a in audits)
    assert "SYNTHETIC" not in str([e.detail for e in events] + [a.after for a in audits])
    assert tuple(state) == (2, "worker")

    # 6. A purged study cannot be resent (nothing left in Orthanc); a second run finds nothing more.
    with db.begin() as conn, pytest.raises(OperationError, match="deleted from Orthanc by retention"):
        resend_study(conn, gone[0], "PACS", actor="test", source=AuditSource.CLI)
    with OrthancClient.from_settings(settings) as orthanc:
        again = retention.run(db, orthanc, settings, actor="test", source=AuditSource.CLI, now=later)
        assert again.purged == []
        # 7. 31 days on, the rule's 30 days are over too.
        last = retention.run(db, orthanc, settings, actor="test", source=AuditSource.CLI,
                             now=now + timedelta(days=31))
    assert [by_id[i] for i in last.purged] == ["CR KEEP"]
    assert len(orthanc_studies(clean_orthanc)) == 2  # HELD and LEG: never, whatever their age


def test_a_study_that_arrives_again_is_no_longer_purged(routed, db, clean_orthanc, hub_settings):
    settings = settings_with(routed["values"], retention_days_after_delivery="1")
    with OrthancClient.from_settings(settings) as orthanc:
        result = retention.run(db, orthanc, settings, actor="test", source=AuditSource.CLI,
                               now=datetime.now(UTC) + timedelta(days=2))
    assert len(result.purged) == 2  # the routine ones: the rule keeps CR KEEP 30 days
    study = routed["ids"]["CR ROUTINE 1"]
    with db.connect() as conn:
        uid = conn.execute(text("SELECT study_uid FROM studies WHERE id = :i"), {"i": study}).scalar_one()
    resent = make_study(1, 1, "CR ROUTINE 1", study_uid=uid)
    send(resent, hub_settings)

    def back() -> bool:
        with db.connect() as conn:
            return conn.execute(text("SELECT purged_at IS NULL FROM studies WHERE id = :i"), {"i": study}).scalar_one()

    wait_until(back, timeout=30, what="the study recorded again, no longer purged")
