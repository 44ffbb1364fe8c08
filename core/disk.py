"""Free space on DICOM_STORAGE, measured the same way by the worker and the app.

When this filesystem is full, Orthanc refuses every new instance (C-STORE status
0xA700, REST 500 "Cannot write to file"), so the modality keeps the study. Recycling
is never on (ops/orthanc_config.py), so the only remedy is an operator freeing space:
the warning below DISK_FREE_WARN_MB gives them time to do it.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
DOCS = "docs/operations.md, 'Disk space and recycling'"


def human_size(size: float) -> str:
    """A byte count as an operator reads it: '512 B', '1.5 MiB', '2.0 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@dataclass(frozen=True)
class StorageStatus:
    """One measurement: `status` is ok, low (below the threshold) or unknown (unreadable)."""

    status: str
    path: str
    free_bytes: int | None
    total_bytes: int | None
    warn_below_bytes: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB" if n >= 10 * MIB else f"{n / MIB:.1f} MiB"


def storage_status(path: Path, warn_below_mb: int) -> StorageStatus:
    """Measure `path` (DICOM_STORAGE) against the DISK_FREE_WARN_MB threshold."""
    warn = warn_below_mb * MIB
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return StorageStatus("unknown", str(path), None, None, warn,
                             f"cannot measure DICOM_STORAGE {path}: {exc.strerror or exc}")
    used = f"{mib(usage.free)} free of {mib(usage.total)}"
    if usage.free < warn:
        return StorageStatus(
            "low", str(path), usage.free, usage.total, warn,
            f"DICOM_STORAGE {path} is low: {used} (warning below {mib(warn)}). Orthanc refuses new "
            f"studies when it is full; free space now ({DOCS}).",
        )
    return StorageStatus("ok", str(path), usage.free, usage.total, warn, f"DICOM_STORAGE {path}: {used}")
