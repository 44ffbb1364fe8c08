"""stack/docker-compose.yml against config/env.defaults and a real `.env`.

No Docker engine runs here, so the compose file is checked structurally: every
${VAR} is a documented setting, every published port is the right *_PORT variable
on the right service (and the service listens there inside the network), storage
is mounted from DICOM_STORAGE and POSTGRES_STORAGE, long-running services have
health checks, and Grafana sits behind the `grafana` profile.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.envfile import GENERATED_SECRETS, generate_secret, read_env_file
from core.settings import DEFAULTS_FILE, PROJECT_ROOT, settings_from_values
from ops.stack import compose, container

COMPOSE_FILE = PROJECT_ROOT / "stack" / "docker-compose.yml"
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
HUB_SERVICES = ("init", "worker", "app")
LONG_RUNNING = ("postgres", "orthanc", "worker", "app", "grafana")
# Which service publishes each port setting, and whether it is bound to BIND_ADDRESS.
PUBLISHED = {
    "OPERATOR_UI_PORT": ("app", True),
    "ORTHANC_WEB_PORT": ("orthanc", False),
    "OHIF_PORT": ("orthanc", True),
    "POSTGRES_PORT": ("postgres", True),
    "ROUTING_API_PORT": ("worker", True),
    "GRAFANA_PORT": ("grafana", True),
    "DICOM_PORT": ("orthanc", False),
}


@pytest.fixture(scope="module")
def defaults() -> dict[str, str]:
    return read_env_file(DEFAULTS_FILE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env_values(defaults: dict[str, str]) -> dict[str, str]:
    """A site's .env: the defaults with generated secrets and non-default ports."""
    values = {**defaults, **{key: generate_secret() for key in GENERATED_SECRETS}}
    values.update({key: str(9100 + i) for i, key in enumerate(PUBLISHED)})
    values.update({"DICOM_STORAGE": "/srv/hub/dicom", "POSTGRES_STORAGE": "/srv/hub/pg", "STATE_DIR": "/srv/hub/state"})
    settings_from_values(values)  # a valid configuration
    return values


def strings(node: Any) -> list[str]:
    """Every string of the parsed file (compose interpolates values, not comments)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def interpolate(node: Any, values: dict[str, str]) -> Any:
    """Compose's ${VAR} interpolation (the subset the file may use); `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3)
        if name in values and (values[name] or not op or not op.startswith(":")):
            return values[name]
        if op and op.lstrip(":") == "-":
            return default
        raise KeyError(f"${{{name}}} is not set")

    if isinstance(node, dict):
        return {interpolate(k, values): interpolate(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(item, values) for item in node]
    if isinstance(node, str):
        return VAR_RE.sub(replace, node).replace("$$", "$")
    return node


@pytest.fixture(scope="module")
def rendered(raw: dict[str, Any], env_values: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, env_values)


def _ports(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_services(raw: dict[str, Any]) -> None:
    assert set(raw["services"]) == {"postgres", "init", "orthanc", "worker", "app", "grafana"}
    for name in HUB_SERVICES:
        build = raw["services"][name]["build"]
        assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == (
            PROJECT_ROOT / "stack" / "Dockerfile")
    assert (PROJECT_ROOT / "stack" / "Dockerfile").is_file()
    assert "orthancteam/orthanc:" in raw["services"]["orthanc"]["image"]
    assert not raw["services"]["orthanc"]["image"].endswith(":latest")


def test_every_variable_is_a_documented_setting(raw: dict[str, Any], defaults: dict[str, str]) -> None:
    used = {m.group(1) for text in strings(raw) for m in VAR_RE.finditer(text)}
    assert used, "the compose file takes its values from .env"
    assert sorted(used - set(defaults)) == []


def test_hub_services_override_only_known_settings(raw: dict[str, Any], defaults: dict[str, str]) -> None:
    """The image's entry point passes on only the keys of env.defaults: an override
    under another name would be dropped silently."""
    for name in HUB_SERVICES:
        service = raw["services"][name]
        assert service["env_file"] == ["../.env"]
        assert sorted(set(service["environment"]) - set(defaults)) == []
        assert service["environment"]["ORTHANC_HOST"] == "orthanc"
        assert service["environment"]["POSTGRES_HOST"] == "postgres"


def test_published_ports_map_to_their_settings(raw: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in raw["services"].items():
        for spec in _ports(service):
            match = re.fullmatch(r"(?:\$\{BIND_ADDRESS\}:)?\$\{([A-Z_]+_PORT)\}:(.+)", spec)
            assert match, f"{name}: published port {spec!r} is not a *_PORT setting"
            var = match.group(1)
            assert var in PUBLISHED, f"{name}: unknown port setting {var}"
            assert var not in seen, f"{var} published twice ({seen.get(var)} and {name})"
            seen[var] = name
            expected_service, loopback = PUBLISHED[var]
            assert name == expected_service, f"{var} is published by {name}, expected {expected_service}"
            assert spec.startswith("${BIND_ADDRESS}:") == loopback, f"{var}: BIND_ADDRESS binding"
    assert sorted(seen) == sorted(PUBLISHED)


def test_services_listen_where_their_ports_point(raw: dict[str, Any]) -> None:
    services = raw["services"]
    orthanc = services["orthanc"]["environment"]
    assert orthanc["ORTHANC__HTTP_PORT"] == "${ORTHANC_WEB_PORT}"
    assert orthanc["ORTHANC__DICOM_PORT"] == "${DICOM_PORT}"
    assert "port=${POSTGRES_PORT}" in services["postgres"]["command"]
    assert "--server.port=${OPERATOR_UI_PORT}" in services["app"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3000"
    container_side = {spec.rsplit(":", 1)[1] for spec in _ports(services["orthanc"])}
    assert container_side == {"${DICOM_PORT}", "${ORTHANC_WEB_PORT}"}


def test_rendered_ports_follow_the_env_file(rendered: dict[str, Any], env_values: dict[str, str]) -> None:
    bind = env_values["BIND_ADDRESS"]
    published = {name: _ports(service) for name, service in rendered["services"].items()}
    v = env_values
    assert published["app"] == [f"{bind}:{v['OPERATOR_UI_PORT']}:{v['OPERATOR_UI_PORT']}"]
    assert published["worker"] == [f"{bind}:{v['ROUTING_API_PORT']}:{v['ROUTING_API_PORT']}"]
    assert published["postgres"] == [f"{bind}:{v['POSTGRES_PORT']}:{v['POSTGRES_PORT']}"]
    assert published["grafana"] == [f"{bind}:{v['GRAFANA_PORT']}:3000"]
    assert published["orthanc"] == [
        f"{v['DICOM_PORT']}:{v['DICOM_PORT']}",
        f"{v['ORTHANC_WEB_PORT']}:{v['ORTHANC_WEB_PORT']}",
        f"{bind}:{v['OHIF_PORT']}:{v['ORTHANC_WEB_PORT']}",
    ]
    orthanc = rendered["services"]["orthanc"]["environment"]
    assert orthanc["ORTHANC__POSTGRESQL__PASSWORD"] == v["POSTGRES_PASSWORD"]
    assert orthanc["ORTHANC__REGISTERED_USERS"] == f'{{"{v["ORTHANC_USERNAME"]}": "{v["ORTHANC_PASSWORD"]}"}}'


def test_storage_volumes(raw: dict[str, Any], rendered: dict[str, Any], env_values: dict[str, str]) -> None:
    orthanc, postgres = raw["services"]["orthanc"], raw["services"]["postgres"]
    assert "${DICOM_STORAGE}:/var/lib/orthanc/db" in orthanc["volumes"]
    assert orthanc["environment"]["ORTHANC__STORAGE_DIRECTORY"] == "/var/lib/orthanc/db"
    assert "${POSTGRES_STORAGE}:/var/lib/postgresql/data" in postgres["volumes"]
    assert f"{env_values['DICOM_STORAGE']}:/var/lib/orthanc/db" in rendered["services"]["orthanc"]["volumes"]
    lua = [v for v in orthanc["volumes"] if v.endswith(":/etc/orthanc/lua:ro")]
    assert lua and (COMPOSE_FILE.parent / lua[0].split(":")[0] / "hub.lua").is_file()
    assert orthanc["environment"]["ORTHANC__LUA_SCRIPTS"] == '["/etc/orthanc/lua/hub.lua"]'
    for name, spec in raw["secrets"].items():
        assert spec["file"].startswith("${STATE_DIR}/"), name


def test_orthanc_settings_match_the_native_stack(raw: dict[str, Any]) -> None:
    env = raw["services"]["orthanc"]["environment"]
    assert env["TCP_NODELAY"] == "1"
    assert env["ORTHANC__JOBS_HISTORY_SIZE"] == "${JOBS_HISTORY_SIZE}"
    assert env["ORTHANC__SAVE_JOBS"] == "false"
    assert env["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert env["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true"
    assert env["ORTHANC__OVERWRITE_INSTANCES"] == "false"
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert env["OHIF_PLUGIN_ENABLED"] == "true"
    assert env["TZ"] == "${TZ}"


def test_no_secret_is_written_in_the_file(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "REGISTERED_USERS")):
                assert "${" in str(value) or key.endswith("__FILE") or key.endswith("_FILE"), f"{name}.{key}"


def test_healthchecks_and_startup_order(raw: dict[str, Any]) -> None:
    services = raw["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("orthanc", "worker", "app"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["orthanc"]["condition"] == "service_healthy"


def test_grafana_is_optional(raw: dict[str, Any]) -> None:
    assert raw["services"]["grafana"]["profiles"] == ["grafana"]
    assert [n for n, s in raw["services"].items() if s.get("profiles")] == ["grafana"]


def test_compose_env_comes_from_the_env_file_only(
    tmp_path: Path, env_values: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**env_values, "STATE_DIR": "./var"}.items()))
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("ORTHANC_PASSWORD", "from-the-shell")
    settings = settings_from_values({**env_values, "STATE_DIR": "./var"})
    env = compose.compose_env(settings, env_file)
    assert env["TZ"] == env_values["TZ"]
    assert env["ORTHANC_PASSWORD"] == env_values["ORTHANC_PASSWORD"]
    assert env["STATE_DIR"] == str(PROJECT_ROOT / "var")  # resolved against the project, not stack/
    argv = compose.compose_argv(env_file, "ps")
    assert argv[:2] == ["docker", "compose"] and str(COMPOSE_FILE) in argv and argv[-1] == "ps"
    with pytest.raises(compose.ComposeError, match="HUB_ENV_FILE"):
        compose.check_env_file(env_file)


def test_secret_files_are_private(tmp_path: Path) -> None:
    compose.ensure_secret_files(tmp_path / "state")
    for name in compose.SECRET_FILES:
        path = tmp_path / "state" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 24
    before = (tmp_path / "state" / compose.SECRET_FILES[0]).read_text()
    compose.ensure_secret_files(tmp_path / "state")
    assert (tmp_path / "state" / compose.SECRET_FILES[0]).read_text() == before


def test_container_entry_point_writes_known_settings(tmp_path: Path, env_values: dict[str, str]) -> None:
    environ = {**env_values, "ORTHANC_HOST": "orthanc", "PATH": "/usr/bin", "HOSTNAME": "abc",
               "MODALITY_PACS": "PACS|127.0.0.1|11112"}
    target = container.write_settings(environ, tmp_path / "hub" / ".env")
    written = read_env_file(target)
    assert "PATH" not in written and "HOSTNAME" not in written
    assert written["ORTHANC_HOST"] == "orthanc"
    assert written["MODALITY_PACS"] == "PACS|127.0.0.1|11112"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_engine_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker info` failing (no engine, as here) means the native stack."""
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1" = info ] && exit "${FAKE_INFO:-1}"\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_INFO", "1")
    assert compose.engine_available() is False
    monkeypatch.setenv("FAKE_INFO", "0")
    assert compose.engine_available() is True
