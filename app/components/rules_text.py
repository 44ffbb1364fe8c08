"""Rules in words, the active rule set from config_status, and atomic writes of the file.

Kept apart from the page so that the wording can be tested without rendering, and so
that the QI pages or the CLI can reuse it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.rules import Condition, Rule, RuleSet


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def describe_condition(c: Condition) -> str:
    """One condition in words, e.g. `StudyDescription contains "BONE LENGTH" (any case)`."""
    neg = "not " if c.negate else ""
    if c.exists is not None:
        return f"{c.tag} {'is' if c.exists != c.negate else 'is not'} present"
    if c.equals is not None:
        text = f'{neg}equals "{c.equals}"'
    elif c.contains is not None:
        needles = [c.contains] if isinstance(c.contains, str) else c.contains
        text = f"{'does not contain' if c.negate else 'contains'} " + " or ".join(f'"{n}"' for n in needles)
    elif c.regex is not None:
        text = f"{neg}matches /{c.regex}/"
    elif c.one_of is not None:
        text = f"{neg}is one of " + ", ".join(c.one_of)
    else:
        op, bound = next((op, getattr(c, op)) for op in ("gt", "ge", "lt", "le") if getattr(c, op) is not None)
        text = f"{neg}{ {'gt': '>', 'ge': '≥', 'lt': '<', 'le': '≤'}[op] } {bound:g}"
    return f"{c.tag} {text}" + (" (any case)" if c.ignore_case else "")


def describe_rule(rule: Rule, ai_modality: str) -> dict[str, Any]:
    when = rule.when
    parts = [] if when.kind == "any" else [f"{when.kind.replace('_', ' ')} series"]
    if when.sender_aet:
        parts.append("sent by " + " or ".join(when.sender_aet))
    parts += [describe_condition(c) for c in when.all]
    if when.any:
        parts.append("any of: " + "; ".join(describe_condition(c) for c in when.any))
    then = []
    if rule.then.send_to_ai:
        then.append(f"send originals to the AI ({ai_modality})")
    if rule.then.deliver_to:
        then.append("deliver to " + ", ".join(rule.then.deliver_to))
    return {
        "priority": rule.priority, "name": rule.name, "enabled": "yes" if rule.enabled else "no",
        "when": " and ".join(parts) or "every series", "then": "; ".join(then),
        "payload": rule.then.payload, "final": "yes" if rule.final else "",
        "description": rule.description,
    }


def active_rules(status: dict[str, Any] | None) -> RuleSet | None:
    """The rules the worker last loaded, rebuilt from config_status.content."""
    if not status or status.get("content") is None:
        return None
    try:
        return RuleSet([Rule.model_validate(r) for r in status["content"]])
    except ValidationError:
        return None


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by rename, keeping its mode (the worker's watcher sees one change)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
