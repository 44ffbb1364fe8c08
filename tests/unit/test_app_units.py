"""Pure helpers of the operations app: lockout schedule, formatting, rule wording, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from app.components.destination_form import validate
from app.components.fmt import age, dicom_datetime, short_age
from app.components.rules_text import active_rules, checksum, describe_rule, write_atomically
from app.components.timeline import timeline_figure
from core import auth
from core.dicom_names import Modality
from core.queries import Stage, study_stages
from core.rules import parse_rules


def test_lockout_schedule_doubles_and_caps() -> None:
    assert auth.lockout_delay(auth.LOCKOUT_THRESHOLD - 1) is None
    assert auth.lockout_delay(auth.LOCKOUT_THRESHOLD) == timedelta(seconds=auth.LOCKOUT_BASE_S)
    assert auth.lockout_delay(auth.LOCKOUT_THRESHOLD + 1) == timedelta(seconds=2 * auth.LOCKOUT_BASE_S)
    assert auth.lockout_delay(50) == timedelta(seconds=auth.LOCKOUT_MAX_S)


def test_roles_are_ordered() -> None:
    assert auth.role_at_least("admin", "operator") and auth.role_at_least("operator", "operator")
    assert not auth.role_at_least("viewer", "operator") and not auth.role_at_least(None, "viewer")
    assert not auth.role_at_least("root", "viewer")


def test_passwords_round_trip_and_reject_garbage() -> None:
    hashed = auth.hash_password("correct horse battery", rounds=4)
    assert auth.verify_password("correct horse battery", hashed)
    assert not auth.verify_password("wrong horse battery", hashed)
    assert not auth.verify_password("anything", "not-a-bcrypt-hash")
    assert len(auth.generate_password()) >= 24


def test_formatting() -> None:
    assert [age(s) for s in (None, 5, 192, 7500, 97200)] == ["–", "5 s", "3 min 12 s", "2 h 5 min", "1 d 3 h"]
    assert [short_age(s) for s in (None, 5, 192, 7500, 97200)] == ["–", "5 s", "3 min", "2 h", "1 d"]
    assert [age(s) for s in (60, 1800, 3600, 3660, 86400, -90)] == ["1 min", "30 min", "1 h", "1 h 1 min", "1 d",
                                                                     "-1 min 30 s"]
    assert dicom_datetime("20261128", "034842.123") == "2026-11-28 03:48:42"
    assert dicom_datetime("20261128", None) == "2026-11-28"
    assert dicom_datetime(None, "1200") == "–"


def test_stages_follow_jobs_and_events() -> None:
    t0 = datetime(2026, 11, 28, 12, tzinfo=UTC)
    events = [{"type": "ai_sent", "at": t0 + timedelta(seconds=10)},
              {"type": "ai_result_received", "at": t0 + timedelta(seconds=70)}]
    jobs = [
        {"purpose": "ai", "state": "succeeded", "finished_at": t0 + timedelta(seconds=10)},
        {"purpose": "delivery", "state": "succeeded", "finished_at": t0 + timedelta(seconds=90)},
        {"purpose": "delivery", "state": "failed", "finished_at": None},
        {"purpose": "delivery", "state": "cancelled", "finished_at": None},
    ]
    stages = study_stages({"first_received_at": t0}, events, jobs, "MERCURE")
    assert [s.name for s in stages][1] == "Sent to MERCURE"
    assert stages[3] == Stage("Routed to Destinations", None, "1 of 2 delivery job(s) done")
    jobs[2]["state"], jobs[2]["finished_at"] = "succeeded", t0 + timedelta(seconds=120)
    assert study_stages({"first_received_at": t0}, events, jobs, "MERCURE")[3].at == t0 + timedelta(seconds=120)



def test_the_timeline_counts_only_stages_the_study_reaches_as_pending() -> None:
    """A study with no AI route, delivered, has reached all its stages; one with an AI route
    still waiting for the AI says so."""
    t0 = datetime(2026, 11, 28, 12, tzinfo=UTC)
    zone = ZoneInfo("America/Los_Angeles")
    delivered = [{"purpose": "delivery", "state": "succeeded", "finished_at": t0 + timedelta(seconds=30)}]
    direct = study_stages({"first_received_at": t0}, [], delivered, "MERCURE")
    assert [s.applies for s in direct] == [True, False, False, True]
    assert timeline_figure(direct, [], zone).layout.title.text == "All stages reached"
    to_ai = [{"purpose": "ai", "state": "queued", "finished_at": None}, *delivered]
    waiting = study_stages({"first_received_at": t0}, [], to_ai, "MERCURE")
    assert timeline_figure(waiting, [], zone).layout.title.text == "Pending: Sent to MERCURE, AI Results Back"


def test_destination_validation_names_each_bad_field() -> None:
    modality, errors = validate("PACS", "PACS_AE", "127.0.0.1", " 104 ")
    assert modality == Modality("PACS", "PACS_AE", "127.0.0.1", 104) and errors == {}
    modality, errors = validate("bad name", "X" * 17, "bad host!", "70000")
    assert modality is None
    assert set(errors) == {"name", "aet", "host", "port"}
    assert "at most 16" in errors["aet"] and "65535" in errors["port"]


def test_rules_read_as_sentences() -> None:
    rules = parse_rules(RULES, "test.yml")
    leg, qa = rules.rules
    assert describe_rule(leg, "MERCURE") == {
        "priority": 10, "name": "leg", "enabled": "yes",
        "when": 'original series and any of: StudyDescription contains "BONE LENGTH" (any case); '
                "SeriesNumber ≥ 1000",
        "then": "send originals to the AI (MERCURE)", "payload": "study", "final": "", "description": "",
    }
    assert describe_rule(qa, "MERCURE")["when"] == (
        'ai result series and sent by MERCURE and SeriesDescription does not contain "TABLE" and '
        "Modality is one of SR, OT and AccessionNumber is present")
    assert describe_rule(qa, "MERCURE")["then"] == "deliver to LPCHROUTER, MODLINK"
    content = [r.model_dump() for r in rules.rules]
    rebuilt = active_rules({"content": content})
    assert rebuilt is not None and [r.name for r in rebuilt.active()] == ["leg"]
    assert active_rules({"content": None}) is None and active_rules({"content": [{"bad": 1}]}) is None
    assert checksum("x") == checksum("x") != checksum("y")


def test_write_atomically_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "routing.yml"
    path.write_text("old")
    path.chmod(0o640)
    write_atomically(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["routing.yml"]


RULES = """
version: 1
rules:
  - name: leg
    priority: 10
    when:
      kind: original
      any:
        - {tag: StudyDescription, contains: BONE LENGTH, ignore_case: true}
        - {tag: SeriesNumber, ge: 1000}
    then: {send_to_ai: true, payload: study}
  - name: qa
    enabled: false
    when:
      kind: ai_result
      sender_aet: MERCURE
      all:
        - {tag: SeriesDescription, contains: TABLE, negate: true}
        - {tag: Modality, one_of: [SR, OT]}
        - {tag: AccessionNumber, exists: true}
    then: {deliver_to: [LPCHROUTER, MODLINK]}
"""
