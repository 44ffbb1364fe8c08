"""Every QI metric on a hand-computed fixture (tests/integration/qi_fixture.py).

The fixture is recorded through core/recorder.py with known UTC timestamps around
both DST changes of America/Los_Angeles. Each expected number below is worked out
by hand in its comment. Every test runs twice: before the QI caches are refreshed
(the views compute dirty studies live) and after (they read the caches), which
must give identical answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, text

from core import qi
from core.db import make_engine
from core.qi import QiFilter
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
MARCH = QiFilter(date(2026, 3, 7), date(2026, 3, 8))
NOVEMBER = QiFilter(date(2026, 11, 1), date(2026, 11, 1))


@pytest.fixture(params=["live", "cached"])
def db(request: pytest.FixtureRequest, qi_db: QiDatabase) -> Iterator[Engine]:
    settings = qi_db.settings
    # The hand computations assume these settings (config/env.defaults + test TZ).
    assert settings.tz == "America/Los_Angeles"
    assert (settings.sla_turnaround_s, settings.sla_ai_round_trip_s, settings.sla_to_destinations_s,
            settings.ai_result_timeout) == (3600, 1800, 600, 1800)
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        qi.sync_qi_settings(conn, settings)
        qi_fixture.build(conn)
    with engine.begin() as conn:
        if request.param == "cached":
            assert qi.refresh_all(conn) == 10  # 9 studies + the orphan
            assert qi.dirty_count(conn) == 0
        else:
            assert qi.dirty_count(conn) == 10
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def conn(db: Engine) -> Iterator[Connection]:
    with db.connect() as connection, connection.begin():
        yield connection


def rows(frame: pd.DataFrame, key: str | list[str]) -> dict:
    return {tuple(k) if isinstance(k, tuple) else k: r for k, r in
            frame.set_index(key).to_dict("index").items()}


def study(conn: Connection, uid_suffix: int) -> dict:
    row = conn.execute(text("SELECT * FROM qi_study WHERE study_instance_uid = :u"),
                       {"u": f"1.2.826.0.1.3680043.10.77.{uid_suffix}"}).mappings().one()
    return dict(row)


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# --- per study ------------------------------------------------------------------------


def test_study_stages_across_the_spring_dst_change(conn: Connection) -> None:
    s1 = study(conn, 1)
    assert s1["first_received_at"] == utc("2026-03-08T09:55:00")
    # stable_at is the first stability; the re-stabilisation at 10:06:10 does not move it
    assert s1["stable_at"] == utc("2026-03-08T09:55:20")
    assert s1["ai_sent_at"] == utc("2026-03-08T09:55:50")
    assert s1["ai_result_at"] == utc("2026-03-08T10:05:50")
    assert s1["ai_result_stable_at"] == utc("2026-03-08T10:06:10")
    assert s1["ready_at"] == s1["ai_result_stable_at"]
    assert s1["delivered_at"] == utc("2026-03-08T10:08:10")
    # 01:55 PST -> 03:08 PDT is 73 minutes on the wall clock but 13 min 10 s of time
    assert (s1["wait_stable_s"], s1["to_ai_s"], s1["ai_round_trip_s"], s1["result_settle_s"],
            s1["to_destinations_s"], s1["turnaround_s"]) == (20, 30, 600, 20, 120, 790)
    assert (s1["received_day"], s1["received_hour"], s1["received_isodow"]) == (date(2026, 3, 8), 1, 7)
    assert s1["received_week"] == date(2026, 3, 2) and s1["received_month"] == date(2026, 3, 1)
    assert s1["day_start"] == utc("2026-03-08T08:00:00")  # midnight PST
    assert s1["outcome"] == "delivered" and s1["routed"] and s1["ai_route"]
    assert s1["destinations"] == ["LPCHROUTER", "MERCURE", "MODLINK"]
    assert s1["destinations_ok"] == ["LPCHROUTER", "MERCURE", "MODLINK"]
    assert s1["destinations_failed"] is None
    assert s1["rules"] == ["ai_sr", "bone_length_ai", "qa_visualization"]
    assert (s1["ai_result_state"], s1["ai_overdue"], s1["ai_no_result"]) == ("on_time", False, False)
    assert (s1["sla_turnaround"], s1["sla_ai_round_trip"], s1["sla_to_destinations"]) == ("met", "met", "met")
    assert s1["modality"] == "CR" and s1["source_aet"] == "MOD_A" and s1["accession_number"] == "ACC-S1"


def test_late_result_dead_delivery_missing_result_and_unrouted(conn: Connection) -> None:
    s2 = study(conn, 2)  # 00:00:00 PST exactly: belongs to 2026-03-08
    assert s2["received_day"] == date(2026, 3, 8) and s2["received_hour"] == 0
    # AI sent on the second attempt (08:01:30), result 40 min later, delivery retried
    assert (s2["wait_stable_s"], s2["to_ai_s"], s2["ai_round_trip_s"], s2["result_settle_s"],
            s2["to_destinations_s"], s2["turnaround_s"]) == (30, 60, 2400, 30, 180, 2700)
    assert (s2["ai_result_state"], s2["ai_overdue"]) == ("late", True)
    assert (s2["sla_turnaround"], s2["sla_ai_round_trip"], s2["sla_to_destinations"]) == ("met", "breached", "met")

    s3 = study(conn, 3)  # 23:59:59 PST on 2026-03-07
    assert (s3["received_day"], s3["received_hour"], s3["received_isodow"]) == (date(2026, 3, 7), 23, 6)
    assert s3["delivered_at"] is None and s3["turnaround_s"] is None
    assert s3["outcome"] == "failed" and s3["status"] == "failed"
    assert s3["destinations_failed"] == ["LPCHROUTER"] and s3["destinations_ok"] is None
    # never delivered and long past the thresholds: breaches, not "missing data"
    assert (s3["sla_turnaround"], s3["sla_to_destinations"], s3["sla_ai_round_trip"]) == ("breached", "breached", None)

    s4 = study(conn, 4)  # 18:00Z = 11:00 PDT (10:00 if PST were wrongly used)
    assert s4["received_hour"] == 11
    assert s4["ai_result_at"] is None and s4["ready_at"] is None and s4["delivered_at"] is None
    assert (s4["ai_result_state"], s4["ai_overdue"], s4["ai_no_result"]) == ("overdue", True, True)
    assert (s4["sla_turnaround"], s4["sla_ai_round_trip"], s4["sla_to_destinations"]) == ("breached", "breached", None)
    assert s4["outcome"] == "in_progress"

    s5 = study(conn, 5)
    assert (s5["routed"], s5["outcome"], s5["delivery_expected"]) == (False, "unrouted", False)
    assert (s5["sla_turnaround"], s5["ai_result_state"], s5["ai_overdue"]) == (None, None, None)


def test_cancelled_jobs_and_resends_do_not_count(conn: Connection) -> None:
    s7 = study(conn, 6)
    # the resend succeeded on 2026-03-10, but delivered_at is the required delivery's
    assert s7["delivered_at"] == utc("2026-03-08T21:01:10")
    assert (s7["to_destinations_s"], s7["turnaround_s"]) == (60, 70)
    assert s7["destinations"] == ["LPCHROUTER"]  # MODLINK was cancelled
    assert s7["n_jobs"] == 2 and s7["n_delivery_jobs"] == 1  # the cancelled job counts as routed, not required


def test_orphan_ai_results_are_not_studies(conn: Connection) -> None:
    uids = conn.execute(text("SELECT study_instance_uid FROM qi_study")).scalars().all()
    assert len(uids) == 9 and "1.2.826.0.1.3680043.10.77.999" not in uids


def test_autumn_dst_repeated_hour(conn: Connection) -> None:
    s9, s10 = study(conn, 7), study(conn, 8)
    # 01:30 PDT -> 01:30 PST: the wall clock shows no change, one hour passed
    assert s9["turnaround_s"] == 3600 and s9["sla_turnaround"] == "met"  # <= threshold is met
    assert s9["to_destinations_s"] == 3590 and s9["sla_to_destinations"] == "breached"
    assert s10["turnaround_s"] == 60
    assert (s9["received_hour"], s10["received_hour"]) == (1, 1)
    assert s9["received_week"] == date(2026, 10, 26)
    assert s9["day_start"] == utc("2026-11-01T07:00:00")  # midnight PDT
    heat = qi.volume_heatmap(conn, NOVEMBER, LA)
    assert heat.to_dict("records") == [{"isodow": 7, "hour": 1, "studies": 2}]
    stats = rows(qi.stage_stats(conn, NOVEMBER, LA, grain="day", stages=["turnaround"]), "stage")
    # [60, 3600]: p50 = 1830, p90 = 60 + 0.9 * 3540 = 3246, p95 = 60 + 0.95 * 3540 = 3423
    t = stats["turnaround"]
    assert (t["bucket"], t["n"], t["p50"], t["p90"], t["p95"], t["max"]) == (date(2026, 11, 1), 2, 1830, 3246, 3423, 3600)
    assert t["bucket_start"] == utc("2026-11-01T07:00:00")


def test_in_flight_study_is_pending_not_breached(conn: Connection) -> None:
    s6 = study(conn, 9)  # received 20 min ago, sent to the AI 19.5 min ago
    assert (s6["ai_result_state"], s6["ai_overdue"], s6["ai_no_result"]) == ("waiting", False, True)
    assert (s6["sla_turnaround"], s6["sla_ai_round_trip"]) == ("pending", "pending")
    today = s6["received_day"]
    sla = rows(qi.sla_compliance(conn, QiFilter(today, today), LA, grain="all"), "metric")
    assert (sla["turnaround"]["n_pending"], sla["turnaround"]["n_due"]) == (1, 0)
    assert pd.isna(sla["turnaround"]["compliance"])  # nothing due yet: no rate, not 0 % or 100 %
    ai = qi.ai_outcomes(conn, QiFilter(today, today), LA, grain="all").iloc[0]
    assert (ai["sent"], ai["waiting"], ai["overdue"], ai["no_result"]) == (1, 1, 0, 1)


# --- aggregates over 2026-03-07 .. 2026-03-08 ------------------------------------------


def test_stage_percentiles(conn: Connection) -> None:
    stats = rows(qi.stage_stats(conn, MARCH, LA, grain="all"), "stage")
    expected = {
        # wait_stable [5, 10, 10, 20, 20, 30]: p50 at 2.5 -> 15, p90 at 4.5 -> 25, p95 at 4.75 -> 27.5
        "wait_stable": (6, 15, 25, 27.5, 30),
        # to_ai [20, 30, 60]: p90 at 1.8 -> 30 + 0.8 * 30 = 54, p95 at 1.9 -> 57
        "to_ai": (3, 30, 54, 57, 60),
        # ai_round_trip [600, 2400]: p90 -> 600 + 0.9 * 1800 = 2220, p95 -> 2310
        "ai_round_trip": (2, 1500, 2220, 2310, 2400),
        "result_settle": (2, 25, 29, 29.5, 30),
        # to_destinations [60, 120, 180]: p90 at 1.8 -> 168, p95 -> 174
        "to_destinations": (3, 120, 168, 174, 180),
        # turnaround [70, 790, 2700]: p90 -> 790 + 0.8 * 1910 = 2318, p95 -> 2509
        "turnaround": (3, 790, 2318, 2509, 2700),
    }
    assert set(stats) == set(expected)
    for stage, (n, p50, p90, p95, mx) in expected.items():
        got = stats[stage]
        assert (got["n"], got["max"]) == (n, mx), stage
        assert got["p50"] == pytest.approx(p50) and got["p90"] == pytest.approx(p90), stage
        assert got["p95"] == pytest.approx(p95), stage


def test_stage_stats_by_day_week_month(conn: Connection) -> None:
    daily = qi.stage_stats(conn, MARCH, LA, grain="day", stages=["wait_stable"])
    assert daily[["bucket", "n", "p50", "max"]].to_dict("records") == [
        {"bucket": date(2026, 3, 7), "n": 1, "p50": 20.0, "max": 20.0},   # S3
        {"bucket": date(2026, 3, 8), "n": 5, "p50": 10.0, "max": 30.0},   # [5, 10, 10, 20, 30]
    ]
    assert list(daily["bucket_start"]) == [utc("2026-03-07T08:00:00"), utc("2026-03-08T08:00:00")]
    weekly = qi.stage_stats(conn, MARCH, LA, grain="week", stages=["turnaround"])
    assert weekly[["bucket", "n", "p50"]].to_dict("records") == [{"bucket": date(2026, 3, 2), "n": 3, "p50": 790.0}]
    monthly = qi.stage_stats(conn, MARCH, LA, grain="month", stages=["turnaround"])
    assert monthly[["bucket", "n", "max"]].to_dict("records") == [{"bucket": date(2026, 3, 1), "n": 3, "max": 2700.0}]


def test_stage_stats_grouped(conn: Connection) -> None:
    by_modality = rows(qi.stage_stats(conn, MARCH, LA, grain="all", group="modality", stages=["turnaround"]), "grp")
    assert {k: (v["n"], v["p50"]) for k, v in by_modality.items()} == {"CR": (2, 430.0), "CT": (1, 2700.0)}
    by_source = rows(qi.stage_stats(conn, MARCH, LA, grain="all", group="source_aet", stages=["wait_stable"]), "grp")
    # MOD_A: S1 20, S3 20, S4 10; MOD_B: S2 30, S7 10; MOD_C: S5 5
    assert {k: (v["n"], v["p50"]) for k, v in by_source.items()} == {
        "MOD_A": (3, 20.0), "MOD_B": (2, 20.0), "MOD_C": (1, 5.0)}
    by_destination = rows(qi.stage_stats(conn, MARCH, LA, grain="all", group="destination",
                                         stages=["turnaround"]), "grp")
    # studies routed to each destination: LPCHROUTER S1 790, S2 2700, S7 70 (S3 undelivered)
    assert {k: (v["n"], v["p50"]) for k, v in by_destination.items()} == {
        "LPCHROUTER": (3, 790.0), "MERCURE": (2, 1745.0), "MODLINK": (1, 790.0)}
    by_rule = rows(qi.stage_stats(conn, MARCH, LA, grain="all", group="rule", stages=["to_ai"]), "grp")
    assert {k: (v["n"], v["max"]) for k, v in by_rule.items()} == {
        "ai_sr": (1, 30.0), "bone_length_ai": (3, 60.0), "qa_visualization": (2, 60.0)}


def test_filters(conn: Connection) -> None:
    def n(flt: QiFilter) -> int:
        frame = qi.volume(conn, flt, LA, grain="all")
        return int(frame["studies"].sum()) if len(frame) else 0

    assert n(MARCH) == 6
    assert n(QiFilter(MARCH.start, MARCH.end, modalities=("CR",))) == 3  # S1, S4, S7
    assert n(QiFilter(MARCH.start, MARCH.end, sources=("MOD_B", "MOD_C"))) == 3  # S2, S5, S7
    assert n(QiFilter(MARCH.start, MARCH.end, destinations=("MODLINK",))) == 1  # S1 (S7's was cancelled)
    assert n(QiFilter(MARCH.start, MARCH.end, rules=("direct_pacs",))) == 2  # S3, S7
    assert n(QiFilter(date(2026, 3, 8), date(2026, 3, 8))) == 5
    assert n(QiFilter(date(2026, 3, 7), date(2026, 3, 7))) == 1
    options = qi.filter_options(conn, MARCH, LA)
    assert options == {"modality": ["CR", "CT", "DX", "MR"], "source_aet": ["MOD_A", "MOD_B", "MOD_C"],
                       "destination": ["LPCHROUTER", "MERCURE", "MODLINK"],
                       "rule": ["ai_sr", "bone_length_ai", "direct_pacs", "qa_visualization"]}


def test_sla_compliance(conn: Connection) -> None:
    sla = rows(qi.sla_compliance(conn, MARCH, LA, grain="all"), "metric")
    # turnaround: met S1 790, S2 2700, S7 70; breached S3, S4 (undelivered, > 1 h old); S5 n/a
    # ai_round_trip: met S1 600; breached S2 2400, S4 (no result after 30 min)
    # to_destinations: met S1 120, S2 180, S7 60; breached S3; S4 not ready, n/a
    expected = {"turnaround": (3600, 3, 2, 0, 5, 0.6), "ai_round_trip": (1800, 1, 2, 0, 3, 1 / 3),
                "to_destinations": (600, 3, 1, 0, 4, 0.75)}
    for metric, (threshold, met, breached, pending, due, share) in expected.items():
        got = sla[metric]
        assert (got["threshold_s"], got["n_met"], got["n_breached"], got["n_pending"], got["n_due"]) == (
            threshold, met, breached, pending, due), metric
        assert got["compliance"] == pytest.approx(share), metric


def test_sla_follows_the_configured_thresholds(db: Engine, qi_db: QiDatabase, make_settings) -> None:
    stricter = make_settings(SLA_TURNAROUND_S="700", SLA_TO_DESTINATIONS_S="100")
    with db.begin() as conn:
        assert qi.sync_qi_settings(conn, stricter) is True
        assert qi.sync_qi_settings(conn, stricter) is False  # unchanged
        sla = rows(qi.sla_compliance(conn, MARCH, LA, grain="all"), "metric")
    # turnaround <= 700: only S7 (70); to_destinations <= 100: only S7 (60)
    assert (sla["turnaround"]["n_met"], sla["turnaround"]["n_due"]) == (1, 5)
    assert (sla["to_destinations"]["n_met"], sla["to_destinations"]["threshold_s"]) == (1, 100)


def test_study_outcomes_and_their_denominators(conn: Connection) -> None:
    total = qi.study_outcomes(conn, MARCH, LA, grain="all").iloc[0]
    # received 6; routed 5 (S5 unrouted); delivered S1 S2 S7; failed S3; in progress S4
    assert (total["received"], total["routed"], total["unrouted"], total["delivered"], total["failed"],
            total["in_progress"], total["no_delivery"]) == (6, 5, 1, 3, 1, 1, 0)
    assert total["delivered_rate"] == pytest.approx(3 / 5) and total["failure_rate"] == pytest.approx(1 / 5)
    daily = rows(qi.study_outcomes(conn, MARCH, LA, grain="day"), "bucket")
    assert (daily[date(2026, 3, 7)]["routed"], daily[date(2026, 3, 7)]["failure_rate"]) == (1, 1.0)
    assert (daily[date(2026, 3, 8)]["received"], daily[date(2026, 3, 8)]["routed"]) == (5, 4)
    assert daily[date(2026, 3, 8)]["delivered_rate"] == pytest.approx(0.75)


def test_delivery_outcomes_per_destination(conn: Connection) -> None:
    by_dest = rows(qi.delivery_outcomes(conn, MARCH, LA), "destination")
    lpch = by_dest["LPCHROUTER"]
    # sends S1, S2, S3, S7 (the resend is not a required send); S3 is dead
    assert (lpch["purpose"], lpch["sends"], lpch["succeeded"], lpch["failed"]) == ("delivery", 4, 3, 1)
    assert lpch["failure_rate"] == pytest.approx(0.25)
    assert (by_dest["MERCURE"]["purpose"], by_dest["MERCURE"]["sends"], by_dest["MERCURE"]["failed"]) == ("ai", 3, 0)
    assert by_dest["MODLINK"]["sends"] == 1  # S7's was cancelled
    times = rows(qi.delivery_times(conn, MARCH, LA), "destination")
    lpch = times["LPCHROUTER"]
    # to LPCHROUTER from ready: S1 60, S2 180, S7 60 -> p50 60, p90 at 1.8 -> 156
    assert (lpch["n"], lpch["to_destination_p50"], lpch["to_destination_p90"]) == (3, 60, pytest.approx(156))
    # turnaround to LPCHROUTER: S1 730, S2 2700, S7 70
    assert (lpch["turnaround_p50"], lpch["turnaround_max"]) == (730, 2700)
    assert (times["MERCURE"]["purpose"], times["MERCURE"]["to_destination_max"]) == ("ai", 60)  # = to_ai
    assert (times["MODLINK"]["n"], times["MODLINK"]["turnaround_p50"]) == (1, 790)


def test_attempt_failures_by_attempt_time(conn: Connection) -> None:
    by_dest = rows(qi.attempt_failures(conn, MARCH, LA, grain="all"), "destination")
    # LPCHROUTER: S1 ok, S2 failed + ok, S3 failed + dead, S7 ok -> 6 attempts, 3 failed
    assert {k: (v["attempts"], v["failed"], v["retried"], v["dead"]) for k, v in by_dest.items()} == {
        "LPCHROUTER": (6, 3, 2, 1), "MERCURE": (4, 1, 1, 0), "MODLINK": (1, 0, 0, 0)}
    assert by_dest["LPCHROUTER"]["failure_rate"] == pytest.approx(0.5)
    daily = qi.attempt_failures(conn, MARCH, LA, grain="day", by_destination=False)
    # S3 was received on 03-07 (local) but its attempts ran after midnight, on 03-08
    assert daily[["bucket", "attempts", "failed"]].to_dict("records") == [
        {"bucket": date(2026, 3, 8), "attempts": 11, "failed": 4}]
    # the operator's resend (2026-03-10) is an attempt of that day
    later = qi.attempt_failures(conn, QiFilter(date(2026, 3, 10), date(2026, 3, 10)), LA, grain="all")
    assert later[["destination", "attempts", "failed"]].to_dict("records") == [
        {"destination": "LPCHROUTER", "attempts": 1, "failed": 0}]


def test_top_errors(conn: Connection) -> None:
    errors = qi.top_errors(conn, MARCH, LA)
    # first lines only; ties ordered by message
    assert errors[["error", "failed", "dead", "jobs", "studies"]].to_dict("records") == [
        {"error": qi_fixture.ERR_REJECTED, "failed": 2, "dead": 1, "jobs": 1, "studies": 1},
        {"error": qi_fixture.ERR_REFUSED, "failed": 2, "dead": 0, "jobs": 2, "studies": 1},
    ]
    assert list(errors["share"]) == [0.5, 0.5]
    assert list(errors.iloc[1]["destinations"]) == ["LPCHROUTER", "MERCURE"]
    only_ai = qi.top_errors(conn, QiFilter(MARCH.start, MARCH.end, destinations=("MERCURE",)), LA)
    assert only_ai[["error", "failed", "share"]].to_dict("records") == [
        {"error": qi_fixture.ERR_REFUSED, "failed": 1, "share": 1.0}]


def test_ai_outcomes_and_overdue_list(conn: Connection) -> None:
    ai = qi.ai_outcomes(conn, MARCH, LA, grain="all").iloc[0]
    # sent S1 (on time), S2 (late, 2400 s > 1800 s), S4 (no result, overdue)
    assert (ai["ai_routed"], ai["not_sent"], ai["sent"], ai["with_result"], ai["on_time"], ai["late"],
            ai["overdue_missing"], ai["waiting"], ai["overdue"], ai["no_result"]) == (3, 0, 3, 2, 1, 1, 1, 0, 2, 1)
    assert ai["overdue_rate"] == pytest.approx(2 / 3) and ai["no_result_rate"] == pytest.approx(1 / 3)
    overdue = qi.ai_overdue_studies(conn, MARCH, LA)
    assert list(overdue["accession_number"]) == ["ACC-S4", "ACC-S2"]  # newest send first
    assert list(overdue["ai_result_state"]) == ["overdue", "late"]
    assert overdue.iloc[1]["waited_s"] == 2400


def test_volumes(conn: Connection) -> None:
    heat = qi.volume_heatmap(conn, MARCH, LA)
    assert heat.to_dict("records") == [
        {"isodow": 6, "hour": 23, "studies": 1},  # S3 Saturday 23:59:59 PST
        {"isodow": 7, "hour": 0, "studies": 1},   # S2
        {"isodow": 7, "hour": 1, "studies": 1},   # S1 01:55 PST
        {"isodow": 7, "hour": 11, "studies": 1},  # S4 11:00 PDT
        {"isodow": 7, "hour": 13, "studies": 1},  # S5
        {"isodow": 7, "hour": 14, "studies": 1},  # S7
    ]
    by_modality = qi.volume(conn, MARCH, LA, grain="day", group="modality")
    assert by_modality[["bucket", "grp", "studies"]].to_dict("records") == [
        {"bucket": date(2026, 3, 7), "grp": "DX", "studies": 1},
        {"bucket": date(2026, 3, 8), "grp": "CR", "studies": 3},
        {"bucket": date(2026, 3, 8), "grp": "CT", "studies": 1},
        {"bucket": date(2026, 3, 8), "grp": "MR", "studies": 1},
    ]


def test_daily_summary(conn: Connection) -> None:
    days = rows(qi.daily_summary(conn, MARCH, LA), "day")
    assert list(days) == [date(2026, 3, 7), date(2026, 3, 8)]
    d = days[date(2026, 3, 8)]
    assert (d["studies"], d["routed"], d["unrouted"], d["delivered"], d["failed"], d["in_progress"]) == (5, 4, 1, 3, 0, 1)
    assert (d["ai_sent"], d["ai_results"], d["ai_overdue"]) == (3, 2, 2)
    assert (d["turnaround_n"], d["turnaround_p50"], d["turnaround_p90"], d["turnaround_max"]) == (
        3, 790, pytest.approx(2318), 2700)
    assert (d["ai_round_trip_p50"], d["to_destinations_p95"]) == (1500, pytest.approx(174))
    # turnaround: S1, S2, S7 met; S4 breached -> 3 / 4
    assert (d["sla_turnaround_met"], d["sla_turnaround_due"], d["sla_turnaround_compliance"]) == (3, 4, 0.75)
    assert (d["sla_ai_round_trip_met"], d["sla_ai_round_trip_due"]) == (1, 3)
    assert (d["sla_to_destinations_met"], d["sla_to_destinations_due"]) == (3, 3)
    d7 = days[date(2026, 3, 7)]
    assert (d7["studies"], d7["failed"], d7["failure_rate"], d7["sla_turnaround_compliance"]) == (1, 1, 1.0, 0.0)
    assert pd.isna(d7["turnaround_p50"])  # nothing delivered that day: no percentile, not 0
