"""Orthanc 1.10.1 configuration rendered from the hub's Settings.

One renderer serves the native stack, the compose stack and the test harness, so
the Orthanc that tests exercise is configured exactly like the one in production.
The rendered file holds the Orthanc and PostgreSQL passwords: it is written mode 600.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.envfile import write_private
from core.settings import PROJECT_ROOT, Settings

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
# Loaded one by one: a folder would also load the PostgreSQL *storage* plugin and the
# worklist and serve-folders plugins, which the hub does not want.
PLUGINS = ("libOrthancPostgreSQLIndex.so", "libOrthancDicomWeb.so", "libOrthancWebViewer.so")
DEFAULT_LUA = PROJECT_ROOT / "stack" / "lua" / "hub.lua"
LOG_FILTER = PROJECT_ROOT / "ops" / "logredact.py"


def render_orthanc_config(settings: Settings, *, lua_scripts: list[Path] | None = None) -> dict[str, Any]:
    """Return Orthanc's JSON configuration (as a dict) for `settings`."""
    scripts = [DEFAULT_LUA] if lua_scripts is None else lua_scripts
    storage = str(settings.dicom_storage)
    return {
        "Name": f"Routing hub {settings.orthanc_aet}",
        "StorageDirectory": storage,
        # Unused while the PostgreSQL index is enabled, but Orthanc still creates it:
        # keep it inside the hub's storage rather than the Debian default.
        "IndexDirectory": storage,
        "StorageCompression": False,
        # Recycling must never delete a study the worker has not delivered yet: with
        # a size or patient limit, Orthanc silently drops the oldest patients when the
        # disk fills, including studies still queued for a destination or the AI.
        # Settings refuse these options by name; docs/operations.md ("Disk space and
        # recycling") tells operators how to free space by deleting delivered studies only.
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        # A resent instance must not replace the stored one (and its ReceptionDate and
        # RemoteAET metadata, which the QI timings and AI-result detection rely on).
        "OverwriteInstances": False,
        "Plugins": [str(PLUGIN_DIR / name) for name in PLUGINS],
        "LuaScripts": [str(Path(p).resolve()) for p in scripts],
        "HttpServerEnabled": True,
        "HttpPort": settings.orthanc_web_port,
        "HttpDescribeErrors": True,
        "HttpCompressionEnabled": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        # Orthanc 1.10.1 listens on every interface; authentication is what protects it.
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {settings.orthanc_username: settings.orthanc_password.get_secret_value()},
        "DicomServerEnabled": True,
        "DicomAet": settings.orthanc_aet,
        "DicomPort": settings.dicom_port,
        "DicomCheckCalledAet": False,
        # Modalities are managed through REST (`make seed-modalities`, the app) and
        # must survive restarts, so they live in the PostgreSQL index.
        "DicomModalitiesInDatabase": True,
        "DicomModalities": {},
        # Any sender may store and echo (a routing hub receives from many modalities
        # whose addresses change); the sender's AET and address are recorded as RemoteAET
        # and RemoteIP metadata, and the worker trusts an AI result only when both match
        # a registered modality (worker/ingest.py).
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        # Reading studies back out (C-FIND, C-GET, C-MOVE) is for registered modalities
        # whose own Allow* flag grants it (core/dicom_names.py: off unless enabled), and
        # only from their registered host: a calling AET alone is what any device on the
        # network can choose, its address is not.
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomScuTimeout": 10,
        "DeidentifyLogs": True,
        "StableAge": settings.stable_age,
        # The worker reads each job's outcome from /jobs/{id}; the default history of
        # 10 loses outcomes under load.
        "JobsHistorySize": settings.jobs_history_size,
        # The worker's database is the record of every send. Orthanc's saved jobs are
        # harmful after a crash: the registry is saved every 100 ms, so a store that
        # succeeded just before a SIGKILL is reloaded as running and sent again with
        # no one knowing. Unsaved, a store under way at a crash is gone (404) and the
        # worker resends it. Saving also re-serialises the whole history each change.
        "SaveJobs": False,
        "ConcurrentJobs": settings.orthanc_concurrent_jobs,
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": settings.postgres_host,
            "Port": settings.postgres_port,
            "Database": settings.postgres_db,
            "Username": settings.postgres_user,
            "Password": settings.postgres_password.get_secret_value(),
            "EnableSsl": False,
            # One Orthanc per index database (the plugin's advisory lock).
            "Lock": True,
            # PostgreSQL may still be starting when Orthanc is (re)started.
            "MaximumConnectionRetries": 10,
            "ConnectionRetryInterval": 2,
        },
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
        },
        "WebViewer": {"CachePath": str(settings.dicom_storage / "WebViewerCache")},
    }


def write_orthanc_config(settings: Settings, path: Path, *, lua_scripts: list[Path] | None = None) -> Path:
    """Write the rendered configuration to `path` with mode 600 (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(render_orthanc_config(settings, lua_scripts=lua_scripts), indent=2, sort_keys=True)
    write_private(path, text + "\n")
    return path


def orthanc_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the Orthanc process.

    TCP_NODELAY=1 makes DCMTK disable Nagle's algorithm: on loopback it takes DICOM
    transfers from about 10 to well over 100 instances/s. TZ is the site's zone, so
    that Orthanc's local-time values are those of the site, not of the host.
    """
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    env["TZ"] = settings.tz
    return env


def orthanc_argv(config_path: Path) -> list[str]:
    """Foreground command line for Orthanc (for a subprocess or supervisord).

    Orthanc starts through ops/logredact.py, which becomes Orthanc (same pid) after
    setting up a filter that removes patient identifiers from its output: Orthanc
    1.10.1 logs a PatientID that neither DeidentifyLogs nor a Lua hook can prevent.
    """
    return [sys.executable, "-I", str(LOG_FILTER), "--", str(ORTHANC_BINARY), str(config_path)]
