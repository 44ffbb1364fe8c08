"""The tags rules see: Orthanc is asked for the series only when a rule tests a series
tag, and for the instance only when a rule tests a tag beyond Orthanc's main tags
(reading it makes Orthanc parse a file on every stable study)."""

from __future__ import annotations

from typing import Any

import pytest

from core.orthanc_client import OrthancClient
from core.rules import parse_rules, series_tags
from testkit.harness.worker_proc import send
from testkit.synthetic import make_study

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


@pytest.mark.parametrize("tag, series_read, instance_read", [
    ("AccessionNumber", False, False), ("Modality", True, False), ("ContentDate", True, True)])
def test_orthanc_is_asked_only_for_the_levels_the_rules_test(clean_orthanc, hub_settings, tag, series_read,
                                                             instance_read):
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
        asked = list(client.paths)
        everything = series_tags(client, orthanc_study["Series"][0], orthanc_study)
    finally:
        client.close()

    assert rules.tags_tested() == {"StudyDescription", tag}
    assert tags["StudyDescription"] == "XR BONE LENGTH" and tags[tag] == expected
    assert any(p.startswith("/series/") for p in asked) is series_read
    assert any(p.endswith("/simplified-tags") for p in asked) is instance_read
    assert {k: everything[k] for k in tags} == tags  # a partial answer never differs from the full one
