"""The dependency audit's decision on pip-audit's JSON, and its handling of a dead audit.

The decision is tested on plain data shaped like pip-audit 2.10's `--format json`
output; main() is run against a pip-audit that cannot reach PyPI (a proxy on a closed
loopback port), which must fail rather than pass quietly.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ops.tooling import dependency_audit as audit
from ops.tooling import exitcodes

CLEAN = {"dependencies": [{"name": "httpx", "version": "0.28.1", "vulns": []},
                          {"name": "bcrypt", "version": "5.0.0", "vulns": []}], "fixes": []}


def _vuln(vid: str, *fixes: str) -> dict:
    return {"id": vid, "fix_versions": list(fixes), "aliases": [f"CVE-{vid[-4:]}"]}


def test_clean_report_passes() -> None:
    verdict = audit.judge(CLEAN)
    assert verdict.exit_code == exitcodes.OK
    assert verdict.audited == ["httpx", "bcrypt"]
    assert "OK: 2 pinned packages audited" in audit.render(verdict, Path("requirements.txt"))


def test_fixable_vulnerability_fails_and_names_the_fix() -> None:
    report = {"dependencies": [
        {"name": "jinja2", "version": "3.1.2", "vulns": [_vuln("GHSA-h5c8-rqwp-cp95", "3.1.3"),
                                                         _vuln("PYSEC-2024-0001", "3.1.4", "3.2.0")]},
        {"name": "httpx", "version": "0.28.1", "vulns": []},
    ], "fixes": []}
    verdict = audit.judge(report)
    assert verdict.exit_code == exitcodes.FAILED
    assert len(verdict.fixable) == 2 and verdict.unfixable == []
    text = audit.render(verdict, Path("requirements.txt"))
    assert "GHSA-h5c8-rqwp-cp95" in text and "3.1.4, 3.2.0" in text
    assert "jinja2>=3.1.3" in text and "FAILED" in text


def test_unfixable_vulnerability_only_warns() -> None:
    report = {"dependencies": [{"name": "ecdsa", "version": "0.19.1", "vulns": [_vuln("GHSA-wj6h-64fc-37mp")]}]}
    verdict = audit.judge(report)
    assert verdict.exit_code == exitcodes.OK
    text = audit.render(verdict, Path("requirements.txt"))
    assert "no fix yet" in text and "WARNING: 1 known vulnerabilities have no fix" in text


def test_fixable_wins_over_unfixable_and_skipped() -> None:
    report = {"dependencies": [
        {"name": "ecdsa", "version": "0.19.1", "vulns": [_vuln("GHSA-wj6h-64fc-37mp")]},
        {"name": "requests", "version": "2.31.0", "vulns": [_vuln("GHSA-9wx4-h78v-vm56", "2.32.0")]},
        {"name": "ghost", "skip_reason": "Dependency not found on PyPI and could not be audited: ghost (1.0)"},
    ]}
    assert audit.judge(report).exit_code == exitcodes.FAILED


def test_a_package_that_could_not_be_audited_fails_the_audit() -> None:
    """pip-audit exits 0 and prints 'No known vulnerabilities found' here; we must not."""
    report = {"dependencies": [
        {"name": "httpx", "version": "0.28.1", "vulns": []},
        {"name": "pydantic", "skip_reason": "Dependency not found on PyPI and could not be audited: pydantic (2.14.4)"},
    ], "fixes": []}
    verdict = audit.judge(report)
    assert verdict.exit_code == exitcodes.UNAVAILABLE
    text = audit.render(verdict, Path("requirements.txt"))
    assert "NOT AUDITED pydantic" in text and "incomplete" in text


def test_an_empty_report_proves_nothing() -> None:
    assert audit.judge({"dependencies": [], "fixes": []}).exit_code == exitcodes.UNAVAILABLE


def test_output_parsing_network_error_and_garbage() -> None:
    assert audit.parse_output(0, json.dumps(CLEAN), "").exit_code == exitcodes.OK
    # pip-audit exits 1 with its JSON when it finds vulnerabilities: the JSON decides.
    found = {"dependencies": [{"name": "a", "version": "1", "vulns": [_vuln("PYSEC-1", "2")]}]}
    assert audit.parse_output(1, json.dumps(found), "").exit_code == exitcodes.FAILED
    dead = audit.parse_output(1, "", "Traceback ...\nrequests.exceptions.ConnectionError: pypi.org unreachable\n")
    assert dead.exit_code == exitcodes.UNAVAILABLE
    assert dead.error == "requests.exceptions.ConnectionError: pypi.org unreachable"
    assert audit.parse_output(2, "not json", "").exit_code == exitcodes.UNAVAILABLE


def test_argv_audits_exact_pins_against_pypi_without_pip() -> None:
    argv = audit.pip_audit_argv(Path("requirements.txt"))
    assert argv[1:5] == ["-m", "pip_audit", "-r", "requirements.txt"]
    assert {"--no-deps", "--disable-pip"} <= set(argv)
    assert argv[argv.index("--vulnerability-service") + 1] == "pypi"
    assert argv[argv.index("--format") + 1] == "json"


def test_requirements_are_all_exact_pins() -> None:
    """--no-deps audits exactly what is written: a loose pin would audit nothing useful."""
    from core.settings import PROJECT_ROOT

    lines = [line.split("#")[0].strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins and all("==" in line for line in pins), pins


def test_main_fails_when_pypi_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("httpx==0.28.1\n")
    assert audit.main([str(requirements)]) == exitcodes.UNAVAILABLE
    out = capsys.readouterr().out
    assert "ERROR: the audit could not run" in out and "127.0.0.1" in out


@pytest.mark.parametrize(("report", "expected"), [
    ({"dependencies": [{"name": "httpx", "version": "0.28.1", "skip_reason": "404 from PyPI"}], "fixes": []},
     exitcodes.OK),
    ({"dependencies": [{"name": "jinja2", "version": "3.1.2", "vulns": [_vuln("GHSA-h5c8-rqwp-cp95", "3.1.3")]},
                       {"name": "httpx", "version": "0.28.1", "skip_reason": "404 from PyPI"}], "fixes": []},
     exitcodes.FAILED),
])
def test_warn_mode_tolerates_only_an_unavailable_audit(report: dict, expected: int, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`make test` passes --if-unavailable warn: a pin PyPI cannot answer for warns, a fixable one fails."""
    monkeypatch.setattr(audit, "run_audit", lambda _requirements: audit.judge(report))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("httpx==0.28.1\n")
    assert audit.main(["--if-unavailable", "warn", str(requirements)]) == expected
    assert audit.main([str(requirements)]) != exitcodes.OK
    out = capsys.readouterr().out
    assert "NOT AUDITED httpx" in out
    if expected == exitcodes.OK:
        assert "WARNING: continuing without a dependency audit" in out


def test_main_refuses_a_missing_file(tmp_path: Path) -> None:
    assert audit.main([str(tmp_path / "nope.txt")]) == exitcodes.CONFIG
