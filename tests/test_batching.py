"""The one batching helper (``IN (...)`` lists of ids across the read models and the store)."""

from __future__ import annotations

import pytest
from chatledger.domain.batching import IN_LIST_BATCH, batched
from hypothesis import given
from hypothesis import strategies as st


@given(st.lists(st.integers(), max_size=60), st.integers(min_value=1, max_value=20))
def test_batches_cover_the_sequence_in_order_and_none_is_too_long(items: list[int], size: int) -> None:
    batches = list(batched(items, size))
    assert [x for batch in batches for x in batch] == items
    assert all(0 < len(batch) <= size for batch in batches)
    assert all(len(batch) == size for batch in batches[:-1])


def test_the_default_fits_sqlites_oldest_parameter_limit() -> None:
    assert IN_LIST_BATCH <= 999
    assert [len(b) for b in batched(list(range(1001)))] == [500, 500, 1]


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(batched([1], 0))
