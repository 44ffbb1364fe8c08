"""Revision 0004 reads the QI faster and must give exactly the numbers of 0002's definitions.

0004 replaces the public views' dirty filter (NOT IN instead of NOT EXISTS) and lets
qi_stage_stats group by a constant when no group is asked for. Every core.qi read, over
grains, groups, stages and each filter, on the hand-computed fixture (studies on
several local days, both DST days of America/Los_Angeles, an AI result still awaited),
is taken at head and again after downgrading 0004, in three cache states: every study
dirty (live rows), some refreshed, all refreshed and then one changed. The answers must
be identical, row for row and bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from core import qi, recorder
from core.db import alembic_config, migrate
from core.qi import QiFilter
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
REVISION = "0004"
WINDOWS = {
    "march": QiFilter(date(2026, 3, 7), date(2026, 3, 10)),
    "november": QiFilter(date(2026, 11, 1), date(2026, 11, 1)),
}
FILTERS = {
    "any": {},
    "modality": {"modalities": ("CR",)},
    "source": {"sources": ("MOD_A", "MOD_B")},
    "destination": {"destinations": ("LPCHROUTER",)},
    "rule": {"rules": ("qa_visualization",)},
}
Read = Callable[[Connection, QiFilter], Any]


def reads(full: bool) -> dict[str, Read]:
    """The core.qi reads of the pages, CLI and exports: every grain and group when `full`,
    else the pages' own choices (grain day and all, no group or by modality)."""
    grains = qi.GRAINS if full else ("day", "all")
    groups = qi.GROUPS if full else ("none", "modality")
    out: dict[str, Read] = {}
    for grain in grains:
        for group in groups:
            for stages in (None, ["turnaround"], list(qi.AI_STAGES)):
                out[f"stage_stats/{grain}/{group}/{stages}"] = (
                    lambda c, f, g=grain, gr=group, s=stages: qi.stage_stats(c, f, LA, grain=g, group=gr, stages=s))
            out[f"sla/{grain}/{group}"] = lambda c, f, g=grain, gr=group: qi.sla_compliance(c, f, LA, grain=g, group=gr)
            out[f"outcomes/{grain}/{group}"] = lambda c, f, g=grain, gr=group: qi.study_outcomes(c, f, LA, grain=g, group=gr)
            out[f"ai/{grain}/{group}"] = lambda c, f, g=grain, gr=group: qi.ai_outcomes(c, f, LA, grain=g, group=gr)
            out[f"volume/{grain}/{group}"] = lambda c, f, g=grain, gr=group: qi.volume(c, f, LA, grain=g, group=gr)
        out[f"delivery_outcomes/{grain}"] = lambda c, f, g=grain: qi.delivery_outcomes(c, f, LA, grain=g)
        out[f"delivery_times/{grain}"] = lambda c, f, g=grain: qi.delivery_times(c, f, LA, grain=g)
        out[f"attempts/{grain}"] = lambda c, f, g=grain: qi.attempt_failures(c, f, LA, grain=g)
    for stage in qi.STAGES if full else ("turnaround", "ai_round_trip"):
        out[f"histogram/{stage}"] = lambda c, f, s=stage: qi.stage_histogram(c, f, LA, stage=s, bin_s=30, max_s=1800)
    out["top_errors"] = lambda c, f: qi.top_errors(c, f, LA)
    out["heatmap"] = lambda c, f: qi.volume_heatmap(c, f, LA)
    out["daily"] = lambda c, f: qi.daily_summary(c, f, LA)
    # waited_s counts up with the clock between the two reads; the rest must not move
    out["ai_overdue"] = lambda c, f: qi.ai_overdue_studies(c, f, LA).drop(columns="waited_s")
    out["studies"] = lambda c, f: list(qi.iter_studies(c, f, LA))
    out["filter_options"] = lambda c, f: qi.filter_options(c, f, LA)
    return out


def snapshot(engine: Engine, now_window: QiFilter) -> dict[str, Any]:
    """Every read over the year up to now; the pages' reads over each window and filter; the views' rows."""
    answers: dict[str, Any] = {}
    with engine.connect() as conn, conn.begin():
        for view in ("qi_study", "qi_delivery"):
            answers[view] = pd.read_sql_query(
                text(f"SELECT * FROM {view} ORDER BY study_id, 2, 3"), conn)  # noqa: S608 - constant names
        for name, read in reads(full=True).items():
            answers[f"year/{name}"] = read(conn, now_window)
        for wname, window in {**WINDOWS, "now": now_window}.items():
            for fname, values in FILTERS.items():
                flt = QiFilter(window.start, window.end, **values)
                for name, read in reads(full=False).items():
                    answers[f"{wname}/{fname}/{name}"] = read(conn, flt)
    return answers


def assert_same(after: dict[str, Any], before: dict[str, Any]) -> None:
    assert after.keys() == before.keys()
    for key, value in after.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, before[key], check_exact=True, obj=key)
        else:
            assert value == before[key], key


def test_revision_0004_gives_the_same_answers_as_0002s_definitions(db: Engine, qi_db: QiDatabase) -> None:
    config = alembic_config(qi_db.url)
    previous = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(previous, str)
    today = datetime.now(UTC).astimezone(LA).date()
    now_window = QiFilter(today - timedelta(days=400), today)

    def compare(state: str) -> None:
        after = snapshot(db, now_window)
        db.dispose()  # the downgrade replaces views the pooled sessions have planned
        command.downgrade(config, previous)
        try:
            before = snapshot(db, now_window)
        finally:
            db.dispose()
            migrate(qi_db.url)
        assert_same(after, before)
        assert len(after["qi_study"]) == 9, state

    with db.begin() as conn:
        studies = qi_fixture.build(conn)
    compare("every study dirty")
    with db.begin() as conn:
        assert qi.refresh(conn, limit=4) == 4
        assert 0 < qi.dirty_count(conn) < 10
    compare("some studies refreshed")
    with db.begin() as conn:
        qi.refresh_all(conn)
        # S3's dead delivery is retried by an operator and succeeds: only S3 is dirty
        job = conn.execute(text("SELECT id FROM routing_jobs WHERE study_id = :s"),
                           {"s": studies["S3"].study_id}).scalar_one()
        recorder.job_started(conn, job, orthanc_job_id="again", at=datetime.now(UTC))
        recorder.job_succeeded(conn, job, at=datetime.now(UTC), instances_sent=3)
    with db.begin() as conn:
        assert set(conn.execute(text("SELECT study_id FROM qi_dirty")).scalars()) == {studies["S3"].study_id}
        assert conn.execute(text("SELECT outcome FROM qi_study WHERE study_id = :s"),
                            {"s": studies["S3"].study_id}).scalar_one() == "delivered"
    compare("refreshed, then one study changed")


def test_filter_options_list_every_value_of_the_range(db: Engine) -> None:
    """The sidebar's lists, read from distinct dimension combinations, against a plain unnest."""
    with db.begin() as conn:
        qi_fixture.build(conn)
    with db.connect() as conn, conn.begin():
        for window in WINDOWS.values():
            p_from, p_to = window.bounds(LA)
            expected = {
                column: sorted(conn.execute(text(
                    f"SELECT DISTINCT v FROM qi_study, unnest({array}) AS v "  # noqa: S608 - constant names
                    "WHERE first_received_at >= :a AND first_received_at < :b AND v IS NOT NULL"),
                    {"a": p_from, "b": p_to}).scalars())
                for column, array in (("modality", "ARRAY[modality]"), ("source_aet", "ARRAY[source_aet]"),
                                      ("destination", "destinations"), ("rule", "rules"))
            }
            assert qi.filter_options(conn, window, LA) == expected
    assert expected["destination"] == ["LPCHROUTER"]  # November: S9 and S10 only
