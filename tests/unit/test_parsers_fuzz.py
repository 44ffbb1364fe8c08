"""Fuzzing the parsers that read operator-written files: only clear, typed errors come out."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.dicom_names import parse_modality_line
from hub.envfile import EnvFileError, parse_env_text
from hub.settings import SettingsError, settings_from_values
from worker.rules import RulesError, parse_rules

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=30))
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
rule_like = st.fixed_dictionaries(
    {"name": st.text(max_size=20)},
    optional={
        "priority": st.integers(), "enabled": st.booleans(), "final": yaml_values,
        "when": st.fixed_dictionaries({}, optional={
            "kind": st.sampled_from(["original", "ai_result", "any", "bogus"]),
            "sender_aet": yaml_values,
            "all": st.lists(st.dictionaries(st.sampled_from(
                ["tag", "equals", "contains", "regex", "one_of", "gt", "exists", "ignore_case", "negate"]),
                yaml_values, max_size=4), max_size=3),
        }),
        "then": st.dictionaries(st.sampled_from(["send_to_ai", "deliver_to", "payload", "bogus"]), yaml_values),
    },
)


@FUZZ
@given(st.text(max_size=400))
def test_rules_parser_on_arbitrary_text(text):
    try:
        parse_rules(text)
    except RulesError as exc:
        assert str(exc).startswith("routing.yml")


@FUZZ
@given(st.fixed_dictionaries({"rules": st.lists(rule_like, max_size=4)}, optional={"version": yaml_values}))
def test_rules_parser_on_rule_shaped_documents(document):
    text = yaml.safe_dump(document)
    try:
        ruleset = parse_rules(text)
    except RulesError as exc:
        assert str(exc).startswith("routing.yml:")
        return
    for rule in ruleset.rules:  # whatever validated must also evaluate without crashing
        ruleset.plan([], "MERCURE")
        assert rule.then.send_to_ai or rule.then.deliver_to


@FUZZ
@given(st.text(alphabet=string.printable + "é\u00a0\u202e", max_size=300))
def test_env_parser_on_arbitrary_text(text):
    try:
        values = parse_env_text(text, ".env")
    except EnvFileError as exc:
        assert str(exc).startswith(".env:")
        return
    try:
        settings_from_values(values)
    except SettingsError as exc:
        assert str(exc).startswith("invalid configuration:")


@FUZZ
@given(st.text(max_size=20), st.text(max_size=80))
def test_modality_line_parser(name, value):
    try:
        modality = parse_modality_line(name, value)
    except ValueError as exc:
        assert str(exc)
        return
    assert 1 <= modality.port <= 65535 and 0 < len(modality.aet) <= 16 and "|" not in modality.host
