"""QI endpoints and report exports: the core/qi.py functions, one route each. Viewer role.

Every number is computed by the SQL views and functions of db/sql (docs/qi.md), through
the same core/qi.py call the app's QI pages make, with the same filters: calendar days
in the hub's TZ (both included; default the last 30 days, as the pages), and optional
modality, source AET, destination and rule (repeat a parameter for several values).
The per-study report is core/reports.py's, streamed. No patient name or id is in any
of them.

| app page | endpoints |
| --- | --- |
| Turnaround | stage-stats (stage=turnaround), stage-histogram, sla, delivery-times |
| AI round trip | stage-stats (stage=to_ai, ai_round_trip, result_settle), stage-histogram, ai-outcomes, ai-overdue |
| Failures | study-outcomes, delivery-outcomes, attempt-failures, top-errors |
| Volumes | volume, volume-heatmap, study-outcomes |
| SLA | sla |
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import text

from api.access import Caller, hub_of, viewer
from api.errors import BadRequest
from api.hub import QI_READ_TIMEOUT_MS
from api.models import Grain, Group, QiDefinitions, QiRows, StageName
from api.params import check_day, check_values
from core import qi, reports
from core.qi import QiFilter

router = APIRouter(prefix="/v1", tags=["qi"])
DEFAULT_DAYS = 30  # as the app's QI pages (app/components/qi_filters.py)
CSV = "text/csv; charset=utf-8"


def qi_filter(
    request: Request,
    start: Annotated[date | None, Query(description="first day (YYYY-MM-DD, hub's TZ); default 29 days before end")]
    = None,
    end: Annotated[date | None, Query(description="last day, included; default today")] = None,
    modality: Annotated[list[str] | None, Query(description="repeatable")] = None,
    source_aet: Annotated[list[str] | None, Query(description="repeatable")] = None,
    destination: Annotated[list[str] | None, Query(description="repeatable; the AI node is a destination too")]
    = None,
    rule: Annotated[list[str] | None, Query(description="repeatable")] = None,
) -> QiFilter:
    zone = hub_of(request).settings.zone
    check_day(start, "start")
    check_day(end, "end")
    if end is None:
        end = start + timedelta(days=DEFAULT_DAYS - 1) if start else datetime.now(zone).date()
    if start is None:
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    check_day(start, "start")
    check_day(end, "end")
    return QiFilter(start, end, check_values(modality, "modality"), check_values(source_aet, "source_aet"),
                    check_values(destination, "destination"), check_values(rule, "rule"))


Filter = Annotated[QiFilter, Depends(qi_filter)]
Viewer = Annotated[Caller, Depends(viewer)]
GrainQuery = Annotated[Grain, Query(description="bucket: day, week (Monday), month, or all (one bucket)")]
GroupQuery = Annotated[Group, Query(description="break down by this dimension; none: all studies together")]


def plain(value: Any) -> Any:
    """A cell of a QI DataFrame as JSON: NaN, NaT and infinities are null, numpy scalars Python's."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, Decimal):
        value = float(value)
    if hasattr(value, "item") and not isinstance(value, str | bytes | datetime | date):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN (no value), or the histogram's open-ended last bin
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = [str(c) for c in frame.columns]
    return [{c: plain(v) for c, v in zip(columns, row, strict=True)} for row in frame.itertuples(index=False, name=None)]


def _rows(request: Request, report: str, flt: QiFilter, call: Any, **kwargs: Any) -> QiRows:
    hub = hub_of(request)
    with hub.reading(QI_READ_TIMEOUT_MS) as conn:
        frame = call(conn, flt, hub.settings.zone, **kwargs)
    return QiRows(report=report, start=flt.start, end=flt.end, rows=records(frame))


@router.get("/qi/stage-stats", response_model=QiRows, summary="Durations of each stage: count, p50, p90, p95, max",
            description="core.qi.stage_stats (qi_stage_stats). Turnaround: stage=turnaround; AI round trip: "
                        "stage=to_ai&stage=ai_round_trip&stage=result_settle.")
def stage_stats(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all", group: GroupQuery = "none",
                stage: Annotated[list[StageName] | None, Query(description="repeatable; default every stage")] = None,
                ) -> QiRows:
    return _rows(request, "stage-stats", flt, qi.stage_stats, grain=grain, group=group, stages=stage)


@router.get("/qi/stage-histogram", response_model=QiRows, summary="How many studies took how long, in bins",
            description="core.qi.stage_histogram (qi_stage_histogram); the last bin is open-ended (bin_end null).")
def stage_histogram(
    request: Request, caller: Viewer, flt: Filter, stage: Annotated[StageName, Query()],
    bin_s: Annotated[float, Query(ge=1, le=86_400, description="bin width in seconds")] = 60,
    max_s: Annotated[float, Query(ge=1, le=30 * 86_400, description="values from here share the last bin")] = 7200,
) -> QiRows:
    if max_s / bin_s > 10_000:
        raise BadRequest("at most 10000 bins: widen bin_s or lower max_s")
    return _rows(request, "stage-histogram", flt, qi.stage_histogram, stage=stage, bin_s=bin_s, max_s=max_s)


@router.get("/qi/sla", response_model=QiRows, summary="SLA compliance per metric: met, breached, pending, rate",
            description="core.qi.sla_compliance (qi_sla_compliance); the thresholds are SLA_* of .env.")
def sla(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all", group: GroupQuery = "none") -> QiRows:
    return _rows(request, "sla", flt, qi.sla_compliance, grain=grain, group=group)


@router.get("/qi/study-outcomes", response_model=QiRows, summary="Studies received, routed, delivered, failed",
            description="core.qi.study_outcomes (qi_study_outcomes).")
def study_outcomes(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all",
                   group: GroupQuery = "none") -> QiRows:
    return _rows(request, "study-outcomes", flt, qi.study_outcomes, grain=grain, group=group)


@router.get("/qi/delivery-outcomes", response_model=QiRows, summary="Per destination: sends, successes, failures",
            description="core.qi.delivery_outcomes (qi_delivery_outcomes).")
def delivery_outcomes(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all") -> QiRows:
    return _rows(request, "delivery-outcomes", flt, qi.delivery_outcomes, grain=grain)


@router.get("/qi/delivery-times", response_model=QiRows, summary="Per destination: time to delivery percentiles",
            description="core.qi.delivery_times (qi_delivery_times).")
def delivery_times(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all") -> QiRows:
    return _rows(request, "delivery-times", flt, qi.delivery_times, grain=grain)


@router.get("/qi/attempt-failures", response_model=QiRows, summary="Send attempts and failed attempts",
            description="core.qi.attempt_failures (qi_attempt_failures), by the attempt's own time.")
def attempt_failures(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "day",
                     by_destination: bool = True) -> QiRows:
    return _rows(request, "attempt-failures", flt, qi.attempt_failures, grain=grain, by_destination=by_destination)


@router.get("/qi/top-errors", response_model=QiRows, summary="The most frequent errors of failed attempts",
            description="core.qi.top_errors (qi_top_errors).")
def top_errors(request: Request, caller: Viewer, flt: Filter,
               limit: Annotated[int, Query(ge=1, le=100)] = 10) -> QiRows:
    return _rows(request, "top-errors", flt, qi.top_errors, limit=limit)


@router.get("/qi/ai-outcomes", response_model=QiRows, summary="AI sends: on time, late, overdue, waiting",
            description="core.qi.ai_outcomes (qi_ai_outcomes); the timeout is AI_RESULT_TIMEOUT.")
def ai_outcomes(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "all",
                group: GroupQuery = "none") -> QiRows:
    return _rows(request, "ai-outcomes", flt, qi.ai_outcomes, grain=grain, group=group)


@router.get("/qi/ai-overdue", response_model=QiRows, summary="Studies whose AI result is late or missing",
            description="core.qi.ai_overdue_studies: StudyInstanceUID and accession, no patient data.")
def ai_overdue(request: Request, caller: Viewer, flt: Filter,
               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> QiRows:
    return _rows(request, "ai-overdue", flt, qi.ai_overdue_studies, limit=limit)


@router.get("/qi/volume", response_model=QiRows, summary="Studies received per bucket",
            description="core.qi.volume (qi_volume).")
def volume(request: Request, caller: Viewer, flt: Filter, grain: GrainQuery = "day",
           group: GroupQuery = "none") -> QiRows:
    return _rows(request, "volume", flt, qi.volume, grain=grain, group=group)


@router.get("/qi/volume-heatmap", response_model=QiRows, summary="Studies received per weekday and hour",
            description="core.qi.volume_heatmap (qi_volume_heatmap): ISO weekday (1 = Monday), local hour.")
def volume_heatmap(request: Request, caller: Viewer, flt: Filter) -> QiRows:
    return _rows(request, "volume-heatmap", flt, qi.volume_heatmap)


@router.get("/qi/daily-summary", response_model=QiRows, summary="One row per day: volumes, outcomes, stages, SLA",
            description="core.qi.daily_summary (qi_daily_summary), the daily-summary report's rows.")
def daily_summary(request: Request, caller: Viewer, flt: Filter) -> QiRows:
    return _rows(request, "daily-summary", flt, qi.daily_summary)


@router.get("/qi/definitions", response_model=QiDefinitions, summary="What each stage means, and the thresholds",
            description="core.qi.DEFINITIONS, qi_settings (the values the views use), and the filter values "
                        "present in the date range (core.qi.filter_options).")
def definitions(request: Request, caller: Viewer, flt: Filter) -> QiDefinitions:
    hub = hub_of(request)
    with hub.reading(QI_READ_TIMEOUT_MS) as conn:
        settings = qi.qi_settings(conn)
        options = qi.filter_options(conn, flt, hub.settings.zone)
    return QiDefinitions(definitions=dict(qi.DEFINITIONS), settings={k: plain(v) for k, v in settings.items()},
                         filter_options=options)


# --- reports ---------------------------------------------------------------------------------

CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV, header first"}}


@router.get("/reports/studies.csv", response_class=StreamingResponse, responses=CSV_RESPONSE, tags=["reports"],
            summary="The per-study report (docs/qi.md, 'Exports'), streamed",
            description="core.reports' per-study export as CSV: the same columns and formats as the app's "
                        "download and `./orthanc report`, for studies first received in the days given.")
def studies_csv(request: Request, caller: Viewer, flt: Filter) -> StreamingResponse:
    hub = hub_of(request)
    zone = hub.settings.zone
    conn = hub.engine.connect()
    try:
        conn.begin()
        conn.execute(text("SET TRANSACTION READ ONLY"))
        rows = qi.iter_studies(conn, flt, zone)
        first = list(itertools.islice(rows, 1))  # runs the query now: a failure is still an error status
    except BaseException:
        conn.close()
        raise

    def body() -> Iterator[bytes]:
        try:
            formatted = reports.format_rows(itertools.chain(first, rows), qi.STUDY_COLUMNS, zone)
            for chunk in reports.csv_chunks(qi.STUDY_COLUMNS, formatted):
                yield chunk.encode("utf-8")
        finally:
            close = getattr(rows, "close", None)  # a generator: ends its server-side cursor
            if close is not None:
                close()
            conn.close()

    name = f"qi-studies_{flt.start.isoformat()}_{flt.end.isoformat()}.csv"
    return StreamingResponse(body(), media_type=CSV, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/reports/daily-summary.csv", response_class=Response, responses=CSV_RESPONSE, tags=["reports"],
            summary="The daily-summary report", description="core.reports' daily summary as CSV.")
def daily_summary_csv(request: Request, caller: Viewer, flt: Filter) -> Response:
    hub = hub_of(request)
    buffer = io.BytesIO()
    with hub.reading(QI_READ_TIMEOUT_MS) as conn:
        reports.export_summary(conn, flt, hub.settings.zone, "csv", buffer)
    name = f"qi-daily-summary_{flt.start.isoformat()}_{flt.end.isoformat()}.csv"
    return Response(buffer.getvalue(), media_type=CSV, headers={"Content-Disposition": f'attachment; filename="{name}"'})
