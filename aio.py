"""``chatledger.aio``: the ledger as awaitables (``pip install 'chatledger[aio]'``).

    >>> from chatledger.aio import AsyncChatLedger
    >>> async with AsyncChatLedger.open("sqlite:///chat.db") as ledger:  # doctest: +SKIP
    ...     turn = await ledger.receive("v-1", "hi")

See :mod:`chatledger.application.aio` (cancellation, worker threads) and docs/api.md.
"""

# Absolute imports in the root package's modules (see __init__.py).
from chatledger.application.aio import AsyncChatLedger, LedgerClosedError

__all__ = ["AsyncChatLedger", "LedgerClosedError"]
