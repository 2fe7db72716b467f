"""Tenants (issue 13): one store, many tenants, each seeing only its own data.

Tried the way an attacker would: every public call of tenant B given tenant A's
ids refuses exactly as for ids that do not exist (same error class, same text
with the id in it), and appends nothing; the same visitor or user id in two
tenants is two people (two visitors, two content keys: erasing one leaves the
other readable). On a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from chatledger import (
    ChatLedger,
    ChatLedgerError,
    InvalidCommandError,
    ManualClock,
    SessionPolicy,
    UnknownSessionError,
    UnknownSubjectError,
)
from chatledger.domain.ids import uuid7

from .helpers import log_head


@pytest.fixture
def store(database_url: str, clock: ManualClock) -> Iterator[ChatLedger]:
    ledger = ChatLedger.open(database_url, clock=clock)
    yield ledger
    ledger.close()


def refusal(call: Callable[[], Any]) -> tuple[type[BaseException], str] | None:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except ChatLedgerError as err:
        return type(err), str(err)
    return None


SESSION_CALLS: dict[str, Callable[[ChatLedger, UUID], Any]] = {
    "reply": lambda l, s: l.reply(s, "hello"),
    "set_slot": lambda l, s: l.set_slot(s, "k", 1),
    "clear_slot": lambda l, s: l.clear_slot(s, "k"),
    "start_task": lambda l, s: l.start_task(s, "t"),
    "complete_task": lambda l, s: l.complete_task(s, "t"),
    "end_session": lambda l, s: l.end_session(s),
    "time_out_if_idle": lambda l, s: l.time_out_if_idle(s),
    "session": lambda l, s: l.session(s),
    "session(as_of)": lambda l, s: l.session(s, as_of=l.clock() - timedelta(days=1)),
    "session(visitor_id)": lambda l, s: l.session(s, visitor_id="v-1"),
    "session_events": lambda l, s: l.session_events(s),
    "history": lambda l, s: l.history(s),
    "replay": lambda l, s: l.replay(s, until=l.clock()),
    "verify": lambda l, s: l.verify(s),
    "export_audit": lambda l, s: l.export_audit(io.StringIO(), session_id=s),
    "receive(session_id)": lambda l, s: l.receive("v-1", "hi", session_id=s),
}


@pytest.mark.parametrize("call", SESSION_CALLS, ids=list(SESSION_CALLS))
def test_another_tenants_session_is_no_session(
    store: ChatLedger, clock: ManualClock, call: str
) -> None:
    acme, other = store.tenant("acme"), store.tenant("globex")
    theirs = acme.receive("v-1", "secret of acme").session_id
    acme.set_slot(theirs, "k", "v")
    acme.start_task(theirs, "t")
    clock.advance(timedelta(seconds=1))
    missing = uuid7(clock())
    for attacker in (other, store):  # another tenant, and the default one
        head = log_head(store)
        got = refusal(lambda a=attacker: SESSION_CALLS[call](a, theirs))
        expected = refusal(lambda a=attacker: SESSION_CALLS[call](a, missing))
        assert got is not None and expected is not None
        assert got[0] is expected[0] is UnknownSessionError
        assert got[1].replace(str(theirs), "<id>") == expected[1].replace(str(missing), "<id>")
        assert "acme" not in got[1]
        assert log_head(store) == head  # nothing appended
    assert acme.session(theirs).messages[0].text == "secret of acme"  # untouched, still theirs


def test_the_same_visitor_id_in_two_tenants_is_two_visitors(store: ChatLedger) -> None:
    acme, globex = store.tenant("acme"), store.tenant("globex")
    a = acme.receive("v-1", "acme's")
    g = globex.receive("v-1", "globex's")
    d = store.receive("v-1", "default's")
    assert len({a.session_id, g.session_id, d.session_id}) == 3
    for ledger, turn, text in (
        (acme, a, "acme's"),
        (globex, g, "globex's"),
        (store, d, "default's"),
    ):
        visitor = ledger.visitor("v-1")
        assert visitor is not None and visitor.session_ids == (turn.session_id,)
        current = ledger.current_session("v-1")
        assert current is not None and [m.text for m in current.messages] == [text]
        assert current.tenant == ledger.tenant_id == visitor.tenant
    assert store.tenant_id == "default" and acme.tenant_id == "acme"
    assert globex.visitor("v-2") is None and acme.visitor("v-2") is None


def test_a_visitor_of_another_tenant_is_unknown(store: ChatLedger) -> None:
    acme, globex = store.tenant("acme"), store.tenant("globex")
    acme.receive("v-1", "hi")
    acme.link_identity("v-1", "u-1")
    head = log_head(store)
    assert globex.visitor("v-1") is None and globex.current_session("v-1") is None
    for erase in ({"visitor_id": "v-1"}, {"user_id": "u-1"}):
        got = refusal(lambda e=erase: globex.erase(**e))
        expected = refusal(
            lambda e=erase: globex.erase(**{k: v.replace("1", "9") for k, v in e.items()})
        )
        assert (
            got is not None
            and expected is not None
            and got[0] is expected[0] is UnknownSubjectError
        )
        assert got[1].replace("1", "9") == expected[1]
    got = refusal(lambda: globex.export_audit(io.StringIO(), user_id="u-1"))
    assert got is not None and got[0] is UnknownSubjectError
    assert log_head(store) == head
    globex.link_identity("v-1", "u-2")  # globex's own v-1: a new visitor there, not acme's
    state = acme.visitor("v-1")
    assert state is not None and state.user_id == "u-1"
    theirs = globex.visitor("v-1")
    assert theirs is not None and theirs.user_id == "u-2" and theirs.session_ids == ()


def test_erasing_a_person_in_one_tenant_leaves_the_same_ids_in_another(store: ChatLedger) -> None:
    acme, globex = store.tenant("acme"), store.tenant("globex")
    kept = acme.receive("v-1", "acme keeps this").session_id
    acme.link_identity("v-1", "u-1")
    gone = globex.receive("v-1", "globex forgets this").session_id
    globex.link_identity("v-1", "u-1")
    receipt = globex.erase(user_id="u-1")
    assert receipt.session_ids == (gone,)
    assert globex.session(gone).messages[0].text == "[erased]"
    assert acme.session(kept).messages[0].text == "acme keeps this"  # another key: untouched
    out = io.StringIO()
    report = acme.export_audit(out, user_id="u-1")
    assert str(gone) not in out.getvalue() and str(kept) in out.getvalue()
    assert report.ok and report.scope == "tenant acme"
    assert report.checked == len(acme.session_events(kept)) + 3  # its visitor: 3 events
    assert '"globex' not in out.getvalue() and "globex forgets" not in out.getvalue()
    assert acme.verify().ok


def test_each_tenant_has_its_policy_stamped_on_its_sessions(
    store: ChatLedger, clock: ManualClock
) -> None:
    short = SessionPolicy(idle_timeout=timedelta(minutes=1))
    quick = store.tenant("quick", policy=short)
    assert store.tenant("quick") is quick and quick.policy == short
    s_quick = quick.receive("v-1", "hi").session_id
    s_default = store.receive("v-1", "hi").session_id
    clock.advance(timedelta(minutes=2))
    assert quick.session(s_quick).status == "timed_out"
    assert store.session(s_default).status == "active"
    # Later handles with another policy never change how stored sessions replay.
    store.tenant("quick", policy=SessionPolicy(idle_timeout=timedelta(hours=1)))
    assert store.tenant("quick").session(s_quick).status == "timed_out"


def test_tenant_names_are_checked() -> None:
    with ChatLedger.open("sqlite:///:memory:") as ledger:
        for bad in ("", " acme", "a\x1fb", "-x", "a" * 65, 7, None, "acme/../b"):
            with pytest.raises(InvalidCommandError, match="tenant"):
                ledger.tenant(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidCommandError, match="tenant"):
            ChatLedger.open("sqlite:///:memory:", tenant="no spaces")
        assert ledger.tenant("default") is ledger


def test_a_ledger_opened_for_a_tenant_and_handles_share_one_store(
    database_url: str, clock: ManualClock
) -> None:
    with ChatLedger.open(database_url, clock=clock, tenant="acme") as acme:
        sid = acme.receive("v-1", "hi").session_id
        handles = [acme.tenant(f"t{i}") for i in range(1000)]  # a thousand tenants, one store
        assert len({id(h) for h in handles}) == 1000
        assert handles[0].recorder is acme.recorder and handles[0].projector is acme.projector
        handles[0].close()  # a handle's close leaves the store open
        assert acme.session(sid).tenant == "acme"
        assert refusal(lambda: acme.tenant("default").session(sid))[0] is UnknownSessionError  # type: ignore[index]


@pytest.mark.slow
def test_the_command_line_works_on_the_tenant_chatledger_tenant_names(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        sid = ledger.tenant("acme").receive("v-1", "acme's").session_id

    def show(tenant: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
        if tenant is not None:
            env["CHATLEDGER_TENANT"] = tenant
        command = [
            sys.executable,
            "-m",
            "chatledger",
            "session",
            "show",
            str(sid),
            "-d",
            url,
            "--json",
        ]
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    done = show("acme")
    assert done.returncode == 0 and "acme's" in done.stdout, done.stderr
    for other in (None, "globex"):
        refused = show(other)
        assert refused.returncode != 0 and "acme's" not in refused.stdout + refused.stderr
        assert f"No session {sid} exists" in refused.stderr, refused.stderr


def test_the_event_feed_is_the_tenants_unless_asked_for_all(store: ChatLedger) -> None:
    acme, globex = store.tenant("acme"), store.tenant("globex")
    a = acme.receive("v-1", "acme's secret").session_id
    g = globex.receive("v-1", "globex's secret").session_id
    acme.reply(a, "acme's answer")
    for content in (True, False):
        feed = acme.events_after(0, content=content)
        assert {e.stream for e in feed} == {str(a), _vid(acme)}
        assert "globex" not in "".join(e.model_dump_json() for e in feed)
    assert [e.position for e in acme.events_after(0, limit=1)] == [acme.events_after(0)[0].position]
    everything = store.events_after(0, content=True, all_tenants=True)
    assert {str(a), str(g)} <= {e.stream for e in everything}
    assert store.events_after(0) == []  # the default tenant has written nothing
    # resuming after a position mid-log reads on past the other tenant's events
    last = acme.events_after(0)[-1].position
    assert acme.events_after(last) == []
    assert [
        e.data.get("text")
        for e in globex.events_after(0, content=True)
        if e.type.startswith("Session.Message")
    ] == ["globex's secret"]


def _vid(ledger: ChatLedger) -> str:
    from chatledger.domain.visitor import visitor_aggregate_id

    return str(visitor_aggregate_id("v-1", ledger.tenant_id))


def test_the_asyncio_ledger_has_tenant_handles_too(sqlite_url: str) -> None:
    import asyncio

    from chatledger.aio import AsyncChatLedger

    async def main() -> None:
        async with AsyncChatLedger.open(sqlite_url) as ledger:
            acme = await ledger.tenant("acme")
            assert acme.sync.tenant_id == "acme" and acme.workers == ledger.workers
            sid = (await acme.receive("v-1", "hi")).session_id
            assert (await acme.session(sid)).tenant == "acme"
            with pytest.raises(UnknownSessionError):
                await ledger.session(sid)

    asyncio.run(main())
