"""Orthanc 1.10.1 configuration rendered from the hub's Settings.

Every Orthanc setting is stated once, in stack/orthanc/orthanc.json.template; this
module fills in its ${NAME} placeholders. One renderer serves the native stack
(STATE_DIR/orthanc.json), the compose stack (the `init` service writes the file the
Orthanc container reads: `python -m ops.stack bootstrap --orthanc-config`) and the test
harness, so the Orthanc that tests exercise is configured exactly like the one in
production. Only where Orthanc runs differs between them (a `Target`: plugin and Lua
paths). The rendered file holds the Orthanc and PostgreSQL passwords: it is written
mode 600.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.envfile import write_private
from core.settings import PROJECT_ROOT, Settings

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
# Loaded one by one: a folder would also load the PostgreSQL *storage* plugin and the
# worklist and serve-folders plugins, which the hub does not want.
PLUGINS = ("libOrthancPostgreSQLIndex.so", "libOrthancDicomWeb.so", "libOrthancWebViewer.so")
DEFAULT_LUA = PROJECT_ROOT / "stack" / "lua" / "hub.lua"
LOG_FILTER = PROJECT_ROOT / "ops" / "logredact.py"
TEMPLATE = PROJECT_ROOT / "stack" / "orthanc" / "orthanc.json.template"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


@dataclass(frozen=True)
class Target:
    """Where Orthanc runs: the values of the template's ORTHANC_PLUGINS and
    ORTHANC_LUA_SCRIPTS, the only ones that are not settings of `.env`."""

    name: str
    plugins: tuple[str, ...]
    lua_dir: str  # where Orthanc sees stack/lua

    def lua_scripts(self) -> list[str]:
        return [f"{self.lua_dir}/{DEFAULT_LUA.name}"]


NATIVE = Target("native", tuple(str(PLUGIN_DIR / name) for name in PLUGINS), str(DEFAULT_LUA.parent.resolve()))
# The orthancteam/orthanc image enables a plugin by moving it into its plugin folder
# (the PostgreSQL plugins because the configuration has a PostgreSQL section, DICOMweb
# and OHIF through the service's *_PLUGIN_ENABLED variables), and stack/docker-compose.yml
# mounts stack/lua at COMPOSE.lua_dir.
COMPOSE = Target("compose", ("/usr/share/orthanc/plugins/",), "/opt/hub/lua")


def read_template(path: Path = TEMPLATE) -> Any:
    """The template as parsed JSON, its whole-line `//` comments removed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads("\n".join("" if line.lstrip().startswith("//") else line for line in lines))


def placeholders(node: Any) -> set[str]:
    """The NAMEs of every ${NAME} in `node` (keys included)."""
    if isinstance(node, dict):
        return {name for k, v in node.items() for name in placeholders(k) | placeholders(v)}
    if isinstance(node, list):
        return {name for item in node for name in placeholders(item)}
    return set(PLACEHOLDER.findall(node)) if isinstance(node, str) else set()


def template_values(settings: Settings, names: set[str], target: Target,
                    lua_scripts: list[Path] | None) -> dict[str, Any]:
    """The value of each placeholder: ORTHANC_PLUGINS and ORTHANC_LUA_SCRIPTS from the
    target, any other NAME from the setting of that name (`.env`'s NAME) or the value
    Settings derives under that name (a computed field, e.g. the TLS file paths, which
    are empty while their function is off)."""
    values: dict[str, Any] = {
        "ORTHANC_PLUGINS": list(target.plugins),
        "ORTHANC_LUA_SCRIPTS": (target.lua_scripts() if lua_scripts is None
                                else [str(Path(p).resolve()) for p in lua_scripts]),
    }
    for name in sorted(names - set(values)):
        model = type(settings)
        if name.lower() not in model.model_fields and name.lower() not in model.model_computed_fields:
            raise KeyError(f"{TEMPLATE}: ${{{name}}} is not a setting of config/env.defaults "
                           "nor a value derived by core/settings.py")
        value = getattr(settings, name.lower())
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        values[name] = str(value) if isinstance(value, Path) else value
    return values


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {_text(k, values): _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, str):
        whole = PLACEHOLDER.fullmatch(node)
        return copy.deepcopy(values[whole.group(1)]) if whole else _text(node, values)
    return node


def _text(text: str, values: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise TypeError(f"{TEMPLATE}: ${{{match.group(1)}}} inside {text!r} must be text or a number")
        return str(value)

    return PLACEHOLDER.sub(replace, text)


def render_orthanc_config(settings: Settings, *, lua_scripts: list[Path] | None = None,
                          target: Target = NATIVE, node: int = 1) -> dict[str, Any]:
    """Return Orthanc's JSON configuration (as a dict) for `settings`, from the template.

    `node` (1..ORTHANC_NODES): every node shares the index, the storage and every other
    setting (the Orthanc Book asks that nodes sharing a database share their
    configuration); only the ports differ, node k's ${ORTHANC_WEB_PORT} and ${DICOM_PORT}
    being its entries of ORTHANC_NODE_WEB_PORTS and ORTHANC_NODE_DICOM_PORTS, and what
    one process keeps to itself (${ORTHANC_NODE_SUFFIX}: `-k`) (docs/scaling.md).
    """
    nodes = {n.index: n for n in settings.orthanc_node_list}
    if node not in nodes:
        raise ValueError(f"Orthanc node {node} is not configured (ORTHANC_NODES={settings.orthanc_nodes})")
    template = read_template()
    values = template_values(settings, placeholders(template), target, lua_scripts)
    if node != 1:
        values.update({"ORTHANC_WEB_PORT": nodes[node].web_port, "DICOM_PORT": nodes[node].dicom_port,
                       "ORTHANC_NODE_SUFFIX": f"-{node}"})
    return _fill(template, values)


def orthanc_config_text(config: Mapping[str, Any]) -> str:
    """The file's text. `$` is written as its JSON escape: the orthancteam/orthanc image
    substitutes $NAME in /etc/orthanc/*.json with environment variables, which would
    alter a password holding a `$` (Orthanc reads the escape as `$`)."""
    return json.dumps(config, indent=2, sort_keys=True).replace("$", "\\u0024") + "\n"


def write_orthanc_config(settings: Settings, path: Path, *, lua_scripts: list[Path] | None = None,
                         target: Target = NATIVE, node: int = 1) -> Path:
    """Write the rendered configuration to `path` with mode 600 (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, orthanc_config_text(
        render_orthanc_config(settings, lua_scripts=lua_scripts, target=target, node=node)))
    return path


def orthanc_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the Orthanc process.

    TCP_NODELAY=1 makes DCMTK disable Nagle's algorithm: on loopback it takes DICOM
    transfers from about 10 to well over 100 instances/s. TZ is the site's zone, so
    that Orthanc's local-time values are those of the site, not of the host. With
    HTTPS on, LD_LIBRARY_PATH names the OpenSSL library Debian's Orthanc 1.10.1 needs to
    serve HTTPS without crashing (ops/tls.py, stack/orthanc/civetweb-openssl3.c).
    """
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    env["TZ"] = settings.tz
    if settings.https:
        from ops.tls import civetweb_openssl_dir  # the cryptography package: only when needed

        env["LD_LIBRARY_PATH"] = ":".join(
            [str(civetweb_openssl_dir(settings)), *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))])
    return env


def orthanc_argv(config_path: Path) -> list[str]:
    """Foreground command line for Orthanc (for a subprocess or supervisord).

    Orthanc starts through ops/logredact.py, which becomes Orthanc (same pid) after
    setting up a filter that removes patient identifiers from its output: Orthanc
    1.10.1 logs a PatientID that neither DeidentifyLogs nor a Lua hook can prevent.
    """
    return [sys.executable, "-I", str(LOG_FILTER), "--", str(ORTHANC_BINARY), str(config_path)]
