"""The native stack's rendered supervisord configuration and its small helpers."""

from __future__ import annotations

import configparser
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.envfile import GENERATED_SECRETS
from core.settings import PROJECT_ROOT, Settings, settings_from_values
from ops import pgcluster
from ops.stack import native
from ops.stack.layout import SERVICES, StackLayout
from ops.stack.supervisor_conf import probe_host, render_supervisord_conf


def _conf(settings: Settings, env_file: Path, fingerprints: dict[str, str] | None = None) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(render_supervisord_conf(settings, env_file, StackLayout.for_settings(settings), fingerprints))
    return parser


def test_programs_and_start_order(hub_settings: Settings, tmp_path: Path) -> None:
    conf = _conf(hub_settings, tmp_path / ".env")
    programs = [s.removeprefix("program:") for s in conf.sections() if s.startswith("program:")]
    assert programs == list(SERVICES)
    priorities = [int(conf[f"program:{name}"]["priority"]) for name in SERVICES]
    assert priorities == sorted(priorities)
    # Only PostgreSQL starts by itself: the others wait for roles, migrations and the admin.
    assert [n for n in SERVICES if conf[f"program:{n}"]["autostart"] == "true"] == ["postgres"]
    assert conf["program:postgres"]["stopsignal"] == "INT"


def test_commands_and_environment(hub_settings: Settings, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    conf = _conf(hub_settings, env_file, {"orthanc": "aaa", "hub": "bbb"})
    s = hub_settings
    assert conf["program:postgres"]["command"].startswith(str(pgcluster.PG_BIN / "postgres"))
    assert f"-p {s.postgres_port}" in conf["program:postgres"]["command"]
    if os.geteuid() == 0:
        assert conf["program:postgres"]["user"] == "postgres"
    orthanc = conf["program:orthanc"]
    # Orthanc runs through the log filter, which execs it (ops/logredact.py).
    assert orthanc["command"] == (f"{sys.executable} -I {PROJECT_ROOT / 'ops' / 'logredact.py'} -- "
                                  f"/usr/sbin/Orthanc {s.state_dir / 'orthanc.json'}")
    assert 'TCP_NODELAY="1"' in orthanc["environment"] and f'TZ="{s.tz}"' in orthanc["environment"]
    assert 'HUB_CONFIG_FINGERPRINT="aaa"' in orthanc["environment"]
    for name in ("worker", "api", "app"):
        assert f'HUB_ENV_FILE="{env_file.resolve()}"' in conf[f"program:{name}"]["environment"]
        assert 'HUB_CONFIG_FINGERPRINT="bbb"' in conf[f"program:{name}"]["environment"]
    assert conf["program:api"]["command"] == f"{sys.executable} -m api"
    app = conf["program:app"]["command"]
    assert f"--server.address {s.bind_address}" in app and f"--server.port {s.operator_ui_port}" in app
    assert conf["unix_http_server"]["chmod"] == "0700"


def test_no_secret_in_the_supervisord_conf(hub_values: dict[str, str], tmp_path: Path) -> None:
    settings = settings_from_values(hub_values)
    text = render_supervisord_conf(settings, tmp_path / ".env", StackLayout.for_settings(settings))
    for key in GENERATED_SECRETS:
        assert hub_values[key] not in text


def test_deep_state_dir_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120) / "state"
    layout = StackLayout(deep)
    assert len(str(layout.socket)) < 100
    assert layout.socket == StackLayout(deep).socket  # stable for one STATE_DIR
    assert StackLayout(tmp_path / "state").socket == tmp_path / "state" / "supervisor.sock"


def test_probe_host() -> None:
    assert probe_host("0.0.0.0") == "127.0.0.1"
    assert probe_host("127.0.0.1") == "127.0.0.1"


def test_busy_ports_names_the_setting(make_settings: Callable[..., Settings]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = make_settings(ROUTING_API_PORT=str(port))
        assert f"ROUTING_API_PORT={port}" in native.busy_ports(settings)
        settings = make_settings(WORKER_HEALTH_PORT=str(port))
        assert f"WORKER_HEALTH_PORT={port}" in native.busy_ports(settings)


@pytest.mark.parametrize("args", [["logs", "nonsense"]])
def test_cli_rejects_unknown_service(args: list[str], use_hub_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ops.stack.cli import main

    assert main(["--mode", "native", *args]) == 1
    assert "unknown service" in capsys.readouterr().err
