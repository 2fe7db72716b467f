"""Tenants (issue 13): no id a default-tenant visitor or user could ever have had is a
named tenant's identity.

Releases before 0.5 accepted any id with the unit separator, so an old store may hold
a default-tenant visitor ``"acme\\x1fbob"`` linked to a user ``"acme\\x1fu-1"``: the
joined string of tenant acme's visitor ``bob`` and user ``u-1``. Written here as such
a store has it (the default tenant's public API with 0.4's id checks), next to acme's
own ``bob``/``u-1``: they are two visitors with two aggregate ids, two content keys
and two memories, and neither shows in the other's memory, transcripts, erasure or
export. On a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.domain.tenancy import SCOPED_MIN_CHARS, scoped_key
from chatledger.domain.validation import ID_CEILING
from chatledger.domain.visitor import visitor_aggregate_id

from .helpers import log_head, separator_checks_off
from .test_tenant_review import hook  # noqa: F401 -- the local webhook receiver

OLD_VISITOR, OLD_USER = "acme\x1fbob", "acme\x1fu-1"  # a 0.4 store's default-tenant ids


def write_old_visitor(root: ChatLedger, *, link: bool = True) -> UUID:
    with separator_checks_off():  # as releases before 0.5 accepted them
        sid = root.receive(OLD_VISITOR, "old secret").session_id
        root.set_slot(sid, "display_name", "Old", scope="user")
        root.set_slot(sid, "plan", "old plan", scope="user")
        if link:
            root.link_identity(OLD_VISITOR, OLD_USER)
    return sid


def write_acme_bob(acme: ChatLedger, *, link: bool = True) -> UUID:
    sid = acme.receive("bob", "acme secret").session_id
    acme.set_slot(sid, "display_name", "Acme Bob", scope="user")
    if link:
        acme.link_identity("bob", "u-1")
    return sid


def texts(transcript: object) -> list[str]:
    return [m.text for m in transcript.messages]  # type: ignore[attr-defined]


def test_a_named_tenants_keys_are_never_a_default_tenants() -> None:
    """The identities themselves: another uuid5 namespace; a key longer than any id
    any release accepted."""
    assert visitor_aggregate_id("bob", "acme") != visitor_aggregate_id(OLD_VISITOR)
    assert scoped_key("acme", "bob") != OLD_VISITOR
    assert len(scoped_key("acme", "b")) == SCOPED_MIN_CHARS > ID_CEILING
    assert scoped_key("default", OLD_VISITOR) == OLD_VISITOR  # old stores: unchanged
    # one (tenant, id) per key: "a:b"/"c" and "a"/"b:c" style splits differ
    assert scoped_key("a", "b-c") != scoped_key("a-b", "c")


def test_an_old_default_visitor_with_the_separator_is_not_a_named_tenants(
    database_url: str, clock: ManualClock
) -> None:
    with ChatLedger.open(database_url, clock=clock) as root:
        acme = root.tenant("acme")
        old = write_old_visitor(root)
        new = write_acme_bob(acme)  # refused before 0.5's namespaces: "stored before tenants"
        root.catch_up()
        with separator_checks_off():
            old_visitor = root.visitor(OLD_VISITOR)
            assert old_visitor is not None and old_visitor.session_ids == (old,)
            assert texts(root.transcript(user_id=OLD_USER)) == ["old secret"]
            assert root.memory(user_id=OLD_USER).display_name == "Old"
        bob = acme.visitor("bob")
        assert bob is not None and bob.session_ids == (new,) and bob.user_id == "u-1"
        for transcript in (
            acme.transcript(user_id="u-1"),
            acme.transcript(start=clock() - timedelta(days=1)),
        ):
            assert texts(transcript) == ["acme secret"]
        memory = acme.memory(user_id="u-1")
        assert memory.display_name == "Acme Bob" and "plan" not in memory.preferences
        assert memory.session_count == 1 and memory.last_session_id == new
        assert acme.memory(visitor_id="bob").linked_to_user

        # The audit export of each: its own sessions only.
        out = io.StringIO()
        acme.export_audit(out, user_id="u-1")
        assert str(new) in out.getvalue() and str(old) not in out.getvalue()
        out = io.StringIO()
        with separator_checks_off():
            root.export_audit(out, user_id=OLD_USER)
        assert str(old) in out.getvalue() and str(new) not in out.getvalue()

        # Erasing the old visitor destroys its key only: acme's bob reads on, and back.
        with separator_checks_off():
            receipt = root.erase(user_id=OLD_USER)
        assert receipt.session_ids == (old,)
        root.catch_up()
        assert root.session(old).messages[0].text == "[erased]"
        assert acme.session(new).messages[0].text == "acme secret"
        assert texts(acme.transcript(user_id="u-1")) == ["acme secret"]
        assert acme.memory(user_id="u-1").display_name == "Acme Bob"
        acme.erase(user_id="u-1")
        root.catch_up()
        assert acme.session(new).messages[0].text == "[erased]"
        assert acme.memory(user_id="u-1").display_name is None
        assert root.verify().ok and root.projection_failures() == []


def test_a_named_tenants_visitor_first_then_the_old_id_in_the_default_tenant(
    database_url: str, clock: ManualClock
) -> None:
    """The other order (acme's bob first, then the default tenant's "acme\\x1fbob", as a
    store upgraded mid-way could see), both anonymous: two visitors, two memories, acme's
    untouched by the other's erasure."""
    with ChatLedger.open(database_url, clock=clock) as root:
        acme = root.tenant("acme")
        new = write_acme_bob(acme, link=False)
        old = write_old_visitor(root, link=False)
        root.catch_up()
        assert texts(acme.transcript(visitor_id="bob")) == ["acme secret"]
        memory = acme.memory(visitor_id="bob")
        assert memory.display_name == "Acme Bob" and "plan" not in memory.preferences
        with separator_checks_off():
            assert texts(root.transcript(visitor_id=OLD_VISITOR)) == ["old secret"]
            assert root.memory(visitor_id=OLD_VISITOR).display_name == "Old"
            root.erase(visitor_id=OLD_VISITOR)
        root.catch_up()
        assert acme.session(new).messages[0].text == "acme secret"
        assert acme.memory(visitor_id="bob").display_name == "Acme Bob"
        assert root.session(old).messages[0].text == "[erased]"
        assert root.projection_failures() == []


@pytest.mark.postgres
def test_a_stores_narrower_webhook_table_is_widened_for_a_named_tenants_key(
    postgres_url: str, hook: Callable[[int], tuple[str, list[str]]]
) -> None:
    """The webhook tables as 0.4/today's main created them (a 200-character subscription
    key) take a named tenant's subscription, whose key is longer, after opening."""
    import psycopg

    from .conftest import POSTGRES_CONNINFO

    schema = postgres_url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")  # type: ignore[arg-type]
        conn.execute(  # type: ignore[arg-type]
            f"CREATE TABLE {schema}.chatledger_webhook_positions (subscription varchar(200) PRIMARY KEY, "
            "position bigint NOT NULL, updated_at timestamp with time zone NOT NULL)"
        )
    with ChatLedger.open(postgres_url) as root:
        acme = root.tenant("acme")
        acme.receive("bob", "hi")
        url, seen = hook(200)
        worker = acme.webhook("crm", url)
        assert worker.position() == 0
        worker.deliver_once()
        assert seen == [e.event_id for e in acme.events_after(0)] != []
        assert worker.position() == log_head(root)
