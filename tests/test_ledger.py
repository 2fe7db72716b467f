"""The session engine through its public API, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from chatledger import (
    ChatLedger,
    ClientMessageIdConflictError,
    IdentityConflictError,
    InvalidCommandError,
    ManualClock,
    SessionClosedError,
    SessionTimedOutError,
    SessionOwnershipError,
    SessionPolicy,
    TaskStateError,
    UnknownSessionError,
)
from chatledger.domain.ids import uuid7_time_ms

from .helpers import event_names, log_head


def test_first_message_starts_a_session(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hi", channel="whatsapp", context={"locale": "pt-PT"})
    assert turn.is_new_session and not turn.is_returning
    assert turn.previous_session_id is None and turn.away_for is None
    # UUIDv7: starts with the session's start millisecond, then 74 random bits
    assert turn.session_id.version == 7
    assert uuid7_time_ms(turn.session_id) == int(clock().timestamp() * 1000)
    state = ledger.session(turn.session_id)
    assert state.status == "active"
    assert state.channel == "whatsapp" and state.context.locale == "pt-PT"
    assert [(m.role, m.text, m.at) for m in state.messages] == [("user", "hi", clock())]
    assert event_names(ledger, turn.session_id) == ["Started", "MessageReceived"]


def test_message_just_under_the_timeout_continues_the_session(ledger: ChatLedger, clock: ManualClock) -> None:
    first = ledger.receive("v-1", "hi")
    clock.advance(minutes=30)  # idle exactly the timeout: not exceeded
    second = ledger.receive("v-1", "still there?")
    assert second.session_id == first.session_id and not second.is_new_session
    assert len(ledger.session(first.session_id).messages) == 2


def test_message_just_over_the_timeout_starts_a_fresh_returning_session(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    start = clock()
    first = ledger.receive("v-1", "hi")
    clock.advance(minutes=30, seconds=1)
    second = ledger.receive("v-1", "back again")
    assert second.session_id != first.session_id
    assert second.is_new_session and second.is_returning
    assert second.previous_session_id == first.session_id
    assert second.away_for == timedelta(minutes=30, seconds=1)
    old = ledger.session(first.session_id)
    assert old.status == "timed_out" and old.close_reason == "idle"
    assert [m.text for m in old.messages] == ["hi"]  # the late message never joins the old session
    assert ledger.session(second.session_id).previous_session_id == first.session_id
    timed_out = ledger.session_events(first.session_id)[-1]
    assert type(timed_out).__name__ == "TimedOut"
    assert timed_out.occurred_at == start + timedelta(minutes=30)  # when it went idle, not now
    assert timed_out.detected_at == clock()  # type: ignore[attr-defined]


def test_an_hour_away_means_a_fresh_session_with_the_facts_to_say_welcome_back(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    first = ledger.receive("v-1", "What are your opening hours?")
    ledger.reply(first.session_id, "9 to 6.")
    clock.advance(minutes=2)
    ledger.receive("v-1", "Do you ship to Portugal?")
    clock.advance(hours=1)
    back = ledger.receive("v-1", "hello again")
    assert back.is_returning and back.is_new_session
    assert back.away_for == timedelta(hours=1)


@pytest.mark.parametrize("policy", [SessionPolicy(task_idle_timeout=timedelta(minutes=90))])
def test_open_task_extends_the_timeout(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "I want a refund")
    ledger.start_task(turn.session_id, "refund")
    clock.advance(minutes=80)  # past 30 min, within the task timeout
    again = ledger.receive("v-1", "sorry, I had to find the receipt")
    assert again.session_id == turn.session_id
    ledger.complete_task(turn.session_id, "refund")
    clock.advance(minutes=31)
    after = ledger.receive("v-1", "one more thing")
    assert after.session_id != turn.session_id


@pytest.mark.parametrize("policy", [SessionPolicy(carry_over_slots=frozenset({"language", "cart"}))])
def test_configured_slots_carry_over_into_the_next_session(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hola")
    ledger.set_slot(turn.session_id, "language", "es")
    ledger.set_slot(turn.session_id, "cart", ["sku-1", "sku-2"])
    ledger.set_slot(turn.session_id, "topic", "shipping")
    clock.advance(hours=2)
    back = ledger.receive("v-1", "hola otra vez")
    assert back.carried_slots == {"language": "es", "cart": ["sku-1", "sku-2"]}
    assert ledger.session(back.session_id).slots == {"language": "es", "cart": ["sku-1", "sku-2"]}


def test_point_in_time_reads_show_the_session_as_it_stood(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hi")
    t_first = clock()
    clock.advance(minutes=1)
    ledger.reply(turn.session_id, "hello")
    ledger.set_slot(turn.session_id, "order_id", "A-17")
    t_second = clock()
    clock.advance(minutes=1)
    ledger.clear_slot(turn.session_id, "order_id")
    ledger.end_session(turn.session_id)

    then = ledger.session(turn.session_id, as_of=t_first)
    assert [m.text for m in then.messages] == ["hi"] and then.slots == {}
    assert then.status == "active"
    mid = ledger.session(turn.session_id, as_of=t_second)
    assert mid.slots == {"order_id": "A-17"} and len(mid.messages) == 2
    now = ledger.session(turn.session_id)
    assert now.status == "ended" and now.slots == {}
    assert ledger.session(turn.session_id, as_of=t_second + timedelta(hours=5)) == ledger.session(
        turn.session_id, as_of=clock()
    )
    with pytest.raises(InvalidCommandError, match="had not started"):
        ledger.session(turn.session_id, as_of=t_first - timedelta(seconds=1))


def test_point_in_time_read_after_the_deadline_shows_it_timed_out(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hi")
    start = clock()
    clock.advance(hours=3)
    # Nobody has recorded the timeout yet; every reader still agrees it is over.
    live = ledger.session(turn.session_id)
    assert live.status == "timed_out" and live.closed_at == start + timedelta(minutes=30)
    assert ledger.session(turn.session_id, as_of=start + timedelta(minutes=29)).status == "active"


def test_a_point_in_time_read_checks_ownership_first_and_against_the_session_as_it_is_now(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    anon = ledger.receive("v-ana", "hi")
    before_start = clock() - timedelta(seconds=1)
    clock.advance(minutes=1)
    ledger.link_identity("v-ana", "u-ana")
    # a stranger learns nothing about the session's past, not even that it had not started
    for stranger in ({"visitor_id": "v-eve"}, {"user_id": "u-eve"}):
        with pytest.raises(SessionOwnershipError):
            ledger.session(anon.session_id, as_of=before_start, **stranger)
        with pytest.raises(SessionOwnershipError):
            ledger.session(anon.session_id, as_of=clock(), **stranger)
    # the user owns the anonymous session from before the login, also as it stood then
    then = ledger.session(anon.session_id, as_of=anon.message.at, user_id="u-ana")
    assert then.user_id is None and [m.text for m in then.messages] == ["hi"]
    with pytest.raises(InvalidCommandError, match="had not started"):
        ledger.session(anon.session_id, as_of=before_start, user_id="u-ana")
    with pytest.raises(UnknownSessionError):
        ledger.session(uuid4(), as_of=before_start, user_id="u-ana")


def test_foreign_session_id_is_refused_and_nothing_is_appended(ledger: ChatLedger) -> None:
    alice = ledger.receive("v-alice", "my address is 1 Main St")
    ledger.receive("v-bob", "hi")
    before = log_head(ledger)
    with pytest.raises(SessionOwnershipError) as info:
        ledger.receive("v-bob", "show me that address", session_id=alice.session_id)
    assert info.value.session_id == alice.session_id
    assert log_head(ledger) == before
    with pytest.raises(SessionOwnershipError):
        ledger.session(alice.session_id, visitor_id="v-bob")
    assert ledger.session(alice.session_id, visitor_id="v-alice").messages[0].text.startswith("my")


def test_linked_user_may_use_their_session_from_another_device(ledger: ChatLedger) -> None:
    laptop = ledger.receive("v-laptop", "hi")
    ledger.link_identity("v-laptop", "u-42")
    ledger.link_identity("v-phone", "u-42")
    turn = ledger.receive("v-phone", "continuing on my phone", session_id=laptop.session_id)
    assert turn.session_id == laptop.session_id
    ledger.link_identity("v-mallory", "u-666")
    with pytest.raises(SessionOwnershipError):
        ledger.receive("v-mallory", "let me in", session_id=laptop.session_id)
    with pytest.raises(SessionOwnershipError):
        ledger.session(laptop.session_id, user_id="u-666")


def test_unknown_session_ids_are_a_clear_error(ledger: ChatLedger) -> None:
    before = log_head(ledger)
    with pytest.raises(UnknownSessionError):
        ledger.receive("v-1", "hi", session_id=uuid4())
    with pytest.raises(UnknownSessionError):
        ledger.reply("not-a-uuid", "hi")
    with pytest.raises(UnknownSessionError):
        ledger.session(uuid4())
    assert log_head(ledger) == before


def test_retried_receive_with_the_same_client_message_id_appends_nothing(ledger: ChatLedger) -> None:
    first = ledger.receive("v-1", "hi", client_message_id="wa-1")
    before = log_head(ledger)
    again = ledger.receive("v-1", "hi", client_message_id="wa-1")
    assert log_head(ledger) == before
    assert again.duplicate and not first.duplicate
    assert again.model_copy(update={"duplicate": False}) == first


def test_retry_after_the_session_renewed_still_finds_the_original(ledger: ChatLedger, clock: ManualClock) -> None:
    first = ledger.receive("v-1", "hi", client_message_id="m-1")
    clock.advance(hours=1)
    second = ledger.receive("v-1", "back", client_message_id="m-2")
    before = log_head(ledger)
    late_retry = ledger.receive("v-1", "hi", client_message_id="m-1")
    retry_of_first_in_new = ledger.receive("v-1", "back", client_message_id="m-2")
    assert log_head(ledger) == before
    assert late_retry.session_id == first.session_id and late_retry.is_new_session
    assert retry_of_first_in_new.session_id == second.session_id and retry_of_first_in_new.is_returning


def test_retried_reply_appends_nothing(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "hi")
    sent = ledger.reply(turn.session_id, "hello", client_message_id="r-1")
    before = log_head(ledger)
    assert ledger.reply(turn.session_id, "hello", client_message_id="r-1") == sent
    assert log_head(ledger) == before


def test_a_client_message_id_is_never_shared_by_a_user_message_and_a_reply(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "hi", client_message_id="c-1")
    before = log_head(ledger)
    # the bot's reply under the user's id would vanish behind the user message
    with pytest.raises(ClientMessageIdConflictError, match="already belongs to a user message") as caught:
        ledger.reply(turn.session_id, "hello", client_message_id="c-1")
    assert (caught.value.recorded_role, caught.value.role) == ("user", "bot")
    sent = ledger.reply(turn.session_id, "hello", client_message_id="c-2")
    after_reply = log_head(ledger)
    assert after_reply != before
    # and a user message under the bot's id would make the reply unfindable by its id
    with pytest.raises(ClientMessageIdConflictError, match="already belongs to a bot message"):
        ledger.receive("v-1", "again", client_message_id="c-2")
    with pytest.raises(ClientMessageIdConflictError):
        ledger.reply(turn.session_id, "note", role="system", client_message_id="c-2")
    assert log_head(ledger) == after_reply
    assert ledger.reply(turn.session_id, "hello", client_message_id="c-2") == sent
    state = ledger.session(turn.session_id)
    assert [(m.role, m.client_message_id) for m in state.messages] == [("user", "c-1"), ("bot", "c-2")]


def test_the_session_itself_refuses_a_second_message_under_one_client_id(ledger: ChatLedger, clock: ManualClock) -> None:
    from chatledger.domain.session import Session

    turn = ledger.receive("v-1", "hi", client_message_id="c-1")
    session = ledger.repository.get(turn.session_id)
    assert isinstance(session, Session)
    with pytest.raises(InvalidCommandError, match="already recorded"):
        session.receive("hi", at=clock(), client_message_id="c-1")
    with pytest.raises(ClientMessageIdConflictError):
        session.send("hello", at=clock(), client_message_id="c-1")
    assert session.collect_events() == []


def test_identity_link_is_an_event_and_later_sessions_carry_the_user(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    anon = ledger.receive("v-1", "hi")
    assert anon.user_id is None
    ledger.link_identity("v-1", "u-42")
    assert "IdentityLinked" in event_names(ledger, anon.session_id)
    assert ledger.session(anon.session_id).user_id == "u-42"
    before = log_head(ledger)
    ledger.link_identity("v-1", "u-42")  # same link again: nothing new
    assert log_head(ledger) == before
    with pytest.raises(IdentityConflictError):
        ledger.link_identity("v-1", "u-7")
    assert log_head(ledger) == before
    clock.advance(hours=1)
    later = ledger.receive("v-1", "back")
    assert later.user_id == "u-42"
    visitor = ledger.visitor("v-1")
    assert visitor is not None and visitor.user_id == "u-42"
    assert visitor.session_ids == (anon.session_id, later.session_id)


def test_link_before_the_first_message(ledger: ChatLedger) -> None:
    ledger.link_identity("v-9", "u-9")
    assert ledger.receive("v-9", "hi").user_id == "u-9"


def test_ended_session_refuses_commands_and_the_next_message_starts_a_new_one(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "bye")
    state = ledger.end_session(turn.session_id, reason="user_goodbye")
    assert state.status == "ended" and state.close_reason == "user_goodbye"
    before = log_head(ledger)
    for command in (
        lambda: ledger.reply(turn.session_id, "wait"),
        lambda: ledger.set_slot(turn.session_id, "a", 1),
        lambda: ledger.start_task(turn.session_id, "t"),
        lambda: ledger.end_session(turn.session_id),
    ):
        with pytest.raises(SessionClosedError):
            command()
    assert log_head(ledger) == before
    again = ledger.receive("v-1", "hello?")
    assert again.is_new_session and again.previous_session_id == turn.session_id
    assert ledger.current_session("v-1") is not None


def test_commands_on_an_expired_session_are_refused_without_writing(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hi")
    clock.advance(hours=1)
    before = log_head(ledger)
    with pytest.raises(SessionTimedOutError) as info:
        ledger.reply(turn.session_id, "sorry for the wait")
    assert info.value.timed_out_at == clock() - timedelta(minutes=30)
    assert log_head(ledger) == before
    assert ledger.current_session("v-1") is None


def test_end_session_after_the_deadline_records_the_timeout_instead(ledger: ChatLedger, clock: ManualClock) -> None:
    start = clock()
    turn = ledger.receive("v-1", "hi")
    clock.advance(hours=1)
    state = ledger.end_session(turn.session_id)
    assert state.status == "timed_out" and state.closed_at == start + timedelta(minutes=30)


def test_task_commands_out_of_order_are_refused(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "hi")
    before = log_head(ledger)
    with pytest.raises(TaskStateError):
        ledger.complete_task(turn.session_id, "refund")
    ledger.start_task(turn.session_id, "refund")
    with pytest.raises(TaskStateError):
        ledger.start_task(turn.session_id, "refund")
    assert log_head(ledger) == before + 1
    assert ledger.session(turn.session_id).open_tasks == ("refund",)


def test_bad_input_is_refused_and_nothing_is_appended(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-1", "hi")
    before = log_head(ledger)
    with pytest.raises(InvalidCommandError):
        ledger.receive("v-1", "")
    with pytest.raises(InvalidCommandError):
        ledger.receive("", "hi")
    with pytest.raises(InvalidCommandError):
        ledger.set_slot(turn.session_id, "when", object())
    with pytest.raises(InvalidCommandError):
        ledger.receive("v-1", "hi", context={"unknown_field": 1})
    with pytest.raises(InvalidCommandError):
        ledger.reply(turn.session_id, "x", role="user")  # type: ignore[arg-type]
    assert log_head(ledger) == before


def test_imported_history_with_explicit_times(ledger: ChatLedger, clock: ManualClock) -> None:
    t0 = clock() - timedelta(days=30)
    turn = ledger.receive("v-import", "old question", at=t0)
    ledger.reply(turn.session_id, "old answer", at=t0 + timedelta(seconds=5))
    with pytest.raises(InvalidCommandError, match="earlier than"):
        ledger.reply(turn.session_id, "out of order", at=t0)
    later = ledger.receive("v-import", "next day", at=t0 + timedelta(days=1))
    assert later.is_returning and later.away_for == timedelta(days=1, seconds=-5)


def test_long_session_reads_through_snapshots(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=10) as ledger:
        turn = ledger.receive("v-long", "m0")
        for i in range(1, 45):
            ledger.reply(turn.session_id, f"m{i}")
        assert ledger.snapshots is not None
        [latest] = ledger.snapshots.get(turn.session_id, desc=True, limit=1)
        assert latest.originator_version == 40
    with ChatLedger.open(database_url, clock=clock, cache_size=0) as fresh:
        state = fresh.session(turn.session_id)
        assert [m.text for m in state.messages] == [f"m{i}" for i in range(45)]


def test_cache_size_zero_turns_the_aggregate_cache_off(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url, cache_size=0) as ledger:
        assert not ledger.repository.cache
    with ChatLedger.open(sqlite_url, cache_size=10) as ledger:
        assert ledger.repository.cache is not None and ledger.repository.cache.maxsize == 10  # type: ignore[attr-defined]


def test_no_event_may_be_stamped_before_the_sessions_last_event(ledger: ChatLedger, clock: ManualClock) -> None:
    """A login is not activity, but it is an event: a message stamped before it
    would vanish from point-in-time reads, so it is refused (nothing appended)."""
    t0 = clock()
    turn = ledger.receive("v-1", "hi", at=t0)
    ledger.link_identity("v-1", "u-1", at=t0 + timedelta(minutes=10))
    before = log_head(ledger)
    with pytest.raises(InvalidCommandError, match="earlier than the session's last event"):
        ledger.receive("v-1", "second", at=t0 + timedelta(minutes=5))
    assert log_head(ledger) == before
    ledger.receive("v-1", "third", at=t0 + timedelta(minutes=11))
    texts = [m.text for m in ledger.session(turn.session_id, as_of=t0 + timedelta(minutes=12)).messages]
    assert texts == ["hi", "third"]
