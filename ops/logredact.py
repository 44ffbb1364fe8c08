"""Orthanc's log output with patient identifiers removed before it reaches any file.

Why a filter: Orthanc 1.10.1 writes `PatientID=<value>` into its error line for an
instance without UIDs ("Store has failed because required tags ... are missing for
the following instance: PatientID=..."). The line comes from Orthanc's core before
any Lua hook runs, `DeidentifyLogs` does not cover it, and no log level silences an
error. So Orthanc is started through this script (ops.orthanc_config.orthanc_argv):

    python -I ops/logredact.py -- /usr/sbin/Orthanc STATE_DIR/orthanc.json

The script forks a filter, then *becomes* Orthanc (exec): supervisord, the test
harness and `make stop` keep seeing Orthanc's own pid and command line, and signals
reach Orthanc directly. Orthanc's stdout and stderr go into a pipe; the forked filter
reads it, replaces each patient value with `<redacted>`, and writes the lines to the
original output (supervisord's log or the harness's file). It ignores SIGTERM/SIGINT/
SIGHUP, so Orthanc's last lines still get through a stop, and it exits when Orthanc
has closed the pipe (has exited).

The filter also puts each line's time in UTC (issue 18): Orthanc stamps its lines
`W1206 08:41:03.106930 main.cpp:2017] ...` in the local time of its TZ (the site's
zone, which Orthanc needs for its own local-time values), without a date's year or a
zone, while the hub's Python services log UTC. So that prefix becomes
`W 2026-12-06T16:41:03.106930Z main.cpp:2017] ...`, as in every other log of the stack.

Standard library only, and runnable as a plain script: the process runs in
STATE_DIR, where the `hub` package is not importable.
"""

from __future__ import annotations

import calendar
import os
import re
import signal
import sys
import time

REDACTED = "<redacted>"
# Patient module keywords (group 0010) and the accession number: each identifies a
# patient or an examination. UIDs stay: they identify instances, not people, and an
# operator needs them to find what a sender sent.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "OtherPatientIDs", "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "AccessionNumber",
)
_KEY = r"(?:\b(?:" + "|".join(PATIENT_KEYWORDS) + r")\b|\(?\b0010,[0-9A-Fa-f]{4}\b\)?|\(?\b0008,0050\b\)?)"
# `Key=value`, `Key: value`, `"Key" : "value"`. An unquoted value ends where the next
# `, Word=` / `, Word:` pair starts, or at the end of the line.
_PAIR = re.compile(
    r'(?P<key>"?' + _KEY + r'"?\s*[=:]\s*)'
    r'(?P<value>"(?:[^"\\]|\\.)*"|.*?(?=,\s*"?[A-Za-z][A-Za-z0-9]*"?\s*[=:]|\r?$))'
)
_CHUNK = 65536
_MAX_LINE = 1 << 20  # a "line" longer than this is filtered and written in pieces


def redact(line: str) -> str:
    """`line` with the value of every patient keyword or group-0010 tag replaced."""

    def replace(match: re.Match[str]) -> str:
        value = match.group("value")
        if not value.strip():
            return match.group(0)
        quote = '"' if value.startswith('"') else ""
        return f"{match.group('key')}{quote}{REDACTED}{quote}"

    return _PAIR.sub(replace, line)


# Orthanc's (glog-style) prefix: severity, MMDD, local time with microseconds.
_STAMP = re.compile(r"^([IWEFT])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")


def utc_stamp(line: str, now: float | None = None) -> str:
    """`line` with Orthanc's local-time prefix rewritten as an ISO 8601 UTC time ('Z').

    The line was written an instant before it is read, so the year and the UTC offset
    are those of `now` (the reading time) in this process's TZ, which is Orthanc's; a
    line of 31 December read on 1 January belongs to the year before.
    """
    match = _STAMP.match(line)
    if not match:
        return line
    local = time.localtime(time.time() if now is None else now)
    month, day = int(match[2]), int(match[3])
    year = local.tm_year - ((month, day) > (local.tm_mon, local.tm_mday))
    seconds = calendar.timegm((year, month, day, int(match[4]), int(match[5]), int(match[6]), 0, 0, 0))
    utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds - local.tm_gmtoff))
    return f"{match[1]} {utc}.{match[7]}Z {line[match.end():]}"


def redact_bytes(raw: bytes) -> bytes:
    """Bytes in, bytes out: undecodable bytes pass through unchanged (surrogateescape)."""
    try:
        return redact(utc_stamp(raw.decode("utf-8", "surrogateescape"))).encode("utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - a log line must never stop the filter
        return b"[logredact: a line was withheld because it could not be filtered]\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pump(source: int, target: int) -> None:
    """Copy `source` to `target` line by line, redacted, until end of file."""
    pending = b""
    while True:
        chunk = os.read(source, _CHUNK)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(redact_bytes(line) + b"\n" for line in lines)
        if len(pending) > _MAX_LINE:
            out += redact_bytes(pending)
            pending = b""
        if out:
            _write_all(target, out)
    if pending:
        _write_all(target, redact_bytes(pending))


def _filter_child(read_end: int, write_end: int) -> None:
    """The forked filter: never returns."""
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        os.close(write_end)
        pump(read_end, sys.stdout.fileno())
    except BrokenPipeError:
        pass  # whoever read our output is gone
    except BaseException:  # noqa: BLE001 - report, then leave
        code = 1
    os._exit(code)


def main(argv: list[str]) -> None:
    """`logredact.py -- PROGRAM [ARGS...]`: run PROGRAM with its output redacted."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: logredact.py -- PROGRAM [ARGS...]", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        _filter_child(read_end, write_end)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python ignores these two; the program gets the default, as under subprocess.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        os.write(2, f"logredact: cannot run {argv[0]}: {exc}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
