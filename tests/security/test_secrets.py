"""Generated secrets are long, random, URL-safe, distinct, and written private (mode 600).

Covers core.envfile (the `.env` that `make run`/`make env` create), the wizard's
generation, the app's generated user passwords, the PostgreSQL superuser's secret
file and the compose stack's secret files.
"""

from __future__ import annotations

import math
import random
import re
import stat
from collections import Counter
from pathlib import Path

import pytest

from core import auth
from core.envfile import (
    GENERATED_SECRETS,
    SITE_SECRETS,
    ensure_env_file,
    generate_secret,
    read_env_file,
    write_private,
)
from core.settings import DEFAULTS_FILE, settings_from_values
from ops import pgcluster
from ops.stack import compose
from ops.tooling import wizard

URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entropy_per_char(samples: list[str]) -> float:
    counts = Counter("".join(samples))
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def test_generate_secret_is_192_bits_of_url_safe_randomness() -> None:
    samples = [generate_secret() for _ in range(400)]
    assert {len(s) for s in samples} == {32}  # 32 symbols of 64 = 192 bits
    assert all(URLSAFE.match(s) for s in samples)  # safe in .env, URLs and Orthanc's JSON
    assert len(set(samples)) == len(samples)
    # 12,800 symbols: all 64 appear and the spread is near the 6 bits/symbol maximum.
    assert len(Counter("".join(samples))) == 64
    assert _entropy_per_char(samples) > 5.95
    # Not Python's `random` (seeded, predictable): same seed, different secrets.
    random.seed(7)
    first = generate_secret()
    random.seed(7)
    assert generate_secret() != first


def test_app_and_superuser_passwords_are_strong(tmp_path: Path) -> None:
    passwords = {auth.generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) == 24 and URLSAFE.match(p) and auth.check_password(p) for p in passwords)  # 144 bits
    superuser = pgcluster.superuser_password_file(tmp_path / "state")
    path = tmp_path / "state" / "postgres-superuser.secret"
    assert len(superuser) == 32 and URLSAFE.match(superuser)
    assert _mode(path) == 0o600
    assert pgcluster.superuser_password_file(tmp_path / "state") == superuser  # kept, not regenerated


def test_every_password_setting_is_generated() -> None:
    """A new secret in env.defaults must be generated (or be the site's own: SITE_SECRETS), never shipped
    with a value."""
    defaults = read_env_file(DEFAULTS_FILE)
    secret_keys = {k for k in defaults if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", k)}
    assert secret_keys == set(GENERATED_SECRETS) | set(SITE_SECRETS)
    assert not set(GENERATED_SECRETS) & set(SITE_SECRETS)
    assert all(defaults[k] == "" for k in secret_keys)


def test_a_fresh_env_has_distinct_strong_secrets_and_is_private(tmp_path: Path) -> None:
    envs = []
    for n in range(2):
        path = tmp_path / f"site{n}" / ".env"
        path.parent.mkdir()
        assert ensure_env_file(path, DEFAULTS_FILE)
        assert _mode(path) == 0o600
        values = read_env_file(path)
        secrets = [values[k] for k in GENERATED_SECRETS]
        assert len(set(secrets)) == len(GENERATED_SECRETS), "two settings share a password"
        assert all(len(s) == 32 and URLSAFE.match(s) for s in secrets)
        settings_from_values(values)  # accepted by the settings' own checks
        envs.append(set(secrets))
    assert not envs[0] & envs[1], "two installations share a password"


def test_an_existing_env_keeps_its_secrets_and_fills_only_empty_ones(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    assert ensure_env_file(path, DEFAULTS_FILE)
    values = read_env_file(path)
    text = path.read_text().replace(f"GRAFANA_DB_PASSWORD={values['GRAFANA_DB_PASSWORD']}", "GRAFANA_DB_PASSWORD=")
    write_private(path, text)
    path.chmod(0o644)  # an operator's editor may have loosened it
    assert ensure_env_file(path, DEFAULTS_FILE)
    after = read_env_file(path)
    assert _mode(path) == 0o600
    assert after["GRAFANA_DB_PASSWORD"] not in ("", values["GRAFANA_DB_PASSWORD"])
    assert {k: after[k] for k in GENERATED_SECRETS if k != "GRAFANA_DB_PASSWORD"} == {
        k: values[k] for k in GENERATED_SECRETS if k != "GRAFANA_DB_PASSWORD"}
    assert len({after[k] for k in GENERATED_SECRETS}) == len(GENERATED_SECRETS)


def test_wizard_generates_distinct_secrets() -> None:
    values: dict[str, str] = {}
    origin = wizard.fill_missing_secrets(values)
    assert set(origin.values()) == {"generated"}
    assert len({values[k] for k in GENERATED_SECRETS}) == len(GENERATED_SECRETS)
    assert all(len(values[k]) == 32 for k in GENERATED_SECRETS)


def test_compose_secret_files_are_private_and_distinct(tmp_path: Path) -> None:
    state = tmp_path / "state"
    compose.ensure_secret_files(state)
    files = [state / name for name in compose.SECRET_FILES]
    contents = [f.read_text().strip() for f in files]
    assert all(_mode(f) == 0o600 for f in files)
    assert _mode(state) & 0o077 == 0
    assert len(set(contents)) == len(contents) and all(len(c) == 32 for c in contents)


@pytest.mark.parametrize("weak", ["", "orthanc", "short-pass1"])
def test_settings_refuse_empty_or_short_secrets(weak: str) -> None:
    values = read_env_file(DEFAULTS_FILE)
    values.update({k: generate_secret() for k in GENERATED_SECRETS})
    values["ORTHANC_PASSWORD"] = weak
    with pytest.raises(ValueError, match="ORTHANC_PASSWORD|orthanc_password"):
        settings_from_values(values)
