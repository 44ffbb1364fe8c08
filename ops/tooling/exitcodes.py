"""Exit codes shared by the tooling and the `./orthanc` ops commands.

Scripts and monitoring branch on these, so they are a contract (documented in
docs/operations.md): never reuse a number for a different meaning.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # the operation ran and failed (echo refused, job not retryable, restore check failed)
USAGE = 2  # bad command line (typer/click's own code)
CONFIG = 3  # the configuration (.env, MODALITY_ line, archive) is invalid; nothing was changed
UNAVAILABLE = 4  # a service the command needs (Orthanc, PostgreSQL, worker) is unreachable
NOT_FOUND = 5  # the study, job, destination or backup named does not exist
ABORTED = 6  # the operator declined a confirmation; nothing was changed
