"""`python -m api`: serve the workflow API with uvicorn on BIND_ADDRESS:ROUTING_API_PORT.

`python -m api --write-openapi docs/openapi.json` writes the OpenAPI document instead
(after changing a route or a model; tests/unit/test_api_schema.py fails until it is).

uvicorn's own access log is off: it prints query strings, which can hold a patient id
or an accession number. api/access.py logs one JSON line per request instead: method,
route template, status, duration and token name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import uvicorn

from api.app import create_app
from core.logs import setup_logging
from core.settings import SettingsError, load_settings


def openapi_text() -> str:
    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the workflow API (uvicorn).")
    parser.add_argument("--write-openapi", type=Path, metavar="PATH", help="write the OpenAPI document and exit")
    args = parser.parse_args(argv)
    if args.write_openapi:
        args.write_openapi.write_text(openapi_text(), encoding="utf-8")
        return 0
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 3
    uvicorn.run(
        create_app(settings), host=settings.bind_address, port=settings.routing_api_port,
        log_config=None, access_log=False, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
