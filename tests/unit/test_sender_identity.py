"""Issue 15 without servers: MODALITY_ line permissions, the AI sender origin check, the rules sentence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.dicom_names import Modality, parse_modality_line
from core.rules_status import error_line, rules_problem
from core.sender_checks import AiSenders, describe
from ops.tooling.seed import _same, retrieve_allowed

LA = ZoneInfo("America/Los_Angeles")


def test_old_lines_stay_valid_and_allow_echo_and_store_only() -> None:
    modality = parse_modality_line("PACS", "PACS|127.0.0.1|104")
    assert modality == Modality("PACS", "PACS", "127.0.0.1", 104) and modality.retrieve == ()
    assert modality.spec() == "PACS|127.0.0.1|104"
    body = modality.orthanc_body()
    assert (body["AllowEcho"], body["AllowStore"], body["AllowFind"], body["AllowGet"], body["AllowMove"]) == (
        True, True, False, False, False)


@pytest.mark.parametrize(("services", "wanted"), [
    ("qr", ("find", "get", "move")), ("QR", ("find", "get", "move")), ("find", ("find",)),
    ("move, find", ("find", "move")), ("", ()), ("get,,", ("get",)),
])
def test_a_fourth_field_enables_query_retrieve(services: str, wanted: tuple[str, ...]) -> None:
    modality = parse_modality_line("VIEWER", f"VIEWER|10.1.2.9|104|{services}")
    assert modality.retrieve == wanted
    assert parse_modality_line("VIEWER", modality.spec()) == modality  # the wizard writes spec() back


@pytest.mark.parametrize(("value", "message"), [
    ("VIEWER|10.1.2.9|104|store", "SERVICES being find, get, move or qr"),
    ("VIEWER|10.1.2.9|104|qr|x", "expected AET|HOST|PORT"),
    ("VIEWER|viewer.example|104|find", "needs the host as an IP address"),
])
def test_bad_services_and_a_named_host_for_query_retrieve_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        parse_modality_line("VIEWER", value)
    parse_modality_line("VIEWER", "VIEWER|viewer.example|104")  # a name is fine without query/retrieve


def test_seed_rewrites_a_modality_registered_with_orthancs_allow_everything_defaults() -> None:
    wanted = parse_modality_line("MODLINK", "MODLINK|127.0.0.1|104")
    old = {"AET": "MODLINK", "Host": "127.0.0.1", "Port": 104, "AllowEcho": True, "AllowStore": True,
           "AllowFind": True, "AllowGet": True, "AllowMove": True, "AllowFindWorklist": True,
           "AllowNAction": True, "AllowEventReport": True}
    assert not _same(old, wanted) and retrieve_allowed(old) == ["Find", "Get", "Move"]
    tightened = {**old, "AllowFind": False, "AllowGet": False, "AllowMove": False, "AllowFindWorklist": False,
                 "AllowNAction": False, "AllowEventReport": False}
    assert _same(tightened, wanted) and retrieve_allowed(tightened) == []


class Modalities:
    """The part of OrthancClient the check uses, with a registered MERCURE."""

    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries = entries
        self.calls = 0

    def modalities(self) -> dict[str, dict[str, Any]]:
        self.calls += 1
        return self.entries


def _senders(entries: dict[str, dict[str, Any]], names: dict[str, set[str]] | None = None) -> AiSenders:
    lookups: list[str] = []

    def resolve(host: str) -> set[str]:
        lookups.append(host)
        if host not in (names or {}):
            raise OSError("unknown host")
        return (names or {})[host]

    senders = AiSenders(frozenset({"MERCURE"}), Modalities(entries), resolve=resolve)  # type: ignore[arg-type]
    senders.lookups = lookups  # type: ignore[attr-defined]
    return senders


def test_an_ai_result_needs_the_registered_host_of_a_modality_with_that_aet() -> None:
    senders = _senders({"MERCURE": {"AET": "MERCURE", "Host": "10.1.2.9"}, "PACS": {"AET": "PACS", "Host": "10.1.2.3"}})
    assert senders.claims("MERCURE") and not senders.claims("PACS") and not senders.claims(None)
    assert senders.check("MERCURE", "10.1.2.9").ok
    assert senders.check("MERCURE", "::ffff:10.1.2.9").ok  # an IPv4-mapped address is the same host
    wrong = senders.check("MERCURE", "10.1.2.3")
    assert not wrong.ok and wrong.expected == ("10.1.2.9",)
    assert wrong.detail() == {"sender": "MERCURE", "remote_ip": "10.1.2.3", "expected": ["10.1.2.9"],
                              "reason": "sender address is not the registered host"}
    assert not senders.check("MERCURE", None).ok
    assert not senders.check("MERCURE", "not an address").ok


def test_an_ai_aet_without_a_registered_modality_is_never_trusted() -> None:
    verdict = _senders({"PACS": {"AET": "PACS", "Host": "10.1.2.3"}}).check("MERCURE", "10.1.2.3")
    assert not verdict.ok and verdict.expected == ()
    assert describe(1, "MERCURE", "10.1.2.3", ()) == (
        "1 instance from MERCURE at 10.1.2.3, and no modality is registered with AET MERCURE")


def test_host_names_are_resolved_and_cached() -> None:
    senders = _senders({"MERCURE": {"AET": "MERCURE", "Host": "mercure.example"},
                        "MERCURE2": {"AET": "MERCURE", "Host": "gone.example"}},
                       {"mercure.example": {"10.1.2.9", "fe80::1"}})
    assert senders.check("MERCURE", "10.1.2.9").ok
    assert senders.check("MERCURE", "fe80::1").ok
    assert not senders.check("MERCURE", "10.1.2.3").ok  # the unresolvable host matches nothing
    assert senders.lookups.count("mercure.example") == 1  # type: ignore[attr-defined]


def test_the_overview_sentence() -> None:
    assert describe(3, "MERCURE", "10.1.2.3", ["10.1.2.9"]) == "3 instances from MERCURE at 10.1.2.3, expected 10.1.2.9"


def test_the_degraded_rules_sentence() -> None:
    now = datetime(2026, 12, 6, 22, 30, tzinfo=UTC)  # 14:30 in Los Angeles
    loaded = datetime(2026, 12, 6, 22, 5, tzinfo=UTC)
    error = "routing.yml:12: rules.0.then.deliver_to.0: a destination name holds letters\nrouting.yml:14: x"
    assert error_line(error) == 12
    assert rules_problem(error, loaded, LA, now=now) == "routing.yml refused at line 12, running on rules of 14:05"
    assert rules_problem(error, datetime(2026, 12, 1, 17, 0, tzinfo=UTC), LA, now=now) == (
        "routing.yml refused at line 12, running on rules of 2026-12-01 09:00")
    assert rules_problem(error, None, LA, now=now) == "routing.yml refused at line 12, running on no rules: nothing is routed"
    assert rules_problem("routing.yml: cannot read: No such file or directory", loaded, LA, now=now) == (
        "routing.yml refused (cannot read: No such file or directory), running on rules of 14:05")
    assert rules_problem(None, loaded, LA) is None
