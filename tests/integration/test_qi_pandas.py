"""An independent recomputation of docs/qi.md ("Per study") in pandas agrees with the SQL.

The pandas side reads only the core tables (studies, series, routing_jobs,
job_series) and implements the definitions from their text, without the views, so a
mistake in either implementation shows up as a disagreement. It runs on the
hand-computed fixture and on a few thousand synthetic studies from bench/seed.py.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, text

from core import qi
from core.qi import QiFilter
from testkit.harness.stack import QiDatabase
from testkit.history import seed
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
DURATIONS = {
    "wait_stable_s": ("stable_at", "first_received_at"),
    "to_ai_s": ("ai_sent_at", "stable_at"),
    "ai_round_trip_s": ("ai_result_at", "ai_answered_at"),
    "result_settle_s": ("ai_result_stable_at", "ai_result_at"),
    "to_destinations_s": ("delivered_at", "ready_at"),
    "turnaround_s": ("delivered_at", "first_received_at"),
}


def _min(values: pd.Series) -> pd.Timestamp:
    values = values.dropna()
    return values.min() if len(values) else pd.NaT


def answered_attempt(sent: pd.Timestamp, result: pd.Timestamp, starts: pd.DataFrame | None,
                     queued: pd.Series) -> pd.Timestamp:
    """The start of the send the first AI result answers (docs/qi.md "Durations are never negative"):
    the success when the result came after it; else the latest attempt start at or before the
    result, at whole seconds; else the AI job's first queueing; else none."""
    if pd.isna(sent) or pd.isna(result):
        return pd.NaT
    if result >= sent:
        return sent
    whole = starts["at"].dt.floor("s") if starts is not None else pd.Series([], dtype=object)
    before = whole[whole <= result]
    if len(before):
        return before.max()
    first = queued.min().floor("s") if len(queued) else pd.NaT
    return first if pd.notna(first) and first <= result else pd.NaT


def recompute(conn: Connection, now: datetime, limits: dict[str, int]) -> pd.DataFrame:
    """One row per (non-orphan) study, from the base tables only."""
    studies = pd.read_sql(text("SELECT id AS study_id, study_uid, accession_number, modalities, source_aet, "
                               "first_received_at, stable_at FROM studies WHERE NOT orphan_ai_result"), conn)
    series = pd.read_sql(text("SELECT study_id, kind, modality, first_received_at, stable_at FROM series"), conn)
    jobs = pd.read_sql(text("SELECT id, study_id, purpose, destination, rule_name, state, created_at, finished_at "
                            "FROM routing_jobs"), conn)
    resends = set(pd.read_sql(text("SELECT job_id FROM job_series WHERE is_resend"), conn)["job_id"])
    required = jobs[~jobs["id"].isin(resends)]
    ai_jobs = set(required[required["purpose"] == "ai"]["id"])
    started = pd.read_sql(text("SELECT study_id, job_id, at FROM events WHERE type = 'delivery_started'"), conn)
    ai_starts_of = dict(tuple(started[started["job_id"].isin(ai_jobs)].groupby("study_id")))
    series_of = dict(tuple(series.groupby("study_id")))
    jobs_of = dict(tuple(required.groupby("study_id")))
    rule_jobs_of = dict(tuple(jobs[jobs["rule_name"].notna()].groupby("study_id")))
    empty_series, empty_jobs = series.iloc[0:0], required.iloc[0:0]
    out = []
    for s in studies.itertuples(index=False):
        ser = series_of.get(s.study_id, empty_series)
        job = jobs_of.get(s.study_id, empty_jobs)
        results = ser[ser["kind"] == "ai_result"]
        active = job[job["state"] != "cancelled"]
        ai_route = bool((active["purpose"] == "ai").any())
        ai_sent_at = _min(job[(job["purpose"] == "ai") & (job["state"] == "succeeded")]["finished_at"])
        ai_result_at = _min(results["first_received_at"])
        ai_result_stable_at = _min(results["stable_at"])
        ready_at = ai_result_stable_at if ai_route else s.stable_at
        deliveries = active[active["purpose"] == "delivery"]
        complete = (len(deliveries) > 0 and bool((deliveries["state"] == "succeeded").all())
                    and (not ai_route or pd.notna(ai_result_stable_at)))
        # delivered once every delivery is done and, on AI routes, the AI result is stable
        delivered_at = max(deliveries["finished_at"].max(), ai_result_stable_at if ai_route else pd.NaT) \
            if complete else pd.NaT
        ai_answered_at = answered_attempt(ai_sent_at, ai_result_at, ai_starts_of.get(s.study_id),
                                          job[job["purpose"] == "ai"]["created_at"])
        originals = sorted(set(ser[(ser["kind"] == "original")]["modality"].dropna()) - {""})
        per_destination = active.groupby("destination")["state"]
        row = {
            "study_id": s.study_id, "study_instance_uid": s.study_uid, "accession_number": s.accession_number,
            "modality": s.modalities or ("\\".join(originals) if originals else None),
            "source_aet": s.source_aet, "first_received_at": s.first_received_at, "stable_at": s.stable_at,
            "ai_sent_at": ai_sent_at, "ai_result_at": ai_result_at, "ai_result_stable_at": ai_result_stable_at,
            "ready_at": ready_at, "delivered_at": delivered_at, "ai_answered_at": ai_answered_at,
            "routed": len(job) > 0,
            "ai_route": ai_route, "delivery_expected": len(job) > 0 and (len(deliveries) > 0 or ai_route),
            "dead": bool((job["state"] == "dead").any()),
            "open": bool(job["state"].isin(["queued", "sending", "failed"]).any()),
            "destinations_ok": sorted(d for d, st in per_destination if (st == "succeeded").all()) or None,
            "destinations_failed": sorted(d for d, st in per_destination if (st == "dead").any()) or None,
            "rules": sorted(set(rule_jobs_of[s.study_id]["rule_name"])) if s.study_id in rule_jobs_of else None,
        }
        for name, (end, start) in DURATIONS.items():
            a, b = row[end], row[start]
            row[name] = (a - b).total_seconds() if pd.notna(a) and pd.notna(b) else None
        out.append(row)
    frame = pd.DataFrame(out)
    frame["outcome"] = np.select(
        [~frame["routed"], frame["delivered_at"].notna(), frame["dead"],
         frame["open"] | (frame["ai_route"] & frame["ai_result_stable_at"].isna())],
        ["unrouted", "delivered", "failed", "in_progress"], "no_delivery")
    now_ts = pd.Timestamp(now)

    def state(applies: pd.Series, value: pd.Series, start: pd.Series, limit: int) -> pd.Series:
        elapsed = (now_ts - start).dt.total_seconds()
        result = np.where(value.notna(), np.where(value <= limit, "met", "breached"),
                          np.where(elapsed > limit, "breached", "pending"))
        return pd.Series(np.where(applies, result, None), index=value.index)

    sent = frame["ai_sent_at"].notna()
    frame["sla_turnaround"] = state(frame["delivery_expected"], frame["turnaround_s"],
                                    frame["first_received_at"], limits["turnaround"])
    frame["sla_ai_round_trip"] = state(sent, frame["ai_round_trip_s"], frame["ai_sent_at"], limits["ai_round_trip"])
    # a result that answers no send of the hub has no round trip to judge
    unanswered = frame["ai_result_at"].notna() & frame["ai_round_trip_s"].isna()
    frame.loc[unanswered, "sla_ai_round_trip"] = None
    frame["sla_to_destinations"] = state(frame["delivery_expected"] & frame["ready_at"].notna(),
                                         frame["to_destinations_s"], frame["ready_at"], limits["to_destinations"])
    waited = (now_ts - frame["ai_sent_at"]).dt.total_seconds()
    frame["ai_result_state"] = np.where(
        ~sent, None,
        np.where(frame["ai_result_at"].notna(),
                 np.where(frame["ai_round_trip_s"].isna() | (frame["ai_round_trip_s"] <= limits["timeout"]),
                          "on_time", "late"),
                 np.where(waited > limits["timeout"], "overdue", "waiting")))
    local = frame["first_received_at"].dt.tz_convert(LA)
    frame["day"] = local.dt.date
    frame["hour"] = local.dt.hour
    frame["isodow"] = local.dt.day_of_week + 1
    return frame


def compare(conn: Connection, flt: QiFilter) -> int:
    """Assert that SQL and pandas agree on per-study values and every aggregate; returns the study count."""
    now = conn.execute(text("SELECT now()")).scalar_one()
    settings = qi.qi_settings(conn)
    limits = {"turnaround": settings["sla_turnaround_s"], "ai_round_trip": settings["sla_ai_round_trip_s"],
              "to_destinations": settings["sla_to_destinations_s"], "timeout": settings["ai_result_timeout_s"]}
    mine = recompute(conn, now, limits)
    p_from, p_to = flt.bounds(LA)
    mine = mine[(mine["first_received_at"] >= p_from) & (mine["first_received_at"] < p_to)]
    sql = pd.read_sql(text("SELECT * FROM qi_study WHERE first_received_at >= :a AND first_received_at < :b"),
                      conn, params={"a": p_from, "b": p_to})
    assert len(sql) == len(mine) > 0

    merged = mine.merge(sql, on="study_id", suffixes=("_pd", "_sql"), validate="one_to_one")
    for column in ("first_received_at", "stable_at", "ai_sent_at", "ai_result_at", "ai_result_stable_at",
                   "ready_at", "delivered_at"):
        pd.testing.assert_series_equal(merged[f"{column}_pd"], merged[f"{column}_sql"], check_names=False)
    for column in DURATIONS:
        np.testing.assert_allclose(merged[f"{column}_pd"].astype(float), merged[f"{column}_sql"].astype(float),
                                   rtol=0, atol=1e-6, err_msg=column)
    for column in ("modality", "source_aet", "outcome", "sla_turnaround", "sla_ai_round_trip",
                   "sla_to_destinations", "ai_result_state", "routed", "ai_route", "delivery_expected"):
        assert merged[f"{column}_pd"].tolist() == merged[f"{column}_sql"].tolist(), column
    for column in ("destinations_ok", "destinations_failed", "rules"):
        assert merged[f"{column}_pd"].tolist() == merged[f"{column}_sql"].tolist(), column
    assert merged["day"].tolist() == merged["received_day"].tolist()

    # stage percentiles per day (percentile_cont == linear interpolation)
    stats = qi.stage_stats(conn, flt, LA, grain="day")
    for stage in qi.STAGES:
        values = mine[["day", f"{stage}_s"]].dropna()
        expected = values.groupby("day")[f"{stage}_s"].agg(
            n="count", p50=lambda v: v.quantile(0.5), p90=lambda v: v.quantile(0.9),
            p95=lambda v: v.quantile(0.95), max="max")
        got = stats[stats["stage"] == stage].set_index("bucket")[["n", "p50", "p90", "p95", "max"]]
        got.index.name = "day"
        pd.testing.assert_frame_equal(got.astype(float), expected.astype(float), check_exact=False, atol=1e-6)

    # by modality, whole range
    by_modality = qi.stage_stats(conn, flt, LA, grain="all", group="modality", stages=["turnaround"])
    expected = mine.dropna(subset=["turnaround_s"]).assign(grp=lambda f: f["modality"].fillna("(none)"))
    expected = expected.groupby("grp")["turnaround_s"].quantile(0.9)
    got = by_modality.set_index("grp")["p90"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False, atol=1e-6)

    # SLA compliance, whole range
    sla = qi.sla_compliance(conn, flt, LA, grain="all").set_index("metric")
    for metric in qi.SLA_METRICS:
        states = mine[f"sla_{metric}"].value_counts()
        met, breached = states.get("met", 0), states.get("breached", 0)
        assert (sla.loc[metric, "n_met"], sla.loc[metric, "n_breached"], sla.loc[metric, "n_pending"]) == (
            met, breached, states.get("pending", 0)), metric
        assert sla.loc[metric, "compliance"] == pytest.approx(met / (met + breached)), metric

    # outcome rates over routed studies
    out = qi.study_outcomes(conn, flt, LA, grain="all").iloc[0]
    routed = mine[mine["routed"]]
    assert out["routed"] == len(routed)
    assert out["failure_rate"] == pytest.approx((routed["outcome"] == "failed").mean())
    assert out["delivered_rate"] == pytest.approx((routed["outcome"] == "delivered").mean())

    # AI rates over sent studies
    ai = qi.ai_outcomes(conn, flt, LA, grain="all").iloc[0]
    sent = mine[mine["ai_sent_at"].notna()]
    assert ai["sent"] == len(sent)
    assert ai["overdue_rate"] == pytest.approx(sent["ai_result_state"].isin(["late", "overdue"]).mean())
    assert ai["no_result_rate"] == pytest.approx(sent["ai_result_at"].isna().mean())

    # volumes by weekday and hour
    heat = qi.volume_heatmap(conn, flt, LA).set_index(["isodow", "hour"])["studies"]
    expected_heat = mine.groupby(["isodow", "hour"]).size()
    assert heat.to_dict() == {k: int(v) for k, v in expected_heat.items()}
    return len(mine)


def test_pandas_agrees_on_the_hand_computed_fixture(db: Engine) -> None:
    with db.begin() as conn:
        qi_fixture.build(conn)
    with db.connect() as conn:
        assert compare(conn, QiFilter(date(2026, 3, 1), date(2026, 12, 31))) == 9


def test_pandas_agrees_on_synthetic_studies(db: Engine, qi_db: QiDatabase) -> None:
    seed(qi_db.url.replace("postgresql+psycopg://", "postgresql://"), studies=3000, days=20,
         end=datetime(2026, 11, 2, tzinfo=LA), tz="America/Los_Angeles", reset=False, seed_value=0.1)
    # and a few changes after the bulk load, left dirty (computed live by the views)
    with db.begin() as conn:
        qi_fixture.build(conn)
    with db.connect() as conn:
        assert qi.dirty_count(conn) > 0
        assert compare(conn, QiFilter(date(2026, 10, 1), date(2026, 11, 30))) > 2900


def test_pandas_agrees_on_answers_to_earlier_attempts(db: Engine) -> None:
    """The fixture of results answering an earlier attempt and of originals delivered before the AI result."""
    with db.begin() as conn:
        qi_fixture.build_attempts(conn)
    with db.connect() as conn:
        assert compare(conn, QiFilter(date(2026, 4, 14), date(2026, 4, 14))) == 6
