"""Overview: the real health of the hub, measured on every render and every APP_REFRESH_S seconds.

Orthanc is asked for /system, PostgreSQL answers a query, and each worker's health
comes from its own heartbeat row; the counts come from indexed queries over the
core tables. Nothing is hard-coded: a service that cannot be reached shows as Down
with the error that proved it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from app.components.access import require_role
from app.components.db import describe, reading, show_error
from app.components.drill import STUDIES_PAGE, counted
from app.components.fmt import age, local, short_age, table
from app.components.holds import hold_banners
from app.components.kpi import health_card, metric
from app.components.live import live_section
from app.components.orthanc import orthanc_health
from app.context import get_settings
from core import queries
from core.disk import StorageStatus, mib, storage_status
from core.rules_status import STATUS_NAME as RULES_STATUS
from core.rules_status import rules_problem
from core.sender_checks import rejected_senders
from core.settings import Settings
from core.states import EventType, JobState, Role, StudyStatus

REJECTED_DAYS = 7  # how far back the Overview lists senders refused as AI results


def worker_stale_after(poll_interval: float) -> float:
    """Seconds without a heartbeat after which a worker counts as down."""
    return max(30.0, 10 * poll_interval)


def _storage_card(settings: Settings) -> StorageStatus:
    """The DICOM storage card; the caller shows a page-wide warning when it is not ok."""
    status = storage_status(settings.dicom_storage, settings.disk_free_warn_mb)
    if status.free_bytes is None or status.total_bytes is None:
        health_card("DICOM storage", False, status.message)
    else:
        used = status.total_bytes - status.free_bytes
        pct = used / status.total_bytes * 100 if status.total_bytes else 0.0
        health_card(
            "DICOM storage", True,
            f"{status.path}: {mib(used)} of {mib(status.total_bytes)} used ({pct:.0f} %), "
            f"{mib(status.free_bytes)} free",
            warn=not status.ok,
        )
    return status


def _retention(state: dict, settings: Settings) -> None:
    """Retention (core/retention.py): the last run, studies purged, and the oldest study kept with its reason."""
    st.subheader("Retention")
    on = bool(settings.retention_days_after_delivery or settings.retention_disk_low_mb)
    cols = st.columns(3)
    with cols[0]:
        ran = state["ran_at"]
        metric("Last run", f"{local(ran, settings.zone)} {settings.tz}" if ran else "never",
               f"By {state['actor']} ({state['source']}): {state['purged']} purged, {state['failed']} failed."
               if ran else "Retention has not run (off, or no rule keep_days).")
    with cols[1]:
        metric("Studies purged", state["purged_total"],
               "Deleted from Orthanc by retention; their records and QI figures stay.")
    with cols[2]:
        oldest = state["oldest_kept"]
        metric("Oldest study kept", f"#{oldest['study']}" if oldest else "none",
               "The oldest study still in Orthanc at the last run, and why it stays.")
    if oldest:
        received = oldest.get("received_at")
        when = f"{local(datetime.fromisoformat(received), settings.zone)} {settings.tz}" if received else "?"
        st.caption(f"Oldest study kept: #{oldest['study']} (accession {oldest.get('accession') or 'none'}), "
                   f"received {when}: {oldest['reason']}")
    if not on and not ran:
        st.caption("Retention is off: RETENTION_DAYS_AFTER_DELIVERY and RETENTION_DISK_LOW_MB are not set "
                   "(docs/operations.md, 'Retention').")


def studies_link(count: int, query: dict[str, str], noun: str = "studies") -> None:
    """Under a KPI: its studies, in the Studies list (issue 16); the link's filter counts the
    same rows as the KPI's query (core.queries.day_counts, failure_counts)."""
    if count:
        st.page_link(STUDIES_PAGE, label=counted(count, noun), query_params=query, icon=":material/list:")


def render() -> None:
    st.title("Overview")
    live_section("overview", measure)


def measure() -> None:
    """Everything below the title: measured now, and again at each refresh (app/components/live.py)."""
    settings = get_settings()
    zone = settings.zone
    now = datetime.now(UTC)
    started = time.perf_counter()

    st.button("Refresh now", key="overview_refresh")

    orthanc = orthanc_health()
    db_error: BaseException | None = None
    data: dict = {}
    db_started = time.perf_counter()
    try:
        today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        with reading() as conn:
            data["db"] = queries.database_info(conn)
            data["db_ms"] = (time.perf_counter() - db_started) * 1000
            data["workers"] = queries.worker_heartbeats(conn)
            data["backlog"] = queries.job_backlog(conn)
            data["today"] = queries.day_counts(conn, today)
            data["last24"] = queries.failure_counts(conn, now - timedelta(hours=24))
            data["held"] = queries.held_destinations(conn)
            data["rules"] = queries.config_status(conn, RULES_STATUS)
            data["rejected"] = rejected_senders(conn, now - timedelta(days=REJECTED_DAYS))
            data["retention"] = queries.retention_state(conn)
    except SQLAlchemyError as exc:
        db_error = exc

    # --- health ---------------------------------------------------------------------
    st.subheader("Health")
    cols: Sequence[DeltaGenerator] = st.columns(4)
    with cols[0]:
        if orthanc.ok:
            stats = orthanc.statistics or {}
            extra = f", {stats.get('CountStudies', '?')} studies stored" if stats else ""
            health_card("Orthanc", True, f"version {orthanc.version}, answered in {orthanc.latency_ms:.0f} ms{extra}")
        else:
            health_card("Orthanc", False, orthanc.error or "no answer")
    with cols[1]:
        if db_error is None:
            health_card("PostgreSQL", True, f"version {data['db']['version']}, answered in {data['db_ms']:.0f} ms")
        else:
            health_card("PostgreSQL", False, describe(db_error))
    stale_after = worker_stale_after(settings.poll_interval)
    with cols[2]:
        if db_error is not None:
            health_card("Workers", False, "unknown: the database is unreachable")
        else:
            workers = data["workers"]
            alive = [w for w in workers if w["age_s"] <= stale_after]
            owner = [w for w in alive if w["owns_cursor"]]
            if not workers:
                health_card("Workers", False, "no worker has ever reported a heartbeat")
            elif not alive:
                newest = min(w["age_s"] for w in workers)
                health_card("Workers", False, f"no heartbeat for {age(newest)} (limit {age(stale_after)})")
            else:
                lag = owner[0]["cursor_lag"] if owner else None
                detail = f"{len(alive)} of {len(workers)} alive; " + (
                    f"cursor owner {owner[0]['worker_id']}, lag {lag if lag is not None else '?'} change(s)"
                    if owner else "no live worker owns the /changes cursor"
                )
                health_card("Workers", True, detail, warn=not owner or len(alive) < len(workers))
    with cols[3]:
        storage = _storage_card(settings)
    if storage.status == "low":
        st.warning(storage.message, icon=":material/hard_drive:")

    if db_error is not None:
        show_error("Job and study figures are unavailable", db_error)
        return

    # --- issue 15: a refused routing.yml, and senders refused as AI results -----------------
    rules = data["rules"] or {}
    problem = rules_problem(rules.get("error"), rules.get("loaded_at"), zone, file_name=settings.routing_rules.name)
    if problem:
        st.error(f"degraded: {problem} (Rules page)", icon=":material/rule:")
    if data["rejected"]:
        st.subheader(f"Refused AI senders ({REJECTED_DAYS} days)")
        st.warning(
            "Series sent with an AI result AE title from an address other than the one registered for it. "
            "They are kept unrouted (see each study's timeline and the Audit page):\n\n"
            + "\n".join(f"- {r['text']} (last {local(r['last_at'], zone)} {settings.tz})" for r in data["rejected"]),
            icon=":material/gpp_bad:",
        )

    # --- held destinations: a PACS outage is not the hub failing, but its studies wait ----
    if data["held"]:
        st.subheader("Destinations on hold")
        hold_banners(data["held"], zone, now)

    # --- backlog ----------------------------------------------------------------------
    backlog = data["backlog"]
    st.subheader("Job backlog")
    cols = st.columns(6)
    with cols[0]:
        metric("Queued", backlog[JobState.QUEUED], "Jobs waiting for their first attempt or a manual retry.")
    with cols[1]:
        metric("Sending", backlog[JobState.SENDING], "Jobs Orthanc is sending now.")
    with cols[2]:
        metric("Waiting to retry", backlog[JobState.FAILED], "Jobs whose last attempt failed; retried automatically.")
    with cols[3]:
        metric("Due now", backlog["due_now"], "Queued or failed jobs whose next attempt time has passed.")
    with cols[4]:
        metric("Dead", backlog[JobState.DEAD], "Jobs out of attempts; they wait for an operator (Queue page).")
    with cols[5]:
        oldest = backlog["oldest_queued_at"]
        waited = (now - oldest).total_seconds() if oldest else None
        # one unit only: the longer "1 h 26 min" is cut off in a sixth of the page
        metric("Oldest queued job", short_age(waited) if oldest else "none",
               "Age of the oldest job in the queued state"
               + (f": {age(waited)}, queued at {local(oldest, zone)} {settings.tz}." if oldest else "."))

    # --- today -----------------------------------------------------------------------
    counts = data["today"]
    st.subheader(f"Today ({settings.tz}, since {today.strftime('%Y-%m-%d %H:%M')})")
    cols = st.columns(4)
    since = today.astimezone(UTC).isoformat()
    with cols[0]:
        metric("Studies received", counts["received"], "Studies whose first instance arrived today.")
        studies_link(counts["received"], {"received": today.date().isoformat()})
    with cols[1]:
        metric(f"Sent to {settings.ai_modality}", counts["ai_sent"], "Studies with a successful AI send today.")
        studies_link(counts["ai_sent"], {"event": EventType.AI_SENT, "since": since})
    with cols[2]:
        metric("AI results back", counts["ai_results"], "Studies with an AI result received today.")
        studies_link(counts["ai_results"], {"event": EventType.AI_RESULT_RECEIVED, "since": since})
    with cols[3]:
        metric("Delivered", counts["delivered"], "Studies with at least one successful delivery today.")
        studies_link(counts["delivered"], {"event": EventType.DELIVERED, "since": since})

    # --- failures ----------------------------------------------------------------------
    last24 = data["last24"]
    day_ago = (now - timedelta(hours=24)).isoformat()
    st.subheader("Failures")
    cols = st.columns(4)
    with cols[0]:
        metric("Failed attempts (24 h)", last24["failed_attempts"], "Send attempts that failed in the last 24 hours.")
        studies_link(last24["failed_attempt_studies"], {"event": EventType.DELIVERY_FAILED, "since": day_ago},
                     "studies with failed attempts")
    with cols[1]:
        metric("Jobs gone dead (24 h)", last24["dead_jobs"], "Jobs that ran out of attempts in the last 24 hours.")
        studies_link(last24["dead_job_studies"], {"event": EventType.DELIVERY_DEAD, "since": day_ago},
                     "studies with dead jobs")
    with cols[2]:
        metric("AI overdue studies", last24["ai_overdue"],
               f"Studies sent to the AI with no result after {age(settings.ai_result_timeout)} (now).")
        studies_link(last24["ai_overdue"], {"status": StudyStatus.AI_OVERDUE})
    with cols[3]:
        metric("Failed studies", last24["failed_studies"], "Studies with a dead job (now).")
        studies_link(last24["failed_studies"], {"status": StudyStatus.FAILED})

    _retention(data["retention"], settings)

    # --- workers -----------------------------------------------------------------------
    st.subheader("Workers")
    workers = data["workers"]
    if not workers:
        st.warning("No worker has reported a heartbeat: nothing is being routed.")
    else:
        for w in workers:
            w["state"] = "alive" if w["age_s"] <= stale_after else "DOWN"
            w["heartbeat_age"] = age(w["age_s"])
            w["orthanc"] = {True: "ok", False: "unreachable", None: "?"}[w["orthanc_ok"]]
        st.dataframe(
            table(workers, {
                "worker_id": "Worker", "state": "State", "heartbeat_age": "Heartbeat age",
                "owns_cursor": "Owns cursor", "cursor_lag": "Cursor lag (changes)", "orthanc": "Orthanc",
                "hostname": "Host", "pid": "PID", "started_at": f"Started ({settings.tz})",
            }, zone),
            hide_index=True, key="overview_workers",
        )
    st.caption(f"Rendered in {(time.perf_counter() - started) * 1000:.0f} ms.")


require_role(Role.VIEWER)
render()
