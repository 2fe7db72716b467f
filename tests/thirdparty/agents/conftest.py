from collections.abc import Iterator

import pytest

from ._shim import close_all


@pytest.fixture(autouse=True)
def _close_ledgers() -> Iterator[None]:
    yield
    close_all()
