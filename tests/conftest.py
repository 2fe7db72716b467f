"""Shared fixtures: every backend test runs on a real SQLite file and on the real
PostgreSQL server (its own schema per test, dropped afterwards).

PostgreSQL tests skip with a message when no server answers, except under
``CI=true``, where an unreachable server fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from hypothesis import settings
from chatledger import ChatLedger, ManualClock, SessionPolicy
from psycopg import sql

POSTGRES_URL = os.environ.get(
    "CHATLEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
POSTGRES_CONNINFO = os.environ.get(
    "CHATLEDGER_TEST_POSTGRES_CONNINFO", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_ok: bool | None = None


def postgres_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            with psycopg.connect(POSTGRES_CONNINFO, connect_timeout=3):
                _pg_ok = True
        except psycopg.Error:
            _pg_ok = False
    return _pg_ok


def require_postgres() -> None:
    if postgres_available():
        return
    if IN_CI:
        pytest.fail("CI=true but PostgreSQL at 127.0.0.1:5432 does not answer")
    pytest.skip("PostgreSQL at 127.0.0.1:5432 does not answer; start it to run these tests")


def drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL with a schema of its own, dropped after the test."""
    require_postgres()
    schema = f"t_{uuid4().hex[:16]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    drop_schema(schema)


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{tmp_path}/chat.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """Each test using this runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chat.db"
        return
    require_postgres()
    schema = f"t_{uuid4().hex[:16]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    drop_schema(schema)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def policy() -> SessionPolicy:
    return SessionPolicy()


@pytest.fixture
def ledger(database_url: str, clock: ManualClock, policy: SessionPolicy) -> Iterator[ChatLedger]:
    ledger = ChatLedger.open(database_url, clock=clock, policy=policy)
    yield ledger
    ledger.close()


# Hypothesis profiles: "full" (the library's defaults) runs in the full suite; "fast" (a tenth of
# the examples) in the fast loop, ``pytest -m "not slow"``, unless --hypothesis-profile names
# one. A property's own example count scales with it: tests.helpers.examples(full).
settings.register_profile("full", settings.get_profile("default"))
settings.register_profile("fast", max_examples=10)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_profile", None) is None:
        fast = (config.getoption("markexpr", "") or "").replace(" ", "") == "notslow"
        settings.load_profile("fast" if fast else "full")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast loop (``pytest -m "not slow"``) is the whole behaviour on SQLite:
    every PostgreSQL test also counts as slow. CI runs everything."""
    for item in items:
        if item.get_closest_marker("postgres") is not None:
            item.add_marker(pytest.mark.slow)
