"""`make audit`: pip-audit of the pinned requirements, with a decision CI can trust.

pip-audit on its own exits 0 and says "No known vulnerabilities found" when it could
not audit a single package (PyPI answers 404 for an unknown version, a mirror serves
no vulnerability data): an audit that silently does nothing is worse than none. So
this wrapper reads pip-audit's JSON and decides itself:

- exit 1 (FAILED) when a pinned package has a known vulnerability with a fix version;
- exit 4 (UNAVAILABLE) when the audit could not run (network, PyPI) or any package
  could not be audited;
- exit 0 otherwise, with a warning for vulnerabilities that have no fix yet.

`make test` passes `--if-unavailable warn`: where PyPI's per-version JSON API is not
served (some registry mirrors and proxies answer 404 for it), the test run goes on with
a loud warning naming every pin that was not audited, instead of failing every test run
on that machine. A fixable vulnerability still fails it. `make audit` stays strict.

Every pin in requirements.txt is exact, so pip-audit runs with `--no-deps
--disable-pip` (no virtual environment, no download) against PyPI's vulnerability
service, the only one a machine that reaches nothing but PyPI can use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.tooling import exitcodes

AUDIT_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    vuln_id: str
    fix_versions: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def fixable(self) -> bool:
        return bool(self.fix_versions)


@dataclass
class Verdict:
    """What the audit found, and the exit code it deserves."""

    audited: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    not_audited: dict[str, str] = field(default_factory=dict)  # package -> why
    error: str | None = None

    @property
    def fixable(self) -> list[Finding]:
        return [f for f in self.findings if f.fixable]

    @property
    def unfixable(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixable]

    @property
    def exit_code(self) -> int:
        if self.fixable:
            return exitcodes.FAILED
        if self.error is not None or self.not_audited or not self.audited:
            return exitcodes.UNAVAILABLE
        return exitcodes.OK


def judge(report: dict[str, Any]) -> Verdict:
    """Turn pip-audit's JSON (`--format json`) into a Verdict."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):
        name = str(dep.get("name", "?"))
        if "skip_reason" in dep:
            verdict.not_audited[name] = str(dep["skip_reason"])
            continue
        verdict.audited.append(name)
        for vuln in dep.get("vulns", []):
            verdict.findings.append(Finding(
                package=name, version=str(dep.get("version", "?")), vuln_id=str(vuln.get("id", "?")),
                fix_versions=tuple(str(v) for v in vuln.get("fix_versions", [])),
                aliases=tuple(str(a) for a in vuln.get("aliases", [])),
            ))
    return verdict


def parse_output(returncode: int, stdout: str, stderr: str) -> Verdict:
    """pip-audit's result: its JSON when it wrote some, otherwise why it could not run."""
    try:
        report = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and "dependencies" in report:
        return judge(report)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"pip-audit exited with {returncode} and wrote no report"
    return Verdict(error=reason)


def pip_audit_argv(requirements: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip",
        "--vulnerability-service", "pypi", "--format", "json", "--aliases", "on",
        "--progress-spinner", "off", "--timeout", str(REQUEST_TIMEOUT_S),
    ]


def run_audit(requirements: Path) -> Verdict:
    try:
        proc = subprocess.run(pip_audit_argv(requirements), capture_output=True, text=True,
                              timeout=AUDIT_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Verdict(error=f"pip-audit did not finish within {AUDIT_TIMEOUT_S} s")
    return parse_output(proc.returncode, proc.stdout, proc.stderr)


def render(verdict: Verdict, requirements: Path) -> str:
    """A table of findings and a one-line conclusion, for a terminal or a CI log."""
    out: list[str] = []
    if verdict.findings:
        rows = [("Package", "Version", "Vulnerability", "Fixed in")] + [
            (f.package, f.version, " / ".join((f.vuln_id, *f.aliases[:1])), ", ".join(f.fix_versions) or "no fix yet")
            for f in sorted(verdict.findings, key=lambda f: (f.package, f.vuln_id))
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for i, row in enumerate(rows):
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    for name, why in sorted(verdict.not_audited.items()):
        out.append(f"NOT AUDITED {name}: {why}")
    if verdict.error is not None:
        out.append(f"ERROR: the audit could not run: {verdict.error}")
    if verdict.fixable:
        names = sorted({f"{f.package}>={min(f.fix_versions)}" for f in verdict.fixable})
        out.append(f"FAILED: {len(verdict.fixable)} known vulnerabilities have a fix; raise the pins in "
                   f"{requirements}: {', '.join(names)}")
    if verdict.unfixable:
        out.append(f"WARNING: {len(verdict.unfixable)} known vulnerabilities have no fix version yet; "
                   "review them (they do not fail the audit)")
    if verdict.exit_code == exitcodes.UNAVAILABLE:
        out.append("FAILED: the dependency audit is incomplete, so it proves nothing. pip-audit needs "
                   "https://pypi.org/pypi/<name>/<version>/json for each pin.")
    elif verdict.exit_code == exitcodes.OK:
        out.append(f"OK: {len(verdict.audited)} pinned packages audited; no vulnerability with a fix.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.tooling.dependency_audit", description=__doc__.split("\n")[0])
    parser.add_argument("requirements", type=Path, help="a requirements file with exact pins (==)")
    parser.add_argument("--if-unavailable", choices=("fail", "warn"), default="fail",
                        help="when the audit cannot run or a pin cannot be audited: exit 4 (default) or warn and exit 0")
    args = parser.parse_args(argv)
    if not args.requirements.is_file():
        print(f"ERROR: {args.requirements} does not exist", file=sys.stderr)
        return exitcodes.CONFIG
    started = time.monotonic()
    verdict = run_audit(args.requirements)
    print(render(verdict, args.requirements))
    print(f"(pip-audit of {args.requirements}: {time.monotonic() - started:.1f} s)")
    if verdict.exit_code == exitcodes.UNAVAILABLE and args.if_unavailable == "warn":
        print("WARNING: continuing without a dependency audit (--if-unavailable warn); run `make audit` "
              "where https://pypi.org/pypi/<name>/<version>/json is reachable.")
        return exitcodes.OK
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
