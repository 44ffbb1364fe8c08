"""Rules: the routing rules the worker runs, a dry run on a real study, and the editor.

What is shown as "active" is what the worker reported in config_status (it writes the
parsed rules on every good reload, and the error of every refused one), not merely
what the file says. The editor validates with the worker's own parser before it
writes, writes atomically, and the worker picks the change up by hot reload.
"""

from __future__ import annotations

import difflib
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components.access import can, require_role
from app.components.db import reading, show_error, writing
from app.components.fmt import local, table
from app.components.rules_text import active_rules, checksum, describe_rule, write_atomically
from app.context import get_orthanc, get_settings
from core import queries
from core.orthanc_client import OrthancError
from core.recorder import audit
from core.rules import RulesError, RuleSet, SeriesFacts, parse_rules, series_tags
from core.settings import Settings
from core.states import AuditSource, Role

STATUS_NAME = "routing_rules"
FLASH_KEY = "rules_flash"
EDITOR_BASE_KEY = "rules_editor_base"


def _status(settings: Settings, status: dict[str, Any] | None, file_text: str | None) -> None:
    zone = settings.zone
    if status is None or status.get("loaded_at") is None:
        st.warning("The worker has not reported loading any rules yet (is it running?).")
    else:
        st.markdown(f"**Last reload:** {local(status['loaded_at'], zone)} {settings.tz} · "
                    f"checksum `{(status['checksum'] or '')[:12]}`")
    if status and status.get("error"):
        st.error(f"The worker refused the rules file at {local(status['error_at'], zone)} {settings.tz} and keeps "
                 f"the last good rules:\n\n```\n{status['error']}\n```")
    if file_text is None:
        st.warning(f"The rules file {settings.routing_rules} cannot be read here.")
    elif status and status.get("checksum") and checksum(file_text) != status["checksum"]:
        st.info("The file on disk differs from the active rules: the worker has not loaded it yet, or refused it.")


def _facts(series: list[dict[str, Any]], study: dict[str, Any]) -> tuple[list[SeriesFacts], str]:
    """Series facts as the worker builds them, from Orthanc's tags when the study is there."""
    facts, source = [], "Orthanc"
    client = get_orthanc()
    orthanc_study: dict[str, Any] | None = None
    for s in series:
        tags: dict[str, str] | None = None
        if s["orthanc_id"]:
            try:
                if orthanc_study is None:
                    orthanc_study = client.study(client.series(s["orthanc_id"])["ParentStudy"])
                tags = series_tags(client, s["orthanc_id"], orthanc_study)
            except OrthancError:
                tags = None
        if tags is None:
            source = "the database (the study is not in Orthanc: conditions on other tags cannot match)"
            tags = {k: v for k, v in {
                "StudyInstanceUID": study["study_uid"], "AccessionNumber": study["accession_number"],
                "StudyDescription": study["description"], "SeriesInstanceUID": s["series_uid"],
                "SeriesDescription": s["description"], "Modality": s["modality"],
                "SeriesNumber": s["series_number"],
            }.items() if v is not None}
        facts.append(SeriesFacts(str(s["id"]), s["kind"], s["sender_aet"], tags))
    return facts, source


def _dry_run(settings: Settings, active: RuleSet | None, draft: RuleSet | None) -> None:
    st.subheader("Dry run")
    st.caption("Pick a study and see which rules match each series and what would be sent where. Nothing is sent.")
    try:
        with reading() as conn:
            recent = queries.recent_studies(conn, 100)
    except SQLAlchemyError as exc:
        show_error("Studies cannot be listed", exc)
        return
    choices = {r["id"]: r for r in recent}
    cols = st.columns([3, 1, 2])
    picked = cols[0].selectbox(
        "Study (newest 100)", [None, *choices], key="dry_study",
        format_func=lambda i: "choose…" if i is None else
        f"#{i} · {choices[i]['accession_number'] or '–'} · {choices[i]['description'] or ''}",
    )
    typed = cols[1].text_input("or study #", key="dry_study_id")
    sources = {"active": "active rules"} | ({"draft": "editor draft"} if draft is not None else {})
    which = cols[2].radio("Rules", list(sources), format_func=sources.__getitem__, horizontal=True, key="dry_rules")
    only_new = st.checkbox("Only series not routed yet (what the worker would do now)", key="dry_only_new")
    typed_id = queries.study_number(typed)
    study_id = picked if typed_id is None else typed_id
    if study_id is None:
        return
    rules = draft if which == "draft" else active
    if rules is None:
        st.warning("There are no rules to run.")
        return
    try:
        with reading() as conn:
            study = queries.get_study(conn, study_id)
            series = queries.study_series(conn, study_id) if study else []
    except SQLAlchemyError as exc:
        show_error("The study cannot be read", exc)
        return
    if study is None:
        st.warning(f"Study #{study_id} does not exist.")
        return
    if only_new:
        series = [s for s in series if s["routed_at"] is None]
    if not series:
        st.info("This study has no series to route.")
        return
    facts, source = _facts(series, study)
    by_key = {str(s["id"]): s for s in series}
    st.caption(f"Tags read from {source}.")
    matches = [{
        "series": f"{by_key[f.key]['description'] or ''} ({f.kind}, {f.sender_aet or '?'})",
        "rules": ", ".join(r.name for r in rules.active() if rules.matches(r, f)) or "none",
    } for f in facts]
    st.dataframe(table(matches, {"series": "Series", "rules": "Matching rules"}, settings.zone),
                 hide_index=True, key="dry_matches")
    plan = rules.plan(facts, settings.ai_modality)
    if not plan:
        st.info("No rule matches: the study would be marked unrouted.")
        return
    st.dataframe(table([{
        "destination": p.destination, "purpose": p.purpose, "payload": p.payload, "rules": ", ".join(p.rules),
        "series": "; ".join(by_key[k]["description"] or by_key[k]["series_uid"] for k in p.series_keys),
    } for p in plan], {"destination": "Destination", "purpose": "Purpose", "payload": "Payload",
                       "rules": "Rules", "series": "Series sent"}, settings.zone),
        hide_index=True, key="dry_plan")


def _draft_diff(settings: Settings, file_text: str, draft_text: str) -> None:
    """What Save would change: the draft against the file the worker reads, as a unified diff."""
    name = settings.routing_rules.name
    diff = "".join(difflib.unified_diff(file_text.splitlines(True), draft_text.splitlines(True),
                                        f"{name} (active file)", f"{name} (your draft)"))
    st.markdown("**Changes against the active file**")
    if not diff:
        st.caption("None yet: the draft is the file as it is on disk.")
        return
    st.code(diff, language="diff", wrap_lines=True)


def _editor(settings: Settings, user: dict[str, Any], file_text: str | None) -> RuleSet | None:
    """The admin's editor; returns the draft's RuleSet when the draft is valid."""
    st.subheader("Edit the rules")
    if not can(Role.ADMIN):
        st.caption("Editing the rules needs the admin role.")
        return None
    if file_text is None:
        return None
    if st.session_state.get(EDITOR_BASE_KEY) is None:
        st.session_state[EDITOR_BASE_KEY] = file_text
    base = st.session_state[EDITOR_BASE_KEY]
    draft_text = st.text_area(f"{settings.routing_rules.name}", value=base, height=420, key="rules_draft")
    draft: RuleSet | None = None
    try:
        draft = parse_rules(draft_text, settings.routing_rules.name)
    except RulesError as exc:
        st.error(f"Not valid, so it cannot be saved:\n\n```\n{exc}\n```")
    else:
        st.success(f"Valid: {len(draft.rules)} rule(s), {len(draft.active())} enabled.")
    _draft_diff(settings, file_text, draft_text)
    cols = st.columns([1, 1, 4])
    save = cols[0].button("Save", key="rules_save", type="primary", disabled=draft is None or draft_text == file_text)
    if cols[1].button("Discard edits", key="rules_reload"):
        st.session_state.pop(EDITOR_BASE_KEY, None)
        st.session_state.pop("rules_draft", None)
        st.rerun()
    if save and can(Role.ADMIN) and draft is not None:
        current = settings.routing_rules.read_text(encoding="utf-8")
        if checksum(current) != checksum(base):
            st.error("The file changed on disk since you opened it. Discard your edits to load the new version.")
            return draft
        diff = "".join(difflib.unified_diff(current.splitlines(True), draft_text.splitlines(True),
                                            "before", "after"))
        try:
            write_atomically(settings.routing_rules, draft_text)
        except OSError as exc:
            st.error(f"The file could not be written: {exc.strerror or exc}")
            return draft
        try:
            with writing() as conn:
                audit(conn, actor=user["username"], source=AuditSource.UI, action="rules.save",
                      target=f"rules:{settings.routing_rules.name}",
                      before={"checksum": checksum(current)},
                      after={"checksum": checksum(draft_text), "rules": len(draft.rules), "diff": diff[:20000]})
        except SQLAlchemyError as exc:
            show_error("The rules were saved but the change could not be audited", exc)
            return draft
        st.session_state[FLASH_KEY] = "Saved. The worker reloads the file by itself; the status above shows when."
        st.session_state.pop(EDITOR_BASE_KEY, None)
        st.session_state.pop("rules_draft", None)
        st.rerun()
    return draft


def render(user: dict[str, Any]) -> None:
    settings = get_settings()
    st.title("Rules")
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(flash)
    try:
        with reading() as conn:
            status = queries.config_status(conn, STATUS_NAME)
    except SQLAlchemyError as exc:
        show_error("The rules status is unavailable", exc)
        status = None
    try:
        file_text: str | None = settings.routing_rules.read_text(encoding="utf-8")
    except OSError:
        file_text = None
    _status(settings, status, file_text)
    active = active_rules(status)
    st.subheader("Active rules")
    if active is None:
        st.info("No active rules are recorded.")
    else:
        st.dataframe(table(
            [describe_rule(r, settings.ai_modality) for r in sorted(active.rules, key=lambda r: (r.priority, r.name))],
            {"priority": "Priority", "name": "Rule", "enabled": "Enabled", "when": "When a series is",
             "then": "Then", "payload": "Payload", "final": "Final", "description": "Description"},
            settings.zone,
        ), hide_index=True, key="rules_table")
    draft = _editor(settings, user, file_text)
    _dry_run(settings, active, draft)


render(require_role(Role.VIEWER))
