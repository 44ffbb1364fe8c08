"""The demo never re-points a destination that is not a loopback demo peer."""

import pytest

from testkit.demo import DemoRefused, check_modalities


def test_refuses_a_destination_outside_loopback():
    existing = {"MODLINK": {"AET": "MODLINK", "Host": "pacs.hospital.example", "Port": 104}}
    with pytest.raises(DemoRefused, match="already has a destination MODLINK at pacs.hospital.example"):
        check_modalities(existing, ["MERCURE", "MODLINK"])


def test_accepts_unused_names_and_earlier_demo_peers():
    check_modalities({"MODLINK": {"Host": "127.0.0.1"}, "OTHER": {"Host": "pacs.example"}}, ["MODLINK", "MERCURE"])
