"""Tenants, reviewed as an attacker (issue 13 follow-up): what one tenant could
reach of another's through state shared by name across the store (webhook
subscriptions) or through the store-wide switches (``all_tenants``). On a real
SQLite file and on PostgreSQL, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from chatledger import ChatLedger, InvalidCommandError, ManualClock

from .helpers import log_head


@pytest.fixture
def hook() -> Iterator[Callable[[int], tuple[str, list[str]]]]:
    """A local receiver answering ``code`` to every POST; (url, event ids received)."""
    servers: list[ThreadingHTTPServer] = []

    def start(code: int) -> tuple[str, list[str]]:
        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append(body["event_id"])
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/hook", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_webhook_name_is_the_tenants_own(
    database_url: str, clock: ManualClock, hook: Callable[[int], tuple[str, list[str]]]
) -> None:
    """Two tenants both naming their subscription "crm": each gets every event of
    its own (one tenant's deliveries never move the other's position past events
    it has not sent), and neither sees the other's dead letters."""
    with ChatLedger.open(database_url, clock=clock) as ledger:
        acme, globex = ledger.tenant("acme"), ledger.tenant("globex")
        acme.receive("v-1", "acme's question")
        globex.receive("v-1", "globex's question")
        acme.receive("v-2", "acme's second")
        acme_url, acme_seen = hook(200)
        report = acme.webhook("crm", acme_url).deliver_once()
        assert acme_seen == [e.event_id for e in acme.events_after(0)]
        assert report.position == log_head(ledger)
        globex_url, globex_seen = hook(200)
        assert globex.webhook("crm", globex_url).position() == 0
        globex.webhook("crm", globex_url).deliver_once()
        assert globex_seen == [e.event_id for e in globex.events_after(0)] != []
        # The default tenant's "crm" is a third subscription (and the old stores' one).
        default_url, default_seen = hook(200)
        ledger.webhook("crm", default_url).deliver_once()
        assert default_seen == [e.event_id for e in ledger.events_after(0)]
        # A dead letter of globex's "crm" is globex's only.
        globex.receive("v-1", "more")
        failing_url, _ = hook(500)
        dead = globex.webhook("crm", failing_url, max_attempts=1, backoff=0.001).deliver_once()
        assert dead.stopped and globex.webhook("crm", failing_url).dead_letters() != []
        assert acme.webhook("crm", acme_url).dead_letters() == []
        assert ledger.webhook("crm", default_url).dead_letters() == []


STORE_WIDE: dict[str, Callable[[ChatLedger, str], Any]] = {
    "events_after": lambda l, d: l.events_after(0, all_tenants=True),
    "analytics_by_tenant": lambda l, d: l.analytics_by_tenant(),
    "sweep": lambda l, d: l.sweep(all_tenants=True),
    "archive_closed_sessions": lambda l, d: l.archive_closed_sessions(timedelta(days=1), d, all_tenants=True),
}


@pytest.mark.parametrize("call", list(STORE_WIDE), ids=list(STORE_WIDE))
def test_a_named_tenant_cannot_ask_for_the_whole_store(
    sqlite_url: str, clock: ManualClock, tmp_path: Any, call: str
) -> None:
    """``all_tenants=True`` (and the cross-tenant analytics) are the operator's:
    the default tenant's ledger. A named tenant's handle, or a ledger opened for
    a named tenant, refuses them before reading or appending anything."""
    archives = tmp_path / "archives"
    archives.mkdir()
    with ChatLedger.open(sqlite_url, clock=clock) as ledger:
        ledger.tenant("globex").receive("v-1", "globex's secret")
        head = log_head(ledger)
        with ChatLedger.open(sqlite_url, clock=clock, tenant="acme") as opened:
            for named in (ledger.tenant("acme"), opened):
                with pytest.raises(InvalidCommandError, match="default tenant"):
                    STORE_WIDE[call](named, str(archives))
                if call == "archive_closed_sessions":
                    with pytest.raises(InvalidCommandError, match="default tenant"):
                        named.read_archive(archives / "x.jsonl.gz", all_tenants=True)
                assert log_head(ledger) == head and list(archives.iterdir()) == []
        STORE_WIDE[call](ledger, str(archives))  # the operator's ledger may


def test_a_tenant_is_read_right_when_eventsourcing_compresses_whole_events(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With eventsourcing's COMPRESSOR_TOPIC set in the environment the stored state is not
    JSON; the tenant check must still see acme's session as acme's (it used to count every
    session as the default tenant's: acme could not read its own, the operator could)."""
    from chatledger import UnknownSessionError

    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    with ChatLedger.open(database_url) as root:
        acme = root.tenant("acme")
        sid = acme.receive("bob", "hello").session_id
        assert len(acme.session_events(sid)) == 2
        with pytest.raises(UnknownSessionError):
            root.session_events(sid)
        with pytest.raises(UnknownSessionError):
            root.tenant("globex").session_events(sid)
        assert root.verify().break_count == 0


def test_store_wide_operations_are_the_operators_and_key_tenants_are_checked(
    sqlite_url: str, tmp_path: Any
) -> None:
    """A backup or a key rotation acts on every tenant's data: a named tenant's handle refuses
    them, writing nothing; an API key cannot be bound to a name no tenant can have."""
    from chatledger.application.backups import create_backup
    from chatledger.application.key_management import rotate_keys

    with ChatLedger.open(sqlite_url) as root:
        acme = root.tenant("acme")
        acme.receive("bob", "hello")
        with pytest.raises(InvalidCommandError, match="operator"):
            create_backup(acme, tmp_path / "b")
        assert not (tmp_path / "b").exists()
        with pytest.raises(InvalidCommandError, match="operator"):
            rotate_keys(acme)
        with pytest.raises(InvalidCommandError, match="tenant"):
            root.api_keys.create("bot", ["bot"], tenant="not a tenant!")
        assert root.api_keys.list() == []
        create_backup(root, tmp_path / "ok")
        assert (tmp_path / "ok").is_dir()


def test_a_tenants_handle_leads_to_no_other_tenant_nor_to_the_operators_ledger(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Tried as an attacker holding tenant acme's handle (what the HTTP service gives a
    request): no public attribute or call of it is another ledger, another tenant's handle,
    the store's API keys (minting a key for another tenant) or the background jobs (which
    hold the operator's ledger). Refused with nothing written; the operator's ledger may."""
    import asyncio

    from chatledger import SessionPolicy
    from chatledger.aio import AsyncChatLedger
    from chatledger.domain.validation import Limits

    with ChatLedger.open(sqlite_url, clock=clock) as root:
        globex = root.tenant("globex")
        globex.receive("v-1", "globex's secret")
        acme = root.tenant("acme")
        acme.receive("v-1", "acme's")
        head = log_head(root)
        assert not hasattr(acme, "root") and acme.tenant("acme") is acme
        attempts: dict[str, Callable[[], Any]] = {
            "another tenant": lambda: acme.tenant("globex"),
            "the default tenant": lambda: acme.tenant("default"),
            "a new tenant": lambda: acme.tenant("initech"),
            "its own policy": lambda: acme.tenant("acme", policy=SessionPolicy(idle_timeout=timedelta(days=9))),
            "its own limits": lambda: acme.tenant("acme", limits=Limits(max_text_chars=10)),
            "api keys": lambda: acme.api_keys.create("k", ["bot"], tenant="globex"),
            "background jobs": lambda: acme.start_background_jobs(),
        }
        for what, attempt in attempts.items():
            with pytest.raises(InvalidCommandError, match="operator"):
                attempt()
            assert log_head(root) == head, what
        assert acme.background is None and acme.policy == root.policy
        for name in dir(acme):
            if name.startswith("_"):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # the library's old names
                    value = getattr(acme, name)
            except InvalidCommandError:
                continue  # api_keys
            assert not isinstance(value, ChatLedger) or value is acme, name

        async def the_async_handle() -> None:
            async_root = AsyncChatLedger(root)
            async_acme = await async_root.tenant("acme")
            assert async_acme.sync is acme
            with pytest.raises(InvalidCommandError, match="operator"):
                await async_acme.tenant("globex")

        asyncio.run(the_async_handle())
        assert root.tenant("globex") is globex and root.api_keys.list() == []  # the operator's
        assert log_head(root) == head
