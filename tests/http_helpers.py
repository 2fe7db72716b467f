"""Test support for the HTTP service: keys of every scope in a store, and the service on real
uvicorn (127.0.0.1, an ephemeral port) over that store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.application.api_keys import SCOPES
from chatledger.entrypoints.http.app import create_app

from .test_aio_docs import served

PROBLEM = "application/problem+json"
POLICY = SessionPolicy(idle_timeout=timedelta(minutes=30), carry_over_slots=frozenset({"language"}))


def make_tokens(database_url: str) -> dict[str, str]:
    """A key of each scope (and a revoked bot key, ``"revoked"``) in the store at the URL."""
    with ChatLedger.open(database_url) as ledger:
        made = {scope: ledger.api_keys.create(f"{scope} key", [scope])[1] for scope in SCOPES}
        revoked, made["revoked"] = ledger.api_keys.create("old", ["bot"])
        ledger.api_keys.revoke(revoked.key_id)
    return made


@contextmanager
def service(database_url: str, clock: ManualClock, **options: Any) -> Iterator[str]:
    """The service's base URL while the block runs."""
    app = create_app(database_url, clock=clock, policy=POLICY, **options)
    with served(app) as base:
        yield base


def client(base: str, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=base, timeout=30, headers=headers)


def event_count(database_url: str) -> int:
    with ChatLedger.open(database_url) as ledger:
        return len(ledger.events_after(0, limit=10_000))


def problem(response: httpx.Response, status: int, name: str) -> dict[str, Any]:
    """The problem+json body of ``response``, which must be ``status`` and
    ``urn:chatledger:problem:<name>``."""
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:chatledger:problem:{name}" and body["status"] == status, body
    assert body["title"] and body["detail"]
    return body


__all__ = ["POLICY", "PROBLEM", "client", "event_count", "make_tokens", "problem", "service"]
