"""Time-ordered session ids (UUIDv7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from chatledger.domain.errors import InvalidCommandError
from chatledger.domain.ids import uuid7, uuid7_time_ms
from hypothesis import given
from hypothesis import strategies as st

moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


@given(moments, moments)
def test_ids_sort_by_start_time_in_every_representation(a: datetime, b: datetime) -> None:
    ia, ib = uuid7(a), uuid7(b)
    assert ia.version == ib.version == 7 and ia.variant == ib.variant == "specified in RFC 4122"
    ms_a, ms_b = int(a.timestamp() * 1000), int(b.timestamp() * 1000)
    assert (uuid7_time_ms(ia), uuid7_time_ms(ib)) == (ms_a, ms_b)
    if ms_a < ms_b:
        # integers, bytes (PostgreSQL's uuid order), hex and str (SQLite's TEXT keys)
        assert ia.int < ib.int and ia.bytes < ib.bytes and ia.hex < ib.hex and str(ia) < str(ib)


def test_ids_of_the_same_millisecond_differ() -> None:
    at = datetime(2026, 11, 25, 12, tzinfo=UTC)
    ids = {uuid7(at) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert {uuid7_time_ms(i) for i in ids} == {int(at.timestamp() * 1000)}


def test_offsets_are_converted_and_naive_or_out_of_range_times_refused() -> None:
    at = datetime(2026, 11, 25, 14, tzinfo=timezone(timedelta(hours=2)))
    assert uuid7_time_ms(uuid7(at)) == int(at.timestamp() * 1000)
    with pytest.raises(InvalidCommandError, match="no timezone"):
        uuid7(datetime(2026, 11, 25))
    with pytest.raises(ValueError, match="UUIDv7"):
        uuid7(datetime(1969, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError, match="not a version-7"):
        uuid7_time_ms(uuid7(at).__class__(int=0))
