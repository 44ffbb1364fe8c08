"""ORTHANC_NODES: settings, each node's Orthanc configuration, its supervisord program,
and the worker's client of several nodes (docs/scaling.md)."""

from __future__ import annotations

import configparser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.orthanc_client import NODE_GONE_S, OrthancClient, OrthancError, OrthancNodes, OrthancUnavailable
from core.settings import Settings, SettingsError
from ops.orthanc_config import render_orthanc_config
from ops.stack.layout import SERVICES, StackLayout, services
from ops.stack.supervisor_conf import render_supervisord_conf


def two(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(ORTHANC_NODES="2", ORTHANC_NODE_WEB_PORTS="18047", ORTHANC_NODE_DICOM_PORTS="14243")


def test_one_node_by_default_keeps_the_index_lock(hub_settings: Settings) -> None:
    assert [n.name for n in hub_settings.orthanc_node_list] == ["orthanc"]
    assert hub_settings.orthanc_urls == [hub_settings.orthanc_url]
    assert render_orthanc_config(hub_settings)["PostgreSQL"]["Lock"] is True


def test_second_node_shares_index_and_storage_on_its_own_ports(make_settings: Callable[..., Settings]) -> None:
    settings = two(make_settings)
    first, second = (render_orthanc_config(settings, node=k) for k in (1, 2))
    assert first["PostgreSQL"]["Lock"] is False and second["PostgreSQL"]["Lock"] is False
    assert (second["HttpPort"], second["DicomPort"]) == (18047, 14243)
    assert (first["HttpPort"], first["DicomPort"]) == (settings.orthanc_web_port, settings.dicom_port)
    assert first["WebViewer"]["CachePath"] != second["WebViewer"]["CachePath"]  # one process's SQLite each
    own = ("HttpPort", "DicomPort", "WebViewer")
    assert {k: v for k, v in first.items() if k not in own} == {k: v for k, v in second.items() if k not in own}
    assert settings.orthanc_urls[1].endswith(":18047")
    with pytest.raises(ValueError):
        render_orthanc_config(settings, node=3)


def test_compose_nodes_are_reached_by_service_name(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORTHANC_NODES="2", ORTHANC_NODE_WEB_PORTS="18047", ORTHANC_NODE_DICOM_PORTS="14243",
                             ORTHANC_HOST="orthanc")
    assert settings.orthanc_urls == [f"http://orthanc:{settings.orthanc_web_port}", "http://orthanc2:18047"]


@pytest.mark.parametrize("overrides", [
    {"ORTHANC_NODES": "3", "ORTHANC_NODE_WEB_PORTS": "18047", "ORTHANC_NODE_DICOM_PORTS": "14243"},
    {"ORTHANC_NODES": "2", "ORTHANC_NODE_WEB_PORTS": "18047", "ORTHANC_NODE_DICOM_PORTS": "18047"},
    {"ORTHANC_NODES": "0"},
])
def test_node_settings_are_checked(make_settings: Callable[..., Settings], overrides: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        make_settings(**overrides)


def test_each_node_is_a_supervisord_program(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = two(make_settings)
    layout = StackLayout.for_settings(settings)
    parser = configparser.RawConfigParser()
    parser.read_string(render_supervisord_conf(settings, tmp_path / ".env", layout, {}))
    assert str(layout.node_config(1)) in parser["program:orthanc"]["command"]
    assert str(layout.node_config(2)) in parser["program:orthanc2"]["command"]
    assert layout.node_config(2) != layout.node_config(1)
    # `make status`, `make logs` and a configuration change's restart cover the second node too.
    assert services(settings) == ("postgres", "orthanc", "orthanc2", "worker", "api", "app", "viewer")
    assert services(make_settings()) == SERVICES


class FakeNode(OrthancClient):
    """An Orthanc node's transport for the client's routing logic (no HTTP)."""

    def __init__(self, jobs: dict[str, dict[str, Any]] | None = None) -> None:
        self.up = True
        self.refuse = True  # down means connection refused (the request never arrived)
        self.jobs_held = jobs or {}
        self.calls: list[tuple[str, str]] = []

    def close(self) -> None:
        pass

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path))
        if not self.up:
            raise OrthancUnavailable("down", refused=self.refuse)
        if path.startswith("/jobs/"):
            job = self.jobs_held.get(path.split("/")[2])
            if job is None:
                raise OrthancError("unknown job", status=404)
            return job
        if path == "/jobs":
            return list(self.jobs_held.values())
        if path.endswith("/store"):
            return {"ID": "job-new"}
        return {"ok": True}


def test_reads_and_refused_requests_fail_over_but_a_maybe_delivered_store_does_not() -> None:
    a, b = FakeNode(), FakeNode()
    nodes = OrthancNodes([a, b])
    a.up = False
    assert nodes.get("/changes") == {"ok": True} and nodes.current == 1
    assert nodes.store_async("PACS", ["s"]) == "job-new" and nodes.job_node["job-new"] == 1
    b.up, b.refuse, a.up = False, False, True
    nodes.current = 1
    with pytest.raises(OrthancUnavailable):  # a timeout: the store may have reached node b
        nodes.store_async("PACS", ["s"])
    assert ("POST", "/modalities/PACS/store") not in a.calls


def test_a_job_is_asked_of_its_node_and_is_unknown_once_that_node_is_gone() -> None:
    clock = [0.0]
    a, b = FakeNode({"j1": {"State": "Running"}}), FakeNode()
    nodes = OrthancNodes([a, b], clock=lambda: clock[0])
    assert nodes.job("j1") == {"State": "Running"} and nodes.job_node["j1"] == 0
    assert [j["State"] for j in nodes.jobs()] == ["Running"]
    a.up = False
    with pytest.raises(OrthancUnavailable):  # its node may come back with it: wait
        nodes.job("j1")
    clock[0] = NODE_GONE_S + 1
    with pytest.raises(OrthancError) as gone:  # dead for good: lost with the node, resend
        nodes.job("j1")
    assert gone.value.status == 404
    a.up = True
    a.jobs_held.clear()  # restarted: SaveJobs is off, its jobs are gone
    with pytest.raises(OrthancError) as unknown:
        nodes.job("j1")
    assert unknown.value.status == 404


def test_real_transport_error_says_whether_the_request_left() -> None:
    client = OrthancClient("http://127.0.0.1:9", "u", "p", timeout=1)
    with pytest.raises(OrthancUnavailable) as refused:
        client.get("/system")
    assert refused.value.refused
    client.close()


def test_modality_changes_reach_every_node() -> None:
    """Each node caches its modalities: the app, the API and `make seed-modalities` change all."""
    a, b = FakeNode(), FakeNode()
    nodes = OrthancNodes([a, b])
    nodes.request("PUT", "/modalities/PACS", json={"AET": "PACS"})
    nodes.delete_modality("PACS")
    for node in (a, b):
        assert [c for c in node.calls if c[1] == "/modalities/PACS"] == [("PUT", "/modalities/PACS"),
                                                                         ("DELETE", "/modalities/PACS")]


def test_status_probes_every_node(make_settings: Callable[..., Settings]) -> None:
    """`make status` (probe_all) checks node 2's REST API and DICOM port too, on node 2's ports;
    nothing listens there in this test, so both report it."""
    from ops.stack.probes import probe_all

    settings = two(make_settings)
    probes = {p.name: p for p in probe_all(settings)}
    assert {"orthanc", "dicom", "orthanc2", "dicom2"} <= set(probes)
    assert ":18047/" in probes["orthanc2"].url and probes["dicom2"].url.endswith(":14243")
    assert not probes["orthanc2"].ok and not probes["dicom2"].ok
    assert str(settings.orthanc_web_port) in probes["orthanc"].url
