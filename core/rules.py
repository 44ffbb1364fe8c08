"""Routing rules: the `routing.yml` schema, its validation, and its evaluation.

Rules are evaluated when a study becomes stable, once per series that has not been
routed yet, so a study that gains series later routes only the new ones. A rule
selects series by conditions on DICOM tags (study and series level), the series
kind and the sender AET, then says where the selection goes. The file format is
documented in config/routing.yml itself.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import tag_for_keyword

from core.dicom_names import check_modality_name
from core.orthanc_client import OrthancClient
from core.states import Payload, Purpose, SeriesKind

_NUMERIC = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
OPERATORS = ("equals", "contains", "regex", "one_of", "gt", "ge", "lt", "le", "exists")


class RulesError(ValueError):
    """The rules file is invalid; the message names the line and the problem."""


class Condition(BaseModel):
    """One test on one DICOM tag. Exactly one operator is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str
    equals: str | None = None
    contains: str | list[str] | None = None
    regex: str | None = None
    one_of: list[str] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    exists: bool | None = None
    ignore_case: bool = False
    negate: bool = False

    @field_validator("tag")
    @classmethod
    def _keyword(cls, value: str) -> str:
        if tag_for_keyword(value) is None:
            raise ValueError(f"{value!r} is not a DICOM keyword (for example StudyDescription)")
        return value

    @field_validator("equals", "regex", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        given = [op for op in OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(OPERATORS)} (got {', '.join(given) or 'none'})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self

    def test(self, tags: dict[str, str]) -> bool:
        return self._raw(tags) != self.negate

    def _raw(self, tags: dict[str, str]) -> bool:
        value = tags.get(self.tag)
        if self.exists is not None:
            return (value not in (None, "")) == self.exists
        if value is None:
            return False
        fold = (lambda s: s.casefold()) if self.ignore_case else (lambda s: s)
        if self.equals is not None:
            return fold(value.strip()) == fold(self.equals)
        if self.contains is not None:
            needles = [self.contains] if isinstance(self.contains, str) else self.contains
            return any(fold(n) in fold(value) for n in needles)
        if self.regex is not None:
            return re.search(self.regex, value, re.IGNORECASE if self.ignore_case else 0) is not None
        if self.one_of is not None:
            return fold(value.strip()) in {fold(v) for v in self.one_of}
        try:
            number = float(value)
        except ValueError:
            return False
        for op, compare in _NUMERIC.items():
            bound = getattr(self, op)
            if bound is not None:
                return compare(number, bound)
        return False


class When(BaseModel):
    """What a series must be for the rule to select it (all parts must hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # kind and Then.payload spell SeriesKind (plus "any") and Payload values in routing.yml. They
    # stay Literals so that its error messages list them in this order (tests/unit/test_rules.py).
    kind: Literal["original", "ai_result", "any"] = "any"
    sender_aet: list[str] | None = None
    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)

    @field_validator("sender_aet", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Then(BaseModel):
    """Where the selected series go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    send_to_ai: bool = False
    deliver_to: list[str] = Field(default_factory=list)
    payload: Literal["matched", "study", "ai_results"] = "matched"

    @field_validator("deliver_to", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("deliver_to")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [check_modality_name(v) for v in value]

    @model_validator(mode="after")
    def _something(self) -> Then:
        if not self.send_to_ai and not self.deliver_to:
            raise ValueError("a rule must send_to_ai or deliver_to at least one destination")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    priority: int = 100
    enabled: bool = True
    final: bool = False
    description: str = ""
    # Retention (core/retention.py): days after delivery the studies this rule routed stay in
    # Orthanc, in place of RETENTION_DAYS_AFTER_DELIVERY; the disk watermark spares them meanwhile.
    keep_days: int | None = Field(default=None, ge=1, le=36500)
    when: When = Field(default_factory=When)
    then: Then


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


@dataclass(frozen=True)
class SeriesFacts:
    """What rules see of one series: its key, kind, sender and merged study+series tags."""

    key: str
    kind: str
    sender_aet: str | None
    tags: dict[str, str]


@dataclass(frozen=True)
class PlannedJob:
    """One job the rules ask for: series keys to one destination, for the AI or delivery."""

    destination: str
    purpose: Purpose
    payload: Payload
    rules: tuple[str, ...]
    series_keys: tuple[str, ...]


@dataclass
class RuleSet:
    """A validated, priority-ordered set of rules."""

    rules: list[Rule] = field(default_factory=list)

    def active(self) -> list[Rule]:
        return sorted((r for r in self.rules if r.enabled), key=lambda r: (r.priority, r.name))

    def tags_tested(self) -> frozenset[str]:
        """The DICOM keywords the active rules' conditions read."""
        return frozenset(c.tag for r in self.active() for c in (*r.when.all, *r.when.any))

    def matches(self, rule: Rule, series: SeriesFacts) -> bool:
        when = rule.when
        if when.kind != "any" and series.kind != when.kind:
            return False
        if when.sender_aet is not None and (series.sender_aet or "") not in when.sender_aet:
            return False
        if not all(c.test(series.tags) for c in when.all):
            return False
        return not when.any or any(c.test(series.tags) for c in when.any)

    def plan(self, series: Sequence[SeriesFacts], ai_modality: str) -> list[PlannedJob]:
        """Decide the jobs for `series` (the study's not-yet-routed series).

        One job per (destination, purpose): rules that target the same destination
        merge their selections. Only originals ever go to the AI node, so AI results
        can never loop back to it.
        """
        selected: dict[tuple[str, Purpose], tuple[set[str], list[str], Payload]] = {}
        finished: set[str] = set()
        for rule in self.active():
            hits = [s for s in series if s.key not in finished and self.matches(rule, s)]
            if not hits:
                continue
            payload = Payload(rule.then.payload)
            if payload is Payload.STUDY:
                chosen = list(series)
            elif payload is Payload.AI_RESULTS:
                chosen = [s for s in series if s.kind == SeriesKind.AI_RESULT]
            else:
                chosen = hits
            targets: list[tuple[str, Purpose, list[SeriesFacts]]] = []
            if rule.then.send_to_ai:
                targets.append((ai_modality, Purpose.AI, [s for s in chosen if s.kind == SeriesKind.ORIGINAL]))
            targets.extend((dest, Purpose.DELIVERY, chosen) for dest in rule.then.deliver_to)
            for dest, purpose, picked in targets:
                if not picked:
                    continue
                keys, names, _ = selected.setdefault((dest, purpose), (set(), [], payload))
                keys.update(s.key for s in picked)
                if rule.name not in names:
                    names.append(rule.name)
            if rule.final:
                finished.update(s.key for s in hits)
        order = {s.key: i for i, s in enumerate(series)}
        return [
            PlannedJob(dest, purpose, payload, tuple(names), tuple(sorted(keys, key=order.__getitem__)))
            for (dest, purpose), (keys, names, payload) in selected.items()
        ]


def parse_rules(text: str, source: str = "routing.yml") -> RuleSet:
    """Parse and validate a rules file; errors name the line and the problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context = getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        opened_by = getattr(exc, "context", None)
        opened = f" ({opened_by} at line {context.line + 1})" if context and opened_by else ""
        raise RulesError(f"{where}: YAML syntax error: {problem}{opened}") from None
    if not isinstance(data, dict):
        raise RulesError(f"{source}:1: the file must be a mapping with a 'rules' list")
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line = _line_of(root, err["loc"])
            path = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}:{line}: {path}: {msg}")
        raise RulesError("\n".join(lines)) from None
    return RuleSet(list(parsed.rules))


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at pydantic's error location (best effort)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def series_tags(
    orthanc: OrthancClient, series_orthanc_id: str, study: dict, needed: Collection[str] | None = None
) -> dict[str, str]:
    """Study, series and first-instance tags of a series, by DICOM keyword (text values only).

    Orthanc's main tags win over the instance's. With `needed` (the tags the rules
    test), Orthanc is asked no more than those need: the study's main tags come with
    `study`, the series' cost a request, the instance's make Orthanc parse a file. These
    requests ran on every stable study while Orthanc ingests (bench/ingest_bench.py).
    Orthanc's main tags of the patient, study and series levels are disjoint, so a
    partial answer holds the same values as the full one for every needed tag.
    """
    wanted = None if needed is None else set(needed)
    main: dict[str, str] = {**study.get("PatientMainDicomTags", {}), **study.get("MainDicomTags", {})}
    if wanted is not None and main.keys() >= wanted:
        return main
    series = orthanc.series(series_orthanc_id)
    main.update(series.get("MainDicomTags", {}))
    if wanted is not None and main.keys() >= wanted:
        return main
    tags: dict[str, str] = {}
    instances = series.get("Instances", [])
    if instances:
        simplified = orthanc.get(f"/instances/{instances[0]}/simplified-tags")
        tags.update({k: v for k, v in simplified.items() if isinstance(v, str)})
    tags.update(main)
    return tags
