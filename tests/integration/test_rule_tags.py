"""The tags rules see: the instance is read only when a rule tests a tag Orthanc's main
tags do not hold (reading it makes Orthanc parse a file on every stable study)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.orthanc_client import OrthancClient
from hub.synthetic import make_study
from tests.harness.worker_proc import send
from worker.router import series_tags
from worker.rules import parse_rules

pytestmark = pytest.mark.integration


class RecordingClient(OrthancClient):
    """The real client, remembering the paths it read."""

    paths: list[str]

    def get(self, path: str, **params: Any) -> Any:
        self.paths.append(path)
        return super().get(path, **params)


RULES = """
version: 1
rules:
  - name: bone-length
    when: {all: [{tag: StudyDescription, contains: BONE LENGTH}], any: [{tag: %s, equals: "%s"}]}
    then: {deliver_to: [PACS]}
"""


@pytest.mark.parametrize("tag, instance_read", [("Modality", False), ("ContentDate", True)])
def test_the_instance_is_read_only_for_tags_beyond_the_main_ones(clean_orthanc, hub_settings, tag, instance_read):
    study = make_study(1, 2, "XR BONE LENGTH")
    send(study, hub_settings)
    rest = clean_orthanc.rest
    orthanc_study = rest.get(f"/studies/{rest.lookup(study[0].StudyInstanceUID)}")
    expected = str(study[0].data_element(tag).value)
    rules = parse_rules(RULES % (tag, expected))
    client = RecordingClient.from_settings(hub_settings)
    client.paths = []
    try:
        tags = series_tags(client, orthanc_study["Series"][0], orthanc_study, rules.tags_tested())
    finally:
        client.close()

    assert rules.tags_tested() == {"StudyDescription", tag}
    assert tags["StudyDescription"] == "XR BONE LENGTH" and tags[tag] == expected
    assert any(p.endswith("/simplified-tags") for p in client.paths) is instance_read
