"""Fuzzing the parsers that read operator-written files: only clear, typed errors come out."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.dicom_names import MODALITY_NAME_RE, Modality, parse_modality_line
from core.envfile import EnvFileError, parse_env_text
from core.rules import RulesError, SeriesFacts, parse_rules
from core.settings import SettingsError, settings_from_values

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
# Series as hostile senders make them: any text in the tags the rules test, odd kinds and AETs.
TAGS = ["StudyDescription", "SeriesDescription", "Modality", "SeriesNumber", "AccessionNumber", "BodyPartExamined"]
series_facts = st.lists(st.builds(
    SeriesFacts, key=st.uuids().map(str), kind=st.sampled_from(["original", "ai_result"]),
    sender_aet=st.none() | st.text(max_size=16),
    tags=st.dictionaries(st.sampled_from(TAGS), st.text(max_size=40) | st.integers().map(str), max_size=6),
), max_size=4)


@FUZZ
@given(st.text(max_size=400))
def test_rules_parser_on_arbitrary_text(text):
    try:
        parse_rules(text)
    except RulesError as exc:
        assert str(exc).startswith("routing.yml")


@FUZZ
@given(st.fixed_dictionaries({"rules": st.lists(rule_like, max_size=4)}, optional={"version": yaml_values}),
       series_facts)
def test_rules_parser_on_rule_shaped_documents(document, series):
    text = yaml.safe_dump(document)
    try:
        ruleset = parse_rules(text)
    except RulesError as exc:
        assert str(exc).startswith("routing.yml:")
        return
    for rule in ruleset.rules:
        assert rule.then.send_to_ai or rule.then.deliver_to
    # Whatever validated must also evaluate, on any series, without crashing, and only
    # ever plan series it was given.
    keys = {s.key for s in series}
    for job in ruleset.plan(series, "MERCURE"):
        assert set(job.series_keys) <= keys


@FUZZ
@given(series_facts)
def test_shipped_rules_evaluate_any_series(series):
    from core.settings import PROJECT_ROOT

    ruleset = parse_rules((PROJECT_ROOT / "config" / "routing.example.yml").read_text())
    keys = {s.key for s in series}
    for job in ruleset.plan(series, "MERCURE"):
        assert set(job.series_keys) <= keys


@FUZZ
@given(st.text(alphabet=string.printable + "é\u00a0\u202e\x00\u2028", max_size=300))
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


def _valid_modality(modality: Modality) -> None:
    """What every accepted destination must be, whatever text it came from."""
    assert MODALITY_NAME_RE.fullmatch(modality.name) and "\n" not in modality.name
    assert 0 < len(modality.aet) <= 16 and modality.aet == modality.aet.strip()
    assert all(c.isascii() and c.isprintable() and c != "\\" for c in modality.aet)
    assert modality.host and all(c.isascii() and c.isprintable() and not c.isspace() for c in modality.host)
    assert 1 <= modality.port <= 65535


# Names and values near the valid ones, so that the accepting paths get exercised too.
near_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,8}\n?", fullmatch=True) | st.text(max_size=20)
near_line = st.tuples(
    st.from_regex(r"[A-Z][A-Z0-9_ ]{0,16}", fullmatch=True) | st.text(max_size=20),
    st.sampled_from(["127.0.0.1", "pacs.example", "::1", "-bad-", "pacs.example\n", " pacs", "a..b"]),
    st.integers(-5, 70000).map(str) | st.sampled_from(["", "²", "0x68", " 104"]),
).map("|".join)


@FUZZ
@given(near_name, near_line | st.text(max_size=80))
def test_modality_line_parser(name, value):
    try:
        modality = parse_modality_line(name, value)
    except ValueError as exc:
        assert str(exc)
        return
    assert modality.name == name
    _valid_modality(modality)


@FUZZ
@given(st.lists(st.tuples(near_name.filter(lambda n: "=" not in n and "\n" not in n and n.strip() == n),
                          near_line), max_size=4))
def test_env_modality_lines(lines):
    """MODALITY_ lines inside a whole .env: a clear error, or only valid destinations."""
    text = "".join(f"MODALITY_{name}={value}\n" for name, value in lines)
    try:
        settings = settings_from_values(parse_env_text(text, ".env"))
    except EnvFileError as exc:
        assert str(exc).startswith(".env:")
        return
    except SettingsError as exc:
        assert str(exc).startswith("invalid configuration:")
        return
    for modality in settings.modalities.values():
        _valid_modality(modality)
