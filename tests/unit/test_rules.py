"""routing.yml: schema validation with line numbers, conditions, and the routing plan."""

from __future__ import annotations

import random

import pytest

from core.rules import Condition, RulesError, SeriesFacts, parse_rules
from core.settings import PROJECT_ROOT
from worker.dispatcher import backoff_delay


def series(key: str, kind: str = "original", sender: str = "CT1", **tags: str) -> SeriesFacts:
    return SeriesFacts(key, kind, sender, tags)


def plan(text: str, facts: list[SeriesFacts], ai: str = "MERCURE") -> list[tuple]:
    return sorted(
        (p.destination, p.purpose, p.series_keys, p.rules) for p in parse_rules(text).plan(facts, ai)
    )


# --- the shipped rules reproduce the seed deployment's intent ------------------------

SHIPPED = (PROJECT_ROOT / "config" / "routing.example.yml").read_text()


@pytest.mark.parametrize("description", [
    "XR EXTREMITY BILATERAL BONE LENGTH", "xr extremity bilateral bone length", "BONE LENGTH STUDY", "Bone Length",
])
def test_shipped_rules_send_leg_length_originals_to_ai(description):
    facts = [series("s1", StudyDescription=description), series("s2", StudyDescription=description)]
    assert plan(SHIPPED, facts) == [("MERCURE", "ai", ("s1", "s2"), ("leg-length-to-ai",))]


def test_shipped_rules_ignore_other_studies():
    assert plan(SHIPPED, [series("s1", StudyDescription="CT HEAD")]) == []


def test_shipped_rules_route_ai_results():
    facts = [
        series("qa", "ai_result", "MERCURE", SeriesDescription="QA Visualization", Modality="OT"),
        series("table", "ai_result", "MERCURE", SeriesDescription="QA VISUALIZATION TABLE", Modality="OT"),
        series("sr", "ai_result", "MERCURE", SeriesDescription="AI REPORT", Modality="SR"),
    ]
    assert plan(SHIPPED, facts) == [
        ("LPCHROUTER", "delivery", ("qa",), ("ai-qa-visualization-to-routers",)),
        ("LPCHTROUTER", "delivery", ("qa",), ("ai-qa-visualization-to-routers",)),
        ("MODLINK", "delivery", ("sr",), ("ai-sr-to-modlink",)),
    ]


def test_ai_results_never_go_back_to_the_ai():
    text = "rules:\n  - name: all\n    then: {send_to_ai: true, payload: study}\n"
    facts = [series("o"), series("r", "ai_result", "MERCURE")]
    assert plan(text, facts) == [("MERCURE", "ai", ("o",), ("all",))]


def test_a_spoofed_ai_description_from_a_modality_is_still_an_original():
    # Kind comes from the sender AET (set by the worker), not from tags.
    facts = [series("fake", "original", "CT1", SeriesDescription="QA VISUALIZATION", Modality="SR")]
    assert plan(SHIPPED, facts) == []


# --- conditions -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("condition", "tags", "expected"),
    [
        ({"tag": "Modality", "equals": "CT"}, {"Modality": "CT"}, True),
        ({"tag": "Modality", "equals": "CT"}, {"Modality": "ct"}, False),
        ({"tag": "Modality", "equals": "CT", "ignore_case": True}, {"Modality": "ct"}, True),
        ({"tag": "StudyDescription", "contains": ["LEG", "KNEE"]}, {"StudyDescription": "XR KNEE"}, True),
        ({"tag": "StudyDescription", "regex": "^XR\\s+L"}, {"StudyDescription": "XR LEG"}, True),
        ({"tag": "StudyDescription", "regex": "^xr", "ignore_case": True}, {"StudyDescription": "XR LEG"}, True),
        ({"tag": "BodyPartExamined", "one_of": ["LEG", "KNEE"]}, {"BodyPartExamined": "KNEE"}, True),
        ({"tag": "BodyPartExamined", "one_of": ["LEG"]}, {"BodyPartExamined": "KNEE"}, False),
        ({"tag": "SeriesNumber", "ge": 1000}, {"SeriesNumber": "1000"}, True),
        ({"tag": "SeriesNumber", "gt": 1000}, {"SeriesNumber": "1000"}, False),
        ({"tag": "SeriesNumber", "lt": 5}, {"SeriesNumber": "4"}, True),
        ({"tag": "SeriesNumber", "le": 5}, {"SeriesNumber": "not a number"}, False),
        ({"tag": "AccessionNumber", "exists": True}, {"AccessionNumber": ""}, False),
        ({"tag": "AccessionNumber", "exists": False}, {}, True),
        ({"tag": "Modality", "equals": "CT", "negate": True}, {"Modality": "MR"}, True),
        ({"tag": "Modality", "equals": "CT"}, {}, False),
    ],
)
def test_condition_operators(condition, tags, expected):
    assert Condition.model_validate(condition).test(tags) is expected


def test_sender_aet_and_priority_and_final():
    text = """
rules:
  - name: late
    priority: 50
    then: {deliver_to: [B]}
  - name: first
    priority: 1
    final: true
    when: {sender_aet: CT1}
    then: {deliver_to: [A]}
"""
    facts = [series("x", sender="CT1"), series("y", sender="MR1")]
    assert plan(text, facts) == [("A", "delivery", ("x",), ("first",)), ("B", "delivery", ("y",), ("late",))]


def test_disabled_rules_do_nothing():
    text = "rules:\n  - name: switched-off\n    enabled: false\n    then: {deliver_to: [A]}\n"
    assert plan(text, [series("x")]) == []


def test_rules_for_one_destination_merge_into_one_job():
    text = """
rules:
  - name: a
    when: {all: [{tag: Modality, equals: CT}]}
    then: {deliver_to: [PACS]}
  - name: b
    when: {all: [{tag: Modality, equals: SR}]}
    then: {deliver_to: [PACS]}
"""
    facts = [series("ct", Modality="CT"), series("sr", Modality="SR"), series("mr", Modality="MR")]
    assert plan(text, facts) == [("PACS", "delivery", ("ct", "sr"), ("a", "b"))]


def test_payload_ai_results_takes_every_ai_series():
    text = """
rules:
  - name: r
    when: {kind: ai_result, all: [{tag: Modality, equals: SR}]}
    then: {deliver_to: [PACS], payload: ai_results}
"""
    facts = [series("o"), series("sr", "ai_result", Modality="SR"), series("ot", "ai_result", Modality="OT")]
    assert plan(text, facts) == [("PACS", "delivery", ("sr", "ot"), ("r",))]


# --- validation errors name the line and the problem ------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  - name: x\n    then: {deliver_to: [A]\n", "while parsing a flow mapping at line 3"),
        ("- just a list\n", "routing.yml:1: the file must be a mapping"),
        ("rules:\n  - name: x\n    when:\n      kind: bogus\n    then: {deliver_to: [A]}\n",
         "routing.yml:4: rules.0.when.kind: Input should be 'original', 'ai_result' or 'any'"),
        ("rules:\n  - name: x\n    then: {}\n", "routing.yml:3: rules.0.then: a rule must send_to_ai or deliver_to"),
        ("rules:\n  - name: x\n    when:\n      all:\n        - {tag: NotATag, equals: A}\n    then: {deliver_to: [A]}\n",
         "routing.yml:5: rules.0.when.all.0.tag: 'NotATag' is not a DICOM keyword"),
        ("rules:\n  - name: x\n    when:\n      all:\n        - {tag: Modality, regex: '('}\n    then: {deliver_to: [A]}\n",
         "does not compile"),
        ("rules:\n  - name: x\n    when:\n      all:\n        - {tag: Modality, equals: A, contains: B}\n"
         "    then: {deliver_to: [A]}\n", "give exactly one of"),
        ("rules:\n  - name: x\n    then: {deliver_to: ['bad name']}\n", "a destination name holds letters"),
        ("rules:\n  - name: x\n    then: {deliver_to: [A]}\n  - name: x\n    then: {deliver_to: [B]}\n",
         "rule name 'x' is used twice"),
        ("rules:\n  - name: x\n    colour: red\n    then: {deliver_to: [A]}\n", "routing.yml:3: rules.0.colour: unknown key"),
    ],
)
def test_invalid_files_are_refused_with_line_and_problem(text, expected):
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert expected in str(info.value)


# --- retry backoff -----------------------------------------------------------------------

def test_backoff_grows_exponentially_with_jitter_and_cap():
    rng = random.Random(7)
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (4, 80), (10, 300)):
        delays = [backoff_delay(attempt, 10, 300, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # really jittered


# --- batching of claimed jobs ---------------------------------------------------------------

def test_batches_group_first_sends_by_destination_and_isolate_retries():
    from worker.dispatcher import ClaimedJob, make_batches

    def job(i: int, dest: str = "A", oj: str | None = None, attempts: int = 0) -> ClaimedJob:
        return ClaimedJob(i, i, dest, "delivery", oj, attempts)

    jobs = [job(1), job(2), job(3, "B"), job(4), job(5, attempts=2), job(6, oj="x", attempts=1), job(7, oj="x")]
    batches = [[j.id for j in b] for b in make_batches(jobs, 2)]
    assert sorted(batches) == [[1, 2], [3], [4], [5], [6, 7]]


def test_ai_sends_go_one_study_per_store_job():
    from worker.dispatcher import ClaimedJob, make_batches

    jobs = [ClaimedJob(i, i, "MERCURE", "ai", None, 0) for i in range(1, 4)]
    assert [[j.id for j in b] for b in make_batches(jobs, 10)] == [[1], [2], [3]]


def test_yaml_spellings_of_kind_and_payload_are_the_enum_values():
    """When.kind and Then.payload stay Literals (their error messages), but spell core.states' values."""
    from typing import get_args

    from core.rules import Then, When
    from core.states import Payload, SeriesKind

    kinds = set(get_args(When.model_fields["kind"].annotation)) - {"any"}
    assert kinds == {SeriesKind.ORIGINAL, SeriesKind.AI_RESULT}  # a `rejected` series is never routed
    assert set(get_args(Then.model_fields["payload"].annotation)) == set(Payload)
