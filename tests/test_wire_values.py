"""Values the servicer builds by hand for speed agree with protobuf's own helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from service.servicer import _timestamp

MOMENTS = [
    datetime(2026, 12, 6, 17, 30, 1, 123000, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
    datetime(2100, 1, 1, tzinfo=UTC),
    datetime(2026, 12, 7, 1, 30, 1, 999999, tzinfo=timezone(timedelta(hours=8))),  # not UTC
    datetime(2026, 12, 6, 17, 30, 1, 1),  # naive: UTC, as FromDatetime takes it
]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_timestamps_match_from_datetime(moment: datetime) -> None:
    """_timestamp(moment) is the Timestamp that Timestamp.FromDatetime makes of it."""
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert _timestamp(moment) == expected
