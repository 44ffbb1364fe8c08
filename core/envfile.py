"""Read and write `.env` files strictly: a malformed line is an error, never skipped.

python-dotenv silently ignores lines it cannot parse; a hospital's routing hub must
not start with half its configuration, so every bad line is reported with its number.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from pathlib import Path

from dotenv.parser import parse_stream

KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Settings whose empty value is replaced by a generated secret at setup.
GENERATED_SECRETS = (
    "ORTHANC_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_DB_PASSWORD",
    "APP_ADMIN_PASSWORD",
    "ALERT_WEBHOOK_SECRET",
)
# Secrets the site supplies (its mail server's login): empty by default, never generated.
SITE_SECRETS = ("ALERT_SMTP_PASSWORD",)


class EnvFileError(ValueError):
    """A configuration file has lines that cannot be read."""


def parse_env_text(text: str, source: str) -> dict[str, str]:
    """Return KEY -> value for `text`, raising with every bad line listed."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        line_no = binding.original.line
        line = binding.original.string.strip()
        if binding.error:
            errors.append(f"{source}:{line_no}: cannot parse {line[:60]!r} (expected KEY=VALUE)")
            continue
        if binding.key is None:
            continue  # blank line or comment
        if not KEY_RE.match(binding.key):
            errors.append(
                f"{source}:{line_no}: {binding.key!r} is not a valid name "
                "(upper-case letters, digits and _; starts with a letter)"
            )
            continue
        if binding.key in values:
            errors.append(f"{source}:{line_no}: {binding.key} is set twice")
            continue
        values[binding.key] = binding.value or ""
    if errors:
        raise EnvFileError("\n".join(errors))
    return values


def read_env_file(path: Path) -> dict[str, str]:
    return parse_env_text(path.read_text(encoding="utf-8"), str(path))


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 600 from the first byte (no window of 644)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def render_env(template: str, overrides: dict[str, str]) -> str:
    """Apply `overrides` to the KEY=VALUE lines of `template`, keeping its comments.

    Keys not present in the template are appended at the end.
    """
    remaining = dict(overrides)
    out: list[str] = []
    for raw in template.splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", raw)
        if match and match.group(1) in remaining:
            key = match.group(1)
            out.append(f"{key}={quote(remaining.pop(key))}")
        else:
            out.append(raw)
    out.extend(f"{key}={quote(value)}" for key, value in remaining.items())
    return "\n".join(out) + "\n"


def quote(value: str) -> str:
    """Quote a value only when dotenv would otherwise misread it."""
    if value == "" or re.fullmatch(r"[A-Za-z0-9_./:|,@+-]+", value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def generate_secret() -> str:
    """A 32-character URL-safe secret (192 bits)."""
    return secrets.token_urlsafe(24)


def ensure_env_file(env_path: Path, defaults_path: Path) -> bool:
    """Create `env_path` from the defaults with generated secrets; keep an existing one.

    Secrets that are empty in an existing file are filled in. Returns True when the
    file was created or changed.
    """
    template = defaults_path.read_text(encoding="utf-8")
    if env_path.exists():
        current = read_env_file(env_path)
        missing = {k: generate_secret() for k in GENERATED_SECRETS if not current.get(k)}
        if not missing:
            return False
        write_private(env_path, render_env(env_path.read_text(encoding="utf-8"), missing))
        return True
    parse_env_text(template, str(defaults_path))
    write_private(env_path, render_env(template, {k: generate_secret() for k in GENERATED_SECRETS}))
    return True
