"""Orthanc timestamps: UTC, at the whole-second resolution of its change dates."""

from datetime import UTC, datetime

from core.orthanc_client import parse_orthanc_time


def test_change_dates_and_job_times_share_whole_seconds():
    reception = parse_orthanc_time("20261128T051322")
    job_done = parse_orthanc_time("20261128T051322.103893")
    assert reception == job_done == datetime(2026, 11, 28, 5, 13, 22, tzinfo=UTC)


def test_missing_time_is_none():
    assert parse_orthanc_time(None) is None and parse_orthanc_time("") is None
