"""`make setup` driven through a pseudo-terminal (pexpect), and `make quick-setup`.

The wizard's final "start the stack" step is skipped with SETUP_ARGS=--no-start: the
tests check what it writes (.env mode 600, values, secrets kept on re-run) and the
directories it creates. Starting the stack is covered by the stack's own tests.
"""

from __future__ import annotations

import io
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pexpect
import pytest

from core.envfile import GENERATED_SECRETS, read_env_file
from core.settings import PROJECT_ROOT, load_settings
from testkit.harness.ports import free_port
from testkit.harness.stack import make_pg_base, remove_tree, write_env

pytestmark = pytest.mark.integration


def make_argv(target: str, *args: str) -> list[str]:
    """`make <target>` through the main Makefile, or mk/tooling.mk while it is absent."""
    base = ["make", "--no-print-directory", "-C", str(PROJECT_ROOT)]
    if not (PROJECT_ROOT / "Makefile").exists():
        base += ["-f", "mk/tooling.mk"]
    return [*base, target, *args]


@pytest.fixture
def site(tmp_path: Path):
    """Paths for one installation: .env, DICOM storage, PostgreSQL data (reachable by postgres)."""
    pg_base = make_pg_base()
    try:
        yield {
            "env": tmp_path / "site" / ".env",
            "dicom": tmp_path / "dicom-store",
            "pg": pg_base / "pgdata",
            "state": tmp_path / "state",
        }
    finally:
        remove_tree(pg_base)


def spawn_setup(env_file: Path, log: io.StringIO) -> pexpect.spawn:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "TERM": "dumb"}
    argv = make_argv("setup", "SETUP_ARGS=--no-start")
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.logfile_read = log
    return child


def answer(child: pexpect.spawn, prompt: str, reply: str) -> None:
    child.expect_exact(prompt)
    child.sendline(reply)


def test_first_install_then_rerun_keeps_secrets(site: dict[str, Path]) -> None:
    env_file: Path = site["env"]
    env_file.parent.mkdir()
    # STATE_DIR is not asked by the wizard; point it at a temp dir through a seed .env
    # line so the test does not touch the checkout's ./var.
    env_file.write_text(f"STATE_DIR={site['state']}\n")
    os.chmod(env_file, 0o600)
    ports = [free_port() for _ in range(7)]
    log = io.StringIO()
    child = spawn_setup(env_file, log)

    answer(child, "DICOM storage path [", "relative/path")
    answer(child, "absolute path", str(site["dicom"]))
    answer(child, "PostgreSQL data path [", str(site["dicom"]))
    answer(child, "must be different", str(site["pg"]))
    answer(child, "Orthanc AE title [ORTHANC_LPCH]", "THIS_AET_IS_FAR_TOO_LONG")
    answer(child, "at most 16 characters", "HUB_TEST")
    answer(child, "Time zone [America/Los_Angeles]", "Mars/Olympus")
    answer(child, "not an IANA time zone", "Europe/Paris")
    answer(child, "(DICOM_PORT) [4242]", "port-four")
    answer(child, "whole number", str(ports[0]))
    answer(child, "(ORTHANC_WEB_PORT) [8041]", str(ports[0]))
    answer(child, "already used by DICOM_PORT", str(ports[1]))
    for key, port in zip(("OPERATOR_UI_PORT", "OHIF_PORT", "POSTGRES_PORT", "ROUTING_API_PORT", "GRAFANA_PORT"),
                         ports[2:], strict=True):
        answer(child, f"({key}) [", str(port))
    answer(child, "Orthanc admin user name [orthanc_admin]", "")
    answer(child, "Operations app admin user name [admin]", "")
    answer(child, "Generate strong passwords (recommended)? [Y/n]", "")
    answer(child, "Enter when done", "PACS=PACS|127.0.0.1|abc")
    answer(child, "whole number", "PACS=PACS|127.0.0.1|11112")
    answer(child, "Enter when done", "mercure=MERCURE|127.0.0.1|11113")
    answer(child, "Enter when done", "")
    child.expect_exact("Summary")
    child.expect_exact("(generated, not shown)")
    answer(child, "Write this configuration to", "y")
    child.expect_exact("(mode 600)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, log.getvalue()

    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["DICOM_STORAGE"] == str(site["dicom"]) and values["POSTGRES_STORAGE"] == str(site["pg"])
    assert values["ORTHANC_AET"] == "HUB_TEST" and values["TZ"] == "Europe/Paris"
    assert values["DICOM_PORT"] == str(ports[0]) and values["ORTHANC_WEB_PORT"] == str(ports[1])
    assert values["MODALITY_PACS"] == "PACS|127.0.0.1|11112"
    assert values["MODALITY_MERCURE"] == "MERCURE|127.0.0.1|11113"
    secrets = {k: values[k] for k in GENERATED_SECRETS}
    assert all(len(v) >= 32 for v in secrets.values()) and len(set(secrets.values())) == len(GENERATED_SECRETS)
    for secret in secrets.values():
        assert secret not in log.getvalue(), "a secret was printed"
    load_settings(env_file)  # the stack will accept it
    assert site["dicom"].is_dir() and site["state"].is_dir()
    assert pwd.getpwuid(site["pg"].stat().st_uid).pw_name == "postgres"
    assert stat.S_IMODE(site["pg"].stat().st_mode) == 0o700

    # Re-run: Enter keeps everything; change the AE title and drop one destination.
    log = io.StringIO()
    child = spawn_setup(env_file, log)
    child.expect_exact("Existing configuration found")
    answer(child, f"DICOM storage path [{site['dicom']}]", "")
    answer(child, f"PostgreSQL data path [{site['pg']}]", "")
    answer(child, "Orthanc AE title [HUB_TEST]", "HUB_TEST2")
    answer(child, "Time zone [Europe/Paris]", "")
    for port in ports:
        answer(child, f"[{port}]", "")
    answer(child, "Orthanc admin user name [orthanc_admin]", "")
    answer(child, "Operations app admin user name [admin]", "")
    answer(child, "Keep the existing passwords? [Y/n]", "")
    child.expect_exact("MERCURE=MERCURE|127.0.0.1|11113")
    answer(child, "Enter when done", "-MERCURE")
    answer(child, "Enter when done", "")
    child.expect_exact("(kept, not shown)")
    answer(child, "Write this configuration to", "")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, log.getvalue()

    again = read_env_file(env_file)
    assert {k: again[k] for k in GENERATED_SECRETS} == secrets, "secrets must be kept on re-run"
    assert again["ORTHANC_AET"] == "HUB_TEST2"
    assert "MODALITY_MERCURE" not in again and again["MODALITY_PACS"] == "PACS|127.0.0.1|11112"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # A third run that declines the summary writes nothing.
    before = env_file.read_bytes()
    child = spawn_setup(env_file, io.StringIO())
    for _ in range(4 + 7 + 2):
        child.expect_exact("]: ")
        child.sendline("")
    answer(child, "Keep the existing passwords? [Y/n]", "n")
    answer(child, "Generate strong passwords (recommended)? [Y/n]", "")
    answer(child, "Enter when done", "")
    answer(child, "Write this configuration to", "n")
    child.expect_exact("nothing was written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2  # make reports any failed recipe as 2 (the wizard exited 6)
    assert env_file.read_bytes() == before


def test_quick_setup_fills_secrets_and_keeps_them(site: dict[str, Path]) -> None:
    env_file = site["env"]
    env_file.parent.mkdir()
    write_env({"DICOM_STORAGE": str(site["dicom"]), "POSTGRES_STORAGE": str(site["pg"]),
               "STATE_DIR": str(site["state"]), "ORTHANC_PASSWORD": ""}, env_file)
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    first = subprocess.run(make_argv("quick-setup", "SETUP_ARGS=--no-start"), env=env, capture_output=True,
                           text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stdout + first.stderr
    values = read_env_file(env_file)
    assert all(len(values[k]) >= 32 for k in GENERATED_SECRETS)
    assert values["DICOM_STORAGE"] == str(site["dicom"])
    for key in GENERATED_SECRETS:
        assert values[key] not in first.stdout + first.stderr
    second = subprocess.run(make_argv("quick-setup", "SETUP_ARGS=--no-start"), env=env, capture_output=True,
                            text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {k: read_env_file(env_file)[k] for k in GENERATED_SECRETS} == {k: values[k] for k in GENERATED_SECRETS}
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
