"""`make seed-modalities`: apply the MODALITY_* lines of `.env` to Orthanc, idempotently.

All lines are validated before anything is sent, so a malformed line never leaves
Orthanc with half of the intended destinations. Destinations that exist in Orthanc
but not in `.env` (added in the app) are left alone, and fields Orthanc keeps beyond
AET/host/port and the DICOM permissions (for example ones set in the app) survive an
update. Each line's permissions are written explicitly (core/dicom_names.py: echo and
store, query/retrieve only when the line enables it), so a destination registered by
an older version, with Orthanc's allow-everything defaults, is tightened by a re-seed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.dicom_names import Modality, parse_modality_line
from core.envfile import EnvFileError, read_env_file
from core.orthanc_client import OrthancClient, OrthancError, OrthancUnavailable
from core.settings import MODALITY_PREFIX, SettingsError, env_file_path, load_settings
from ops.tooling import exitcodes


class SeedError(ValueError):
    """One or more MODALITY_* lines are malformed; the message lists each of them."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one destination: created, updated, unchanged, kept or failed."""

    name: str
    action: str
    detail: str = ""


def modality_lines(env_file: Path) -> list[Modality]:
    """Parse every MODALITY_* line of `env_file`; raise SeedError listing every bad one."""
    try:
        values = read_env_file(env_file)
    except EnvFileError as exc:
        raise SeedError(str(exc)) from None
    except FileNotFoundError:
        raise SeedError(f"{env_file} does not exist: run `make setup` first") from None
    errors: list[str] = []
    parsed: list[Modality] = []
    for key, value in values.items():
        if not key.startswith(MODALITY_PREFIX):
            continue
        name = key[len(MODALITY_PREFIX):]
        try:
            modality = parse_modality_line(name, value)
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
            continue
        parsed.append(modality)
    if errors:
        raise SeedError("\n".join(errors))
    return parsed


# Orthanc reports AllowStorageCommitment as these two flags.
_REPORTED_AS = {"AllowStorageCommitment": ("AllowNAction", "AllowEventReport")}
# What a key Orthanc leaves out of a modality's description means.
_ABSENT_MEANS = {"UseDicomTls": False}


def _same(current: dict[str, Any], wanted: Modality) -> bool:
    """True when Orthanc already has this AET, host, port and every permission of the line."""
    for key, value in wanted.orthanc_body().items():
        if key == "Port":
            if int(current.get("Port", 0)) != value:
                return False
        elif key in _REPORTED_AS:
            if any(current.get(k, value) != value for k in _REPORTED_AS[key]):
                return False
        elif current.get(key, _ABSENT_MEANS.get(key)) != value:
            return False
    return True


def retrieve_allowed(entry: dict[str, Any]) -> list[str]:
    """The query/retrieve services Orthanc grants this modality (its Allow* flags default to true)."""
    return [s for s in ("Find", "Get", "Move") if entry.get(f"Allow{s}", True)]


def apply_modalities(client: OrthancClient, wanted: list[Modality]) -> list[Outcome]:
    """Create or update each wanted modality in Orthanc; report destinations left alone.

    Raises OrthancUnavailable when Orthanc cannot be reached before anything is sent.
    A failure of one PUT is reported as that line's outcome and the others go on.
    """
    existing = client.modalities()
    outcomes: list[Outcome] = []
    for modality in wanted:
        current = existing.get(modality.name)
        if current is not None and _same(current, modality):
            outcomes.append(Outcome(modality.name, "unchanged", modality.spec()))
            continue
        body = {**(current or {}), **modality.orthanc_body()}
        try:
            client.request("PUT", f"/modalities/{modality.name}", json=body)
        except OrthancError as exc:
            outcomes.append(Outcome(modality.name, "failed", str(exc)))
            continue
        action = "updated" if current is not None else "created"
        outcomes.append(Outcome(modality.name, action, modality.spec()))
    wanted_names = {m.name for m in wanted}
    for name in sorted(set(existing) - wanted_names):
        open_services = retrieve_allowed(existing[name])
        note = f"; it may query/retrieve (C-{', C-'.join(s.upper() for s in open_services)})" if open_services else ""
        outcomes.append(Outcome(name, "kept", f"not in .env (added in the app); left alone{note}"))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make seed-modalities", description=__doc__)
    parser.add_argument("--env-file", type=Path, default=None, help="the .env to read (default: HUB_ENV_FILE or .env)")
    args = parser.parse_args(argv)
    env_file = args.env_file or env_file_path()
    try:
        wanted = modality_lines(env_file)
    except SeedError as exc:
        print(f"error: malformed destination line(s); nothing was applied:\n  {str(exc).replace(chr(10), chr(10) + '  ')}",
              file=sys.stderr)
        print("expected MODALITY_<NAME>=<AET>|<HOST>|<PORT>[|<SERVICES>], e.g. MODALITY_PACS=PACS|127.0.0.1|11112 "
              "(SERVICES find, get, move or qr enables query/retrieve from that host; tls sends to it "
              "over DICOM TLS)", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        settings = load_settings(env_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if not wanted:
        print(f"no MODALITY_* lines in {env_file}; nothing to apply")
    try:
        with OrthancClient.from_settings(settings, timeout=15) as client:
            outcomes = apply_modalities(client, wanted)
    except OrthancUnavailable as exc:
        print(f"error: {exc}; is the stack running (`make status`)?", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except OrthancError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    width = max((len(o.name) for o in outcomes), default=4)
    for outcome in outcomes:
        print(f"  {outcome.name:<{width}}  {outcome.action:<9}  {outcome.detail}")
    failed = [o for o in outcomes if o.action == "failed"]
    counts = {a: sum(1 for o in outcomes if o.action == a) for a in ("created", "updated", "unchanged", "kept", "failed")}
    print(", ".join(f"{n} {a}" for a, n in counts.items()))
    return exitcodes.FAILED if failed else exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
