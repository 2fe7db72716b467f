"""Read your writes: a command's log position, and queries that wait for it (issue 17)."""

from __future__ import annotations

import time

import pytest
from chatledger import ChatLedger, ClientMessageIdConflictError, InvalidValueError, ReadTimeoutError


def test_a_bot_that_just_set_a_slot_reads_it_back(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "hello")
    assert turn.position == ledger.written_position() == ledger.log_position() > 0
    ledger.set_slot(turn.session_id, "name", "Ana", scope="user")
    ledger.link_identity("v-1", "user-1")
    token = ledger.written_position()
    assert token == ledger.log_position() > turn.position
    memory = ledger.memory(visitor_id="v-1", after=token)
    assert memory.linked_to_user and memory.position >= token
    assert ledger.memory(user_id="user-1", after=token).display_name == "Ana"
    reply = ledger.reply(turn.session_id, "hi Ana")
    assert [
        m.text for m in ledger.transcript(turn.session_id, after=ledger.written_position()).messages
    ] == [
        "hello",
        reply.text,
    ]
    assert ledger.analytics(after=ledger.written_position()).sessions == 1


def test_another_process_reads_the_write_it_was_handed_a_token_for(database_url: str) -> None:
    """Two ledgers (two connection pools, as two workers would be): the writer hands
    the reader ``turn.position``; the reader's read models were behind, and catch up."""
    with ChatLedger.open(database_url) as reader, ChatLedger.open(database_url) as writer:
        reader.catch_up()
        turn = writer.receive("v-2", "first")
        writer.set_slot(turn.session_id, "plan", "gold", scope="user")
        token = writer.written_position()
        assert reader.projection_status()[0].position < token
        assert reader.memory(visitor_id="v-2", after=token).preferences == {"plan": "gold"}
        assert [
            m.text for m in reader.transcript(turn.session_id, after=turn.position).messages
        ] == ["first"]
        assert all(s.position >= token for s in reader.projection_status())


def test_a_duplicate_turn_carries_a_position_that_covers_the_original(ledger: ChatLedger) -> None:
    first = ledger.receive("v-3", "once", client_message_id="m-1")
    again = ledger.receive("v-3", "once", client_message_id="m-1")
    assert again.duplicate and again.position >= first.position
    assert len(ledger.transcript(first.session_id, after=again.position).messages) == 1


def test_a_receive_that_writes_nothing_leaves_the_threads_written_position(ledger: ChatLedger) -> None:
    """A failed receive wrote nothing: the thread's token is still its last write's
    (it was reset to 0); a duplicate's token is the turn's, which covers the original."""
    turn = ledger.receive("v-5", "hello")
    ledger.reply(turn.session_id, "hi", client_message_id="m-9")
    token = ledger.written_position()
    assert token > turn.position
    with pytest.raises(ClientMessageIdConflictError):
        ledger.receive("v-5", "again", client_message_id="m-9")  # the bot's id: refused
    assert ledger.written_position() == token
    ledger.receive("v-5", "once", client_message_id="m-10")
    again = ledger.receive("v-5", "once", client_message_id="m-10")
    assert again.duplicate and ledger.written_position() == again.position > token


def test_waiting_for_a_position_not_written_times_out_clearly(ledger: ChatLedger) -> None:
    ledger.receive("v-4", "hello")
    head = ledger.log_position()
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError, match=f"not {head + 100}") as caught:
        ledger.wait_for(head + 100, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 4.5  # the 0.2 s asked for, not the 5 s default (slack for a loaded box)
    assert caught.value.reached == head and isinstance(caught.value, TimeoutError)
    with pytest.raises(InvalidValueError, match="log position"):
        ledger.memory(visitor_id="v-4", after=-1)
    with pytest.raises(InvalidValueError):
        ledger.transcript(visitor_id="v-4", after="7")  # type: ignore[arg-type]
    assert ledger.wait_for(0) >= 0 and ledger.wait_for(head) >= head
