"""Retention's verdict on one study (core/retention.decide), its settings and the rules' keep_days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.retention import Facts, Policy, decide
from core.rules import RulesError, parse_rules
from core.settings import SettingsError, settings_from_values

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
ZONE = ZoneInfo("UTC")


def facts(**changes: object) -> Facts:
    base = dict(study=1, orthanc_id="abc", accession="ACC1", received_at=NOW - timedelta(days=20),
                touched_at=NOW - timedelta(days=10), delivered_at=NOW - timedelta(days=10), open_jobs=0,
                open_job=None, open_state=None, ai_pending=False, rules=("routine",))
    return Facts(**{**base, **changes})  # type: ignore[arg-type]


def policy(days: int = 7, low: int = 0, **keep: int) -> Policy:
    return Policy(days, low, low * 2, 50, "MERCURE", {k.replace("_", "-"): v for k, v in keep.items()})


@pytest.mark.parametrize(("changes", "category", "words"), [
    ({"open_jobs": 2, "open_job": 7, "open_state": "dead"}, "job not final", "job #7 is dead (and 1 more)"),
    ({"ai_pending": True}, "AI result pending", "AI result pending from MERCURE"),
    ({"touched_at": NOW - timedelta(minutes=59)}, "touched in the last hour", "touched 59 min ago"),
    ({"delivered_at": None}, "never delivered", "never delivered"),
    ({"orthanc_id": None}, "no Orthanc id", "no Orthanc id"),
])
def test_the_guards_keep_a_study_whatever_the_policy(changes: dict, category: str, words: str) -> None:
    verdict = decide(facts(**changes), policy(days=1, low=10**9), NOW, ZONE)
    assert (verdict.action, verdict.category) == ("keep", category) and words in verdict.reason


def test_days_after_the_last_delivery() -> None:
    assert decide(facts(), policy(days=7), NOW, ZONE).action == "days"
    kept = decide(facts(), policy(days=11), NOW, ZONE)
    assert kept.action == "keep" and "kept until 2026-12-11 (RETENTION_DAYS_AFTER_DELIVERY 11)" in kept.reason
    off = decide(facts(), policy(days=0), NOW, ZONE)
    assert off.action == "keep" and "no deletion by age" in off.reason
    assert decide(facts(), policy(days=0, low=100), NOW, ZONE).action == "disk"


def test_a_rule_keep_days_overrides_and_the_longest_keep_wins() -> None:
    assert decide(facts(), policy(days=30, routine=5), NOW, ZONE).action == "days", "the rule shortens"
    kept = decide(facts(), policy(days=7, routine=30, low=100), NOW, ZONE)
    assert kept.action == "keep" and kept.reason.startswith("kept by rule routine (keep_days 30) until 2026-12-30")
    both = facts(rules=("routine", "other"))  # `other` has no keep_days: the global value counts for it
    assert decide(both, policy(days=12, routine=5), NOW, ZONE).action == "keep"
    assert decide(both, policy(days=0, routine=5), NOW, ZONE).action == "keep", "global off: kept for ever"
    assert decide(facts(), policy(days=0, routine=9), NOW, ZONE).action == "days", "a rule alone turns days on"
    due = decide(facts(delivered_at=NOW - timedelta(days=31)), policy(days=7, routine=30), NOW, ZONE)
    assert due.action == "days" and "rule routine keep_days 30" in due.reason


def test_settings_are_validated(hub_values: dict[str, str]) -> None:
    ok = settings_from_values({**hub_values, "RETENTION_DAYS_AFTER_DELIVERY": "", "RETENTION_DISK_LOW_MB": ""})
    assert (ok.retention_days_after_delivery, ok.retention_disk_low_mb) == (0, 0), "empty is off"
    for bad, message in [({"RETENTION_DISK_LOW_MB": "100", "RETENTION_DISK_HIGH_MB": "100"}, "must be larger"),
                         ({"RETENTION_DISK_HIGH_MB": "100"}, "RETENTION_DISK_LOW_MB: set it too"),
                         ({"RETENTION_DAYS_AFTER_DELIVERY": "-1"}, "RETENTION_DAYS_AFTER_DELIVERY"),
                         ({"RETENTION_BATCH": "0"}, "RETENTION_BATCH"),
                         ({"RETENTION_CHECK_S": "soon"}, "RETENTION_CHECK_S")]:
        with pytest.raises(SettingsError, match=message):
            settings_from_values({**hub_values, **bad})


def test_keep_days_in_routing_yml() -> None:
    rules = parse_rules("rules:\n  - name: ai\n    keep_days: 30\n    then: {send_to_ai: true}\n")
    assert rules.rules[0].keep_days == 30
    with pytest.raises(RulesError, match=r"routing.yml:3: rules.0.keep_days: Input should be greater than or equal"):
        parse_rules("rules:\n  - name: ai\n    keep_days: 0\n    then: {send_to_ai: true}\n")
