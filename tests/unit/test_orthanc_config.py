"""The Orthanc configuration rendered from Settings, from its one template."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

import ops.orthanc_config
from core.settings import PROJECT_ROOT, Settings
from ops.orthanc_config import (
    COMPOSE,
    LOG_FILTER,
    NATIVE,
    TEMPLATE,
    orthanc_argv,
    orthanc_env,
    placeholders,
    read_template,
    render_orthanc_config,
    write_orthanc_config,
)


def test_identity_ports_and_storage(hub_settings: Settings) -> None:
    config = render_orthanc_config(hub_settings)
    assert config["DicomAet"] == hub_settings.orthanc_aet
    assert config["DicomPort"] == hub_settings.dicom_port
    assert config["HttpPort"] == hub_settings.orthanc_web_port
    assert config["StorageDirectory"] == str(hub_settings.dicom_storage)
    assert config["IndexDirectory"] == str(hub_settings.dicom_storage)


def test_plugins_are_listed_by_file_and_exist(hub_settings: Settings) -> None:
    plugins = render_orthanc_config(hub_settings)["Plugins"]
    assert [Path(p).name for p in plugins] == [
        "libOrthancPostgreSQLIndex.so", "libOrthancDicomWeb.so", "libOrthancWebViewer.so"]
    assert all(Path(p).is_file() for p in plugins)


def test_postgresql_index_only(hub_settings: Settings) -> None:
    pg = render_orthanc_config(hub_settings)["PostgreSQL"]
    assert pg["EnableIndex"] is True and pg["EnableStorage"] is False
    assert (pg["Host"], pg["Port"], pg["Database"], pg["Username"]) == (
        hub_settings.postgres_host, hub_settings.postgres_port, hub_settings.postgres_db, hub_settings.postgres_user)
    assert pg["Password"] == hub_settings.postgres_password.get_secret_value()


def test_security_and_routing_behaviour(hub_settings: Settings) -> None:
    config = render_orthanc_config(hub_settings)
    assert config["AuthenticationEnabled"] is True
    assert config["RemoteAccessAllowed"] is True
    assert config["RegisteredUsers"] == {
        hub_settings.orthanc_username: hub_settings.orthanc_password.get_secret_value()}
    assert config["DicomWeb"]["Enable"] is True and config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["StableAge"] == hub_settings.stable_age
    assert config["JobsHistorySize"] == hub_settings.jobs_history_size
    assert config["SaveJobs"] is False
    assert config["ConcurrentJobs"] == hub_settings.orthanc_concurrent_jobs
    assert config["DicomModalitiesInDatabase"] is True
    assert config["DicomAlwaysAllowStore"] is True and config["DicomAlwaysAllowEcho"] is True
    # Query/retrieve: registered modalities only, from their registered host (tests/security/test_dicom_identity.py).
    assert config["DicomCheckModalityHost"] is True
    assert not [k for k in ("Find", "FindWorklist", "Get", "Move") if config[f"DicomAlwaysAllow{k}"] is not False]
    # Recycling would delete undelivered studies: never on.
    assert config["MaximumStorageSize"] == 0 and config["MaximumPatientCount"] == 0
    assert config["OverwriteInstances"] is False


def test_lua_scripts(hub_settings: Settings, tmp_path: Path) -> None:
    default = render_orthanc_config(hub_settings)["LuaScripts"]
    assert len(default) == 1 and default[0].endswith("stack/lua/hub.lua") and Path(default[0]).is_file()
    script = tmp_path / "x.lua"
    assert render_orthanc_config(hub_settings, lua_scripts=[script])["LuaScripts"] == [str(script)]
    assert render_orthanc_config(hub_settings, lua_scripts=[])["LuaScripts"] == []


def test_written_file_is_private_json(hub_settings: Settings, tmp_path: Path) -> None:
    path = write_orthanc_config(hub_settings, tmp_path / "sub" / "orthanc.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == render_orthanc_config(hub_settings)


def test_environment_has_nodelay_and_site_tz(hub_settings: Settings) -> None:
    env = orthanc_env(hub_settings, base={"PATH": "/usr/bin", "TZ": "UTC"})
    assert env == {"PATH": "/usr/bin", "TZ": hub_settings.tz, "TCP_NODELAY": "1"}


def _keys(node: Any) -> set[str]:
    if not isinstance(node, dict):
        return set()
    return {key for k, v in node.items() for key in ({k} | _keys(v))}


def test_the_template_is_the_only_place_settings_are_stated() -> None:
    """stack/orthanc/orthanc.json.template states every Orthanc setting; the renderer
    states none of them (a key written in Python would be a second source)."""
    assert TEMPLATE == PROJECT_ROOT / "stack" / "orthanc" / "orthanc.json.template"
    template = read_template()
    source = Path(ops.orthanc_config.__file__).read_text()
    keys = _keys(template) - {k for k in _keys(template) if "${" in k}
    assert len(keys) > 40
    assert sorted(k for k in keys if f'"{k}"' in source) == []


@pytest.mark.parametrize("target", [NATIVE, COMPOSE], ids=lambda t: t.name)
def test_every_placeholder_is_filled(hub_settings: Settings, target: Any) -> None:
    assert {"ORTHANC_AET", "ORTHANC_PASSWORD", "POSTGRES_PASSWORD", "ORTHANC_PLUGINS"} <= placeholders(read_template())
    config = render_orthanc_config(hub_settings, target=target)
    assert placeholders(config) == set()
    assert config["Name"] == f"Routing hub {hub_settings.orthanc_aet}"
    assert config["WebViewer"]["CachePath"] == str(hub_settings.dicom_storage / "WebViewerCache")


def test_compose_target_differs_only_in_paths(hub_settings: Settings) -> None:
    native = render_orthanc_config(hub_settings)
    compose = render_orthanc_config(hub_settings, target=COMPOSE)
    assert {k for k in native if native[k] != compose[k]} == {"Plugins", "LuaScripts"}
    assert compose["Plugins"] == ["/usr/share/orthanc/plugins/"]
    assert compose["LuaScripts"] == [f"{COMPOSE.lua_dir}/hub.lua"]


def test_dollar_signs_survive_the_compose_image(make_settings: Any, tmp_path: Path) -> None:
    """The orthancteam/orthanc image substitutes $NAME in /etc/orthanc/*.json: the file has none."""
    settings = make_settings(ORTHANC_PASSWORD="pa$HOME-${PATH}-\\$x-long")
    path = write_orthanc_config(settings, tmp_path / "orthanc.json", target=COMPOSE)
    assert "$" not in path.read_text()
    config = json.loads(path.read_text())
    assert config["RegisteredUsers"] == {settings.orthanc_username: "pa$HOME-${PATH}-\\$x-long"}


def test_orthanc_runs_through_the_log_filter(tmp_path: Path) -> None:
    argv = orthanc_argv(tmp_path / "orthanc.json")
    assert argv[2:] == [str(LOG_FILTER), "--", "/usr/sbin/Orthanc", str(tmp_path / "orthanc.json")]
    assert LOG_FILTER.is_file()
