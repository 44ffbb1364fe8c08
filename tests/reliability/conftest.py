"""Fixtures of the reliability suite: a routing topology with two PACS and an AI node.

Every study goes to PACS1 and PACS2; leg-length studies also go to the AI node
(the session's `ai_node`, AET MERCURE), whose results go to PACS1. So "delivered
everywhere its rules say" differs from study to study and is counted at the peers.

The runs draw their randomness (schedules, crash points, study sizes) from one
seed, printed at the start; `RELIABILITY_SEED=<n>` replays a run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.dicom_peers import AINode, StorageSCP
from testkit.harness.worker_proc import rules_file
from tests.integration.conftest import db, env, workers  # noqa: F401

SEED_ENV = "RELIABILITY_SEED"
# The AI node's "study complete" time in this suite. Beside a CPU hog on every core, two
# instances of one store job have arrived 0.7 s apart (the session node's 0.5 s quiet
# time plus its 0.2 s inference), and the node then processed the study as two rounds:
# no instance twice, yet "the AI processed a study twice". mercure waits minutes.
AI_QUIET_S = 3.0
LEG_LENGTH = "XR EXTREMITY BILATERAL BONE LENGTH"
# Retries fast and plentiful: a job must outlast every outage of a run, and `dead` would be
# a failure of the test, not a designed outcome.
OUTLASTING_RETRIES = {"RETRY_BASE": "0.5", "RETRY_CAP": "2", "RETRY_MAX_ATTEMPTS": "100"}
RULES = """
version: 1
rules:
  - name: originals-to-both-pacs
    when: {kind: original}
    then: {deliver_to: [PACS1, PACS2], payload: matched}
  - name: leg-length-to-ai
    when:
      kind: original
      all: [{tag: StudyDescription, contains: BONE LENGTH, ignore_case: true}]
    then: {send_to_ai: true, payload: matched}
  - name: ai-results-to-pacs1
    when: {kind: ai_result}
    then: {deliver_to: [PACS1], payload: matched}
"""


@pytest.fixture
def seed() -> int:
    """The run's seed: RELIABILITY_SEED when set, otherwise a fresh one (printed)."""
    value = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**31))
    print(f"\n{SEED_ENV}={value}")
    return value


@dataclass(frozen=True)
class Topology:
    pacs1: StorageSCP
    pacs2: StorageSCP
    ai: AINode
    values: dict[str, str]  # the worker's raw settings (rules included)

    @property
    def pacs(self) -> tuple[StorageSCP, StorageSCP]:
        return (self.pacs1, self.pacs2)


@pytest.fixture
def topology(env: dict, make_pacs: Callable[..., StorageSCP], ai_node: AINode, clean_orthanc,  # noqa: F811
             tmp_path: Path) -> Topology:
    """PACS1, PACS2 and MERCURE registered in an emptied Orthanc, with the suite's rules.

    Retries outlast every outage of the run (OUTLASTING_RETRIES). The AI node waits
    AI_QUIET_S for a study to be complete, so that a round is the hub's send, not the load's gap.
    """
    ai_node.quiet_s = AI_QUIET_S
    pacs1, pacs2 = make_pacs("PACS1"), make_pacs("PACS2")
    rest = clean_orthanc.rest
    for name, scp in (("PACS1", pacs1), ("PACS2", pacs2), ("MERCURE", ai_node)):
        rest.put_modality(name, scp.aet, scp.port)
    values = {**env, "ROUTING_RULES": rules_file(tmp_path, RULES), **OUTLASTING_RETRIES}
    return Topology(pacs1, pacs2, ai_node, values)
