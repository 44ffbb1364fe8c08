"""stack/docker-compose.yml against config/env.defaults and a real `.env`.

No Docker engine runs here, so the compose file is checked structurally: every
${VAR} is a documented setting, every published port is the right *_PORT variable
on the right service (and the service listens there inside the network), storage
is mounted from DICOM_STORAGE and POSTGRES_STORAGE, long-running services have
health checks, and Grafana sits behind the `grafana` profile.

Orthanc's configuration is not in the compose file: `init` renders the native stack's
template (stack/orthanc/orthanc.json.template) into the volume the Orthanc container
reads. These tests run that rendering as `init` would and fail if Orthanc settings
reappear in the compose file (ORTHANC__* variables and the like).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.envfile import GENERATED_SECRETS, generate_secret, read_env_file
from core.settings import DEFAULTS_FILE, PROJECT_ROOT, Settings, settings_from_values
from ops.orthanc_config import COMPOSE, DEFAULT_LUA, NATIVE, read_template, render_orthanc_config
from ops.stack import cli, compose, container
from ops.stack.bootstrap import BootstrapResult

COMPOSE_FILE = PROJECT_ROOT / "stack" / "docker-compose.yml"
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
HUB_SERVICES = ("init", "worker", "api", "app", "viewer")
LONG_RUNNING = ("postgres", "orthanc", "worker", "api", "app", "viewer", "grafana")
# Which service publishes each port setting, and whether it is bound to BIND_ADDRESS
# (True), to every interface (False) or to the host's loopback only ("loopback").
PUBLISHED: dict[str, tuple[str, bool | str]] = {
    "OPERATOR_UI_PORT": ("app", True),
    "ORTHANC_WEB_PORT": ("orthanc", False),
    "OHIF_PORT": ("viewer", True),
    "POSTGRES_PORT": ("postgres", True),
    "ROUTING_API_PORT": ("api", True),
    "WORKER_HEALTH_PORT": ("worker", "loopback"),
    "GRAFANA_PORT": ("grafana", True),
    "DICOM_PORT": ("orthanc", False),
    # ORTHANC_NODES=2: compose_env derives them from ORTHANC_NODE_*_PORTS (compose.DERIVED).
    "ORTHANC2_WEB_PORT": ("orthanc2", False),
    "ORTHANC2_DICOM_PORT": ("orthanc2", False),
}
# The Orthanc service's environment: its process's and the image's plugin switches, never
# an Orthanc setting (those are in the template only).
ORTHANC_ENVIRONMENT = {"TZ", "TCP_NODELAY", "VERBOSE_STARTUP", "DICOM_WEB_PLUGIN_ENABLED", "OHIF_PLUGIN_ENABLED",
                       "HUB_CONFIG_FINGERPRINT"}
ORTHANC_CONFIG_DIR = "/etc/orthanc"  # the orthancteam/orthanc image reads /etc/orthanc/*.json


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
    values.update({key: str(9100 + i) for i, key in enumerate(PUBLISHED) if key in defaults})
    values.update({"ORTHANC_NODE_WEB_PORTS": "9120,9122", "ORTHANC_NODE_DICOM_PORTS": "9121,9123"})
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
    derived = {"ORTHANC2_WEB_PORT": "9120", "ORTHANC2_DICOM_PORT": "9121"}  # as compose_env derives them
    return interpolate(raw, {**env_values, **derived})


@pytest.fixture(scope="module")
def init_environ(rendered: dict[str, Any], env_values: dict[str, str]) -> dict[str, str]:
    """The `init` container's environment: `.env` (env_file) under the service's own values."""
    return {**env_values, **rendered["services"]["init"]["environment"]}


@pytest.fixture(scope="module")
def init_settings(init_environ: dict[str, str]) -> Settings:
    """The settings `init` renders Orthanc's configuration from (ops/stack/container.py)."""
    return settings_from_values(container.settings_values(init_environ))


@pytest.fixture(scope="module")
def orthanc_config(init_settings: Settings) -> dict[str, Any]:
    """What the compose stack's Orthanc reads."""
    return render_orthanc_config(init_settings, target=COMPOSE)


def _ports(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> `source:target[:mode]` of a service's volumes."""
    return {str(v).split(":")[1]: str(v) for v in service.get("volumes", [])}


def _keys(node: Any, prefix: str = "") -> set[str]:
    """Every key path of a configuration (`PostgreSQL.Host`)."""
    if not isinstance(node, dict):
        return set()
    return {path for k, v in node.items() for path in ({prefix + k} | _keys(v, prefix + k + "."))}


def test_services(raw: dict[str, Any]) -> None:
    assert set(raw["services"]) == {"postgres", "init", "orthanc", "orthanc2", "worker", "api", "app", "viewer",
                                    "grafana"}
    assert set(raw["services"]) == set(compose.SERVICES)
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
    assert sorted(used - set(defaults) - set(compose.DERIVED)) == []


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
            match = re.fullmatch(r"(?:\$\{BIND_ADDRESS\}:|127\.0\.0\.1:)?\$\{([A-Z0-9_]+_PORT)\}:(.+)", spec)
            assert match, f"{name}: published port {spec!r} is not a *_PORT setting"
            var = match.group(1)
            assert var in PUBLISHED, f"{name}: unknown port setting {var}"
            assert var not in seen, f"{var} published twice ({seen.get(var)} and {name})"
            seen[var] = name
            expected_service, loopback = PUBLISHED[var]
            assert name == expected_service, f"{var} is published by {name}, expected {expected_service}"
            assert spec.startswith("${BIND_ADDRESS}:") == (loopback is True), f"{var}: BIND_ADDRESS binding"
            assert spec.startswith("127.0.0.1:") == (loopback == "loopback"), f"{var}: loopback binding"
    assert sorted(seen) == sorted(PUBLISHED)


def test_services_listen_where_their_ports_point(raw: dict[str, Any]) -> None:
    services = raw["services"]
    # Orthanc listens where the template says, from the same .env settings as compose publishes.
    template = read_template()
    assert template["HttpPort"] == "${ORTHANC_WEB_PORT}"
    assert template["DicomPort"] == "${DICOM_PORT}"
    assert "port=${POSTGRES_PORT}" in services["postgres"]["command"]
    assert "--server.port=${OPERATOR_UI_PORT}" in services["app"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3000"
    container_side = {spec.rsplit(":", 1)[1] for spec in _ports(services["orthanc"])}
    assert container_side == {"${DICOM_PORT}", "${ORTHANC_WEB_PORT}"}


def test_rendered_ports_follow_the_env_file(rendered: dict[str, Any], env_values: dict[str, str],
                                           orthanc_config: dict[str, Any]) -> None:
    bind = env_values["BIND_ADDRESS"]
    published = {name: _ports(service) for name, service in rendered["services"].items()}
    v = env_values
    assert published["app"] == [f"{bind}:{v['OPERATOR_UI_PORT']}:{v['OPERATOR_UI_PORT']}"]
    assert published["api"] == [f"{bind}:{v['ROUTING_API_PORT']}:{v['ROUTING_API_PORT']}"]
    assert published["worker"] == [f"127.0.0.1:{v['WORKER_HEALTH_PORT']}:{v['WORKER_HEALTH_PORT']}"]
    # The API reaches the worker's health server over the compose network; the worker listens on it.
    assert rendered["services"]["api"]["environment"]["WORKER_HEALTH_HOST"] == "worker"
    assert rendered["services"]["worker"]["environment"]["WORKER_HEALTH_HOST"] == "0.0.0.0"
    assert rendered["services"]["api"]["command"] == ["python", "-m", "api"]
    assert published["postgres"] == [f"{bind}:{v['POSTGRES_PORT']}:{v['POSTGRES_PORT']}"]
    assert published["grafana"] == [f"{bind}:{v['GRAFANA_PORT']}:3000"]
    assert published["orthanc"] == [
        f"{v['DICOM_PORT']}:{v['DICOM_PORT']}",
        f"{v['ORTHANC_WEB_PORT']}:{v['ORTHANC_WEB_PORT']}",
    ]
    # The viewer gateway listens on OHIF_PORT inside its container (BIND_ADDRESS 0.0.0.0 there) and reads
    # OHIF's files from the image; Orthanc's port is not published a second time.
    assert published["viewer"] == [f"{bind}:{v['OHIF_PORT']}:{v['OHIF_PORT']}"]
    assert rendered["services"]["viewer"]["command"] == ["python", "-m", "viewer", "--dist", "/opt/ohif/dist"]
    assert rendered["services"]["viewer"]["environment"]["BIND_ADDRESS"] == "0.0.0.0"
    assert orthanc_config["HttpPort"] == int(v["ORTHANC_WEB_PORT"])
    assert orthanc_config["DicomPort"] == int(v["DICOM_PORT"])
    assert orthanc_config["DicomAet"] == v["ORTHANC_AET"]
    assert orthanc_config["RegisteredUsers"] == {v["ORTHANC_USERNAME"]: v["ORTHANC_PASSWORD"]}
    pg = orthanc_config["PostgreSQL"]
    assert (pg["Host"], pg["Port"], pg["Database"], pg["Username"], pg["Password"]) == (
        "postgres", int(v["POSTGRES_PORT"]), v["POSTGRES_DB"], v["POSTGRES_USER"], v["POSTGRES_PASSWORD"])
    assert "postgres" in rendered["services"]  # the host name is the service's


def test_storage_volumes(raw: dict[str, Any], rendered: dict[str, Any], env_values: dict[str, str],
                         orthanc_config: dict[str, Any]) -> None:
    orthanc, postgres = raw["services"]["orthanc"], raw["services"]["postgres"]
    assert "${DICOM_STORAGE}:/var/lib/orthanc/db" in orthanc["volumes"]
    assert orthanc_config["StorageDirectory"] == "/var/lib/orthanc/db"
    assert "${POSTGRES_STORAGE}:/var/lib/postgresql/data" in postgres["volumes"]
    assert f"{env_values['DICOM_STORAGE']}:/var/lib/orthanc/db" in rendered["services"]["orthanc"]["volumes"]
    # The Lua hook the configuration names is stack/lua, mounted read-only.
    lua = _mounts(orthanc)[COMPOSE.lua_dir]
    assert lua.endswith(":ro") and (COMPOSE_FILE.parent / lua.split(":")[0]).resolve() == DEFAULT_LUA.parent
    assert orthanc_config["LuaScripts"] == [f"{COMPOSE.lua_dir}/{DEFAULT_LUA.name}"]
    for name, spec in raw["secrets"].items():
        assert spec["file"].startswith("${STATE_DIR}/"), name


def test_orthanc_logs_pass_through_the_log_filter(raw: dict[str, Any], tmp_path: Path) -> None:
    """The container runs Orthanc as natively: through ops/logredact.py, which execs the image's
    entrypoint. The same chain is run here: the filter, an entrypoint script that execs the
    program, and a program that prints what Orthanc prints for an instance without UIDs."""
    orthanc = raw["services"]["orthanc"]
    argv = orthanc["entrypoint"]
    assert argv[:4] == ["python3", "-I", "/opt/hub/logredact.py", "--"] and argv[4] == "/docker-entrypoint.sh"
    mounted = _mounts(orthanc)["/opt/hub/logredact.py"]
    assert mounted.endswith(":ro")
    assert (COMPOSE_FILE.parent / mounted.split(":")[0]).resolve() == PROJECT_ROOT / "ops" / "logredact.py"
    entrypoint = tmp_path / "docker-entrypoint.sh"
    entrypoint.write_text('#!/bin/sh\necho "Startup command: exec Orthanc $1" >&2\n'
                          "exec printf 'E1206 08:41:03.106930 main.cpp:2017] Store has failed: PatientID=SECRET^ID\\n'\n")
    entrypoint.chmod(0o755)
    out = subprocess.run([sys.executable, "-I", str(PROJECT_ROOT / "ops" / "logredact.py"), "--", str(entrypoint),
                          *orthanc["command"]], capture_output=True, text=True, timeout=30, check=True)
    assert "SECRET" not in out.stdout and "PatientID=<redacted>" in out.stdout
    assert "Startup command: exec Orthanc /tmp/orthanc.json" in out.stdout


def test_orthanc_settings_match_the_native_stack(raw: dict[str, Any], init_settings: Settings,
                                                 orthanc_config: dict[str, Any]) -> None:
    """One template for both stacks: the same settings, the same values but for the paths
    of plugins and Lua scripts (and the in-network host names and paths `init` has)."""
    native = render_orthanc_config(init_settings, target=NATIVE)
    assert _keys(orthanc_config) == _keys(native) and set(orthanc_config) == set(read_template())
    differ = {k for k in native if native[k] != orthanc_config[k]}
    assert differ == {"Plugins", "LuaScripts"}
    assert orthanc_config["Plugins"] == ["/usr/share/orthanc/plugins/"]
    for key, wanted in (("JobsHistorySize", init_settings.jobs_history_size), ("SaveJobs", False),
                        ("AuthenticationEnabled", True), ("OverwriteInstances", False),
                        ("MaximumStorageSize", 0), ("MaximumPatientCount", 0)):
        assert orthanc_config[key] == wanted, key
    assert orthanc_config["PostgreSQL"]["EnableIndex"] is True
    env = raw["services"]["orthanc"]["environment"]
    assert env["TCP_NODELAY"] == "1"
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert env["OHIF_PLUGIN_ENABLED"] == "false"  # the `viewer` service serves OHIF, behind the app's login
    assert env["TZ"] == "${TZ}"


def test_orthanc_settings_are_stated_only_in_the_template(raw: dict[str, Any]) -> None:
    """Fails when an Orthanc setting is written by hand in the compose file again."""
    orthanc = raw["services"]["orthanc"]
    assert set(orthanc["environment"]) == ORTHANC_ENVIRONMENT
    # The image turns ORTHANC__* variables, ORTHANC_JSON and *.json secrets into settings:
    # none anywhere in the file (comments aside), no .env, secrets or configs for Orthanc.
    for text in strings(raw):
        assert "ORTHANC__" not in text and "ORTHANC_JSON" not in text, text
    for key in ("env_file", "secrets", "configs"):
        assert key not in orthanc, key
    # The entry point is the log filter before the image's own (test_orthanc_logs_pass_through_the_log_filter),
    # and the command the image's own: the configuration its entrypoint generates, no option of Orthanc's.
    assert orthanc["command"] == ["/tmp/orthanc.json"]
    assert orthanc["entrypoint"][-1] == "/docker-entrypoint.sh"
    # /etc/orthanc is the volume `init` writes, and nothing else is mounted into it.
    mounts = _mounts(orthanc)
    assert mounts[ORTHANC_CONFIG_DIR] == f"orthanc-config:{ORTHANC_CONFIG_DIR}:ro"
    assert [t for t in mounts if t.startswith(ORTHANC_CONFIG_DIR + "/") or t.startswith("/run/secrets")] == []
    assert "orthanc-config" in raw["volumes"]
    for name, service in raw["services"].items():
        if name not in ("init", "orthanc"):
            assert all(not str(v).startswith("orthanc-config:") for v in service.get("volumes", [])), name


def test_init_renders_the_configuration_orthanc_reads(
    raw: dict[str, Any], init_environ: dict[str, str], orthanc_config: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`init`'s command, run as its container runs it, writes the compose rendering of the
    template (mode 600) where the Orthanc container reads it."""
    init = raw["services"]["init"]
    command = init["command"]
    assert command[:4] == ["python", "-m", "ops.stack", "bootstrap"]
    args = cli.parser().parse_args(command[3:])
    target = Path(args.orthanc_config)
    assert target.parent == Path(ORTHANC_CONFIG_DIR) and target.suffix == ".json"
    assert _mounts(init)[ORTHANC_CONFIG_DIR] == f"orthanc-config:{ORTHANC_CONFIG_DIR}"
    # `init` lists its volumes itself (a YAML merge does not extend lists): it keeps the hub's.
    hub_volumes = raw["x-hub-service"]["volumes"]
    assert [v for v in init["volumes"] if v in hub_volumes] == hub_volumes

    written = tmp_path / "etc-orthanc" / target.name
    env_file = container.write_settings(init_environ, tmp_path / "hub" / ".env")
    monkeypatch.setenv("HUB_ENV_FILE", str(env_file))
    monkeypatch.setattr(cli, "bootstrap_databases", lambda settings, password: BootstrapResult(admin_created=False))
    superuser = tmp_path / "superuser.secret"
    superuser.write_text("x\n")
    argv = [a.replace(str(target), str(written)).replace("/run/secrets/postgres_superuser", str(superuser))
            for a in command[3:]]
    assert cli.main(argv) == 0
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    text = written.read_text()
    assert "$" not in text  # the image substitutes $NAME in /etc/orthanc/*.json
    assert json.loads(text) == orthanc_config


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
    for name in ("orthanc", "worker", "api", "app"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["orthanc"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["worker"]["condition"] == "service_started"


def test_grafana_is_optional(raw: dict[str, Any]) -> None:
    assert raw["services"]["grafana"]["profiles"] == ["grafana"]
    assert [n for n, s in raw["services"].items() if s.get("profiles")] == ["orthanc2", "grafana"]


def test_second_orthanc_node(raw: dict[str, Any], rendered: dict[str, Any], env_values: dict[str, str],
                             tmp_path: Path) -> None:
    """ORTHANC_NODES=2: `orthanc2` is `orthanc` on its own ports and configuration, behind a
    profile that compose_env enables; `init` renders node 2's configuration for it."""
    first, second = raw["services"]["orthanc"], raw["services"]["orthanc2"]
    assert second["profiles"] == ["orthanc2"]
    same = ("image", "environment", "entrypoint", "command", "depends_on", "restart")
    assert {k: second[k] for k in same} == {k: first[k] for k in same}
    mounts = {m.replace("orthanc2-config:", "orthanc-config:") for m in second["volumes"]}
    assert mounts == set(first["volumes"]) and "orthanc2-config" in raw["volumes"]
    assert _ports(rendered["services"]["orthanc2"]) == ["9121:9121", "9120:9120"]
    two = settings_from_values({**env_values, "ORTHANC_NODES": "2"})
    env = compose.compose_env(two, tmp_path / ".env")
    assert "orthanc2" in env["COMPOSE_PROFILES"].split(",")
    assert (env["ORTHANC2_WEB_PORT"], env["ORTHANC2_DICOM_PORT"]) == ("9120", "9121")
    assert "orthanc2" not in compose.compose_env(settings_from_values(env_values), tmp_path / ".env").get(
        "COMPOSE_PROFILES", "")
    with pytest.raises(compose.ComposeError, match="at most 2"):
        compose.check_nodes(settings_from_values({**env_values, "ORTHANC_NODES": "3"}))
    command = raw["services"]["init"]["command"]
    config = command[command.index("--orthanc2-config") + 1]
    assert f"orthanc2-config:{Path(config).parent}" in raw["services"]["init"]["volumes"]
    node2 = render_orthanc_config(two, target=COMPOSE, node=2)
    assert (node2["HttpPort"], node2["DicomPort"], node2["PostgreSQL"]["Lock"]) == (9120, 9121, False)


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
    # Orthanc's rendered configuration changes its digest, so compose recreates Orthanc.
    digest = env["ORTHANC_CONFIG_DIGEST"]
    assert set(compose.DERIVED) <= set(env) and len(digest) == 16
    changed = settings_from_values({**env_values, "STATE_DIR": "./var", "ORTHANC_PASSWORD": generate_secret()})
    assert compose.orthanc_config_digest(changed) != digest
    unrelated = settings_from_values({**env_values, "STATE_DIR": "./var", "APP_IDLE_TIMEOUT": "420"})
    assert compose.orthanc_config_digest(unrelated) == digest
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
