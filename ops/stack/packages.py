"""The Debian packages the native stack needs, installed only when missing.

The install itself lives in stack/native/install-debian-packages.sh (it carries the
policy-rc.d guard), so that .ci/run can use the same script before any Python
environment exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from core.settings import PROJECT_ROOT

INSTALL_SCRIPT = PROJECT_ROOT / "stack" / "native" / "install-debian-packages.sh"

# orthanc-webviewer is loaded by ops.orthanc_config; dcmtk gives storescu/echoscu
# (used by the status probe); postgresql-15 gives initdb and postgres; age encrypts
# backups (`make backup ENCRYPT=1`, ops/tooling/encryption.py).
NATIVE_PACKAGES: tuple[str, ...] = (
    "orthanc", "orthanc-postgresql", "orthanc-dicomweb", "orthanc-webviewer", "dcmtk", "postgresql-15", "age",
)


class PrerequisiteError(RuntimeError):
    """A package is missing and cannot be installed by this user; says what to run."""


def is_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and proc.stdout.startswith("ii")


def missing_packages(packages: tuple[str, ...] = NATIVE_PACKAGES) -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise PrerequisiteError("the native stack needs a Debian system (dpkg-query was not found)")
    return [p for p in packages if not is_installed(p)]


def ensure_packages(packages: tuple[str, ...] = NATIVE_PACKAGES) -> list[str]:
    """Install what is missing (as root); return the packages that were installed."""
    missing = missing_packages(packages)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise PrerequisiteError(
            f"missing Debian packages: {' '.join(missing)}\n"
            f"install them once as root:  sudo {INSTALL_SCRIPT} {' '.join(missing)}"
        )
    subprocess.run(["bash", str(INSTALL_SCRIPT), *missing], check=True)
    still = missing_packages(packages)
    if still:
        raise PrerequisiteError(f"these packages are still missing after apt-get: {' '.join(still)}")
    return missing
