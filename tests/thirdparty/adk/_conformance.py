"""The backend registry of the ADK session contract tests in this folder: chatledger alone.

ADK holds every ``BaseSessionService`` to one contract: its tests taking the
``session_service`` fixture (google/adk-python, tests/unittests/sessions/test_session_service.py,
with the registry tests/unittests/sessions/_conformance.py; read at commit
11cc093158fed8ad72b40fce0d0bf3d8b2f8aa18, the version nearest the pinned google-adk 2.13.0).
This module is chatledger's own registry of the same shape (``BACKENDS``, each with
``divergences``: test name -> written reason, run as strict xfail; the ``session_service``
fixture), with ``ChatLedgerSessionService`` on a SQLite file and on PostgreSQL as the only
backends. test_session_contract.py restates those contract cases against it; ADK's own file,
dropped next to this module, runs against the same fixture unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from uuid import uuid4

import pytest
import pytest_asyncio
from chatledger import ChatLedger
from chatledger.adapters.adk import ChatLedgerSessionService
from chatledger.aio import AsyncChatLedger
from google.adk.sessions.base_session_service import BaseSessionService

from ...conftest import POSTGRES_URL, drop_schema, require_postgres

_MakeService = Callable[[pathlib.Path], contextlib.AbstractAsyncContextManager[BaseSessionService]]


@dataclasses.dataclass(frozen=True)
class _Backend:
    name: str
    make: _MakeService
    divergences: Mapping[str, str] = dataclasses.field(default_factory=dict)
    marks: tuple[pytest.MarkDecorator, ...] = ()


@contextlib.asynccontextmanager
async def _on(url: str) -> AsyncIterator[BaseSessionService]:
    ledger = AsyncChatLedger(ChatLedger.open(url))
    try:
        yield ChatLedgerSessionService(ledger)
    finally:
        await ledger.aclose()


@contextlib.asynccontextmanager
async def _make_sqlite(tmp_path: pathlib.Path) -> AsyncIterator[BaseSessionService]:
    async with _on(f"sqlite:///{tmp_path}/chatledger.db") as service:
        yield service


_shared: dict[str, ChatLedger] = {}


@pytest.fixture(scope="module", autouse=True)
def _postgres_store() -> Iterator[None]:
    """One PostgreSQL schema and ledger per module, opened on first use (a schema and a
    ledger per case cost ~1.5 s each); each case is isolated by a tenant prefix of its own."""
    yield
    for url, ledger in list(_shared.items()):
        ledger.close()
        drop_schema(url.rsplit("=", 1)[1])
    _shared.clear()


@contextlib.asynccontextmanager
async def _make_postgres(tmp_path: pathlib.Path) -> AsyncIterator[BaseSessionService]:
    del tmp_path
    require_postgres()
    if not _shared:
        url = f"{POSTGRES_URL}?schema=t_{uuid4().hex[:16]}"
        _shared[url] = ChatLedger.open(url)
    (ledger,) = _shared.values()
    # A fresh async wrapper per case (its workers belong to this case's event loop); the
    # shared ledger is closed by _postgres_store.
    yield ChatLedgerSessionService(AsyncChatLedger(ledger), tenant_prefix=f"c{uuid4().hex[:12]}-")


BACKENDS = [
    _Backend("chatledger_sqlite", _make_sqlite),
    _Backend("chatledger_postgres", _make_postgres, marks=(pytest.mark.postgres,)),
]


@pytest_asyncio.fixture(
    params=[pytest.param(b, marks=b.marks, id=b.name) for b in BACKENDS],
)
async def session_service(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[BaseSessionService]:
    """Yields each registered backend in turn, xfailing its known divergences."""
    backend: _Backend = request.param
    divergence = backend.divergences.get(request.node.originalname)
    if divergence is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=divergence))
    async with backend.make(tmp_path) as service:
        yield service
