"""`python -m viewer --dist DIR`: serve the OHIF gateway with uvicorn on BIND_ADDRESS:OHIF_PORT.

DIR is the OHIF viewer's dist/ folder, which ops/stack/ohif.py installs and the stack's
supervisord configuration names (ops/stack/supervisor_conf.py). uvicorn's own access log
is off: its lines carry paths, and the viewer's paths name studies (UIDs). The gateway
logs one JSON line per request instead: method, kind (file, dicomweb, login, refused),
status and duration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from core.logs import setup_logging
from core.settings import SettingsError, load_settings
from viewer.app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer", description="Serve the OHIF gateway (uvicorn).")
    parser.add_argument("--dist", type=Path, required=True, help="the OHIF viewer's dist/ folder")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 3
    try:
        app = create_app(settings, args.dist)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app, host=settings.bind_address, port=settings.ohif_port,
        log_config=None, access_log=False, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
