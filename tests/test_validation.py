"""Issue 9, items 3 (input side), 8 and the 10 MB stall: one validation layer,
one set of limits. Every refusal is a specific InvalidFieldError subclass that
names the field; nothing is appended; read models keep going afterwards."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from uuid import UUID

import pytest
from chatledger import (
    ChatLedger,
    ConfigurationError,
    Engagement,
    FieldTooLargeError,
    InvalidCommandError,
    InvalidFieldError,
    InvalidPolicyError,
    InvalidTextError,
    InvalidTimeError,
    InvalidValueError,
    Limits,
    ManualClock,
    SessionPolicy,
)
from chatledger.domain import validation
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import examples, log_head

NAIVE = datetime(2026, 1, 1, 12, 0)
MB10 = "x" * 10_000_000


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


Call = Callable[[ChatLedger, UUID], Any]

#: (call, error class, the field its message names)
CASES: list[tuple[str, Call, type[InvalidFieldError], str]] = [
    # item 3: what stopped every read model (on PostgreSQL, or on both)
    ("lone surrogate text", lambda l, s: l.receive("v", "a\ud800b"), InvalidTextError, "text"),
    ("NUL in text", lambda l, s: l.receive("v", "a\x00b"), InvalidTextError, "text"),
    ("NUL in visitor id", lambda l, s: l.receive("a\x00b", "hi"), InvalidTextError, "visitor_id"),
    ("NaN slot value", lambda l, s: l.set_slot(s, "k", math.nan), InvalidValueError, "value"),
    ("inf in metadata", lambda l, s: l.reply(s, "x", metadata={"p": [math.inf]}), InvalidValueError,
     "metadata['p'][0]"),
    ("surrogate in reply", lambda l, s: l.reply(s, "\udfff"), InvalidTextError, "text"),
    ("surrogate in slot key", lambda l, s: l.set_slot(s, "k\ud800", 1), InvalidTextError, "key"),
    ("NUL in slot string", lambda l, s: l.set_slot(s, "k", {"a": "\x00"}), InvalidTextError, "value['a']"),
    ("NUL in metadata key", lambda l, s: l.receive("v", "hi", metadata={"\x00": 1}), InvalidTextError,
     "metadata key"),
    ("NUL in client id", lambda l, s: l.receive("v", "hi", client_message_id="m\x00"), InvalidTextError,
     "client_message_id"),
    ("NUL in task", lambda l, s: l.start_task(s, "t\x00"), InvalidTextError, "task"),
    ("NUL in reason", lambda l, s: l.end_session(s, reason="r\x00"), InvalidTextError, "reason"),
    ("NUL in channel", lambda l, s: l.receive("v2", "hi", channel="w\x00"), InvalidTextError, "channel"),
    ("NUL in user id", lambda l, s: l.link_identity("v", "u\x00"), InvalidTextError, "user_id"),
    ("NUL in context", lambda l, s: l.receive("v2", "hi", context={"locale": "e\x00"}), InvalidTextError,
     "context['locale']"),
    ("NUL in session id", lambda l, s: l.session("a\x00"), InvalidTextError, "session_id"),
    ("blank visitor id", lambda l, s: l.receive(" ", "hi"), InvalidTextError, "visitor_id"),
    # item 8: wrong types get a specific error, not TypeError/AttributeError
    ("int text", lambda l, s: l.receive("v", 123), InvalidValueError, "text"),
    ("None visitor id", lambda l, s: l.receive(None, "hi"), InvalidValueError, "visitor_id"),
    ("list metadata", lambda l, s: l.receive("v", "hi", metadata=[1]), InvalidValueError, "metadata"),
    ("object slot value", lambda l, s: l.set_slot(s, "k", object()), InvalidValueError, "value"),
    ("int metadata key", lambda l, s: l.reply(s, "x", metadata={1: 2}), InvalidValueError, "metadata"),
    ("huge int slot", lambda l, s: l.set_slot(s, "k", 2**63), InvalidValueError, "value"),
    # JSON values are lists and dicts: a tuple or another Mapping is refused here, not
    # by pydantic (ValidationError) or json.dumps (TypeError) further on
    ("tuple slot value", lambda l, s: l.set_slot(s, "k", (1, 2)), InvalidValueError, "value"),
    ("tuple in metadata", lambda l, s: l.reply(s, "x", metadata={"a": (1,)}), InvalidValueError,
     "metadata['a']"),
    ("mappingproxy metadata", lambda l, s: l.receive("v", "hi", metadata=MappingProxyType({"a": 1})),
     InvalidValueError, "metadata"),
    ("mappingproxy slot", lambda l, s: l.set_slot(s, "k", {"a": MappingProxyType({})}), InvalidValueError,
     "value['a']"),
    ("int session id", lambda l, s: l.reply(5, "x"), InvalidValueError, "session_id"),
    ("bytes visitor id", lambda l, s: l.visitor(b"v"), InvalidValueError, "visitor_id"),
    ("bad role", lambda l, s: l.reply(s, "x", role="user"), InvalidValueError, "role"),
    ("bad scope", lambda l, s: l.set_slot(s, "k", 1, scope=None), InvalidValueError, "scope"),
    ("deep metadata", lambda l, s: l.receive("v", "hi", metadata={"d": nested(5000)}), InvalidValueError,
     "metadata"),
    ("engagement dict", lambda l, s: l.analytics(engagement={"min_user_messages": 1}), InvalidValueError,
     "engagement"),
    ("sweep limit 0", lambda l, s: l.sweep(limit=0), InvalidValueError, "limit"),
    ("sweep batch str", lambda l, s: l.sweep(batch_size="5"), InvalidValueError, "batch_size"),
    ("rebuild batch 2**64", lambda l, s: l.projector.rebuild("analytics", batch_size=2**64), InvalidValueError,
     "batch_size"),  # refused before the read model is dropped (was an OverflowError after)
    ("history version 0", lambda l, s: list(l.history(s, version=0)), InvalidValueError, "version"),
    ("erase id int", lambda l, s: l.erase(visitor_id=7), InvalidValueError, "visitor_id"),
    ("memory id list", lambda l, s: l.memory(user_id=["u"]), InvalidValueError, "user_id"),
    ("transcript id", lambda l, s: l.transcript(s, user_id=1), InvalidValueError, "user_id"),
    ("progress not callable", lambda l, s: l.catch_up(progress=1), InvalidValueError, "progress"),
    ("jobs interval nan", lambda l, s: l.start_background_jobs(math.nan), InvalidValueError, "interval"),
    ("jobs retention str", lambda l, s: l.start_background_jobs(retention="/archive"), InvalidValueError,
     "retention"),
    ("archive dir None", lambda l, s: l.archive_closed_sessions(timedelta(days=1), None), InvalidValueError,
     "archive_dir"),
    # datetimes and durations: naive is refused, never read as UTC; no OverflowError
    ("naive at", lambda l, s: l.receive("v", "hi", at=NAIVE), InvalidTimeError, "at"),
    ("naive as_of", lambda l, s: l.session(s, as_of=NAIVE), InvalidTimeError, "as_of"),
    ("naive sweep", lambda l, s: l.sweep(NAIVE), InvalidTimeError, "now"),
    ("naive start", lambda l, s: l.analytics(start=NAIVE), InvalidTimeError, "start"),
    ("naive until", lambda l, s: l.replay(s, until=NAIVE), InvalidTimeError, "until"),
    ("str at", lambda l, s: l.set_slot(s, "k", 1, at="2026-01-01"), InvalidTimeError, "at"),
    ("year 9999", lambda l, s: l.receive("v", "hi", at=datetime(9999, 12, 31, tzinfo=UTC)), InvalidTimeError,
     "at"),
    ("max datetime -5h", lambda l, s: l.time_out_if_idle(
        s, now=datetime.max.replace(tzinfo=timezone(-timedelta(hours=5)))), InvalidTimeError, "now"),
    ("before 1970", lambda l, s: l.link_identity("v", "u", at=datetime(1969, 1, 1, tzinfo=UTC)),
     InvalidTimeError, "at"),
    ("timedelta.max", lambda l, s: l.resessionize(timedelta.max), InvalidTimeError, "timeout"),
    ("negative age", lambda l, s: l.archive_closed_sessions(-timedelta(1), "x"), InvalidTimeError,
     "older_than"),
    # sizes
    ("10 MB text", lambda l, s: l.receive("v", MB10), FieldTooLargeError, "text"),
    ("10 MB client id", lambda l, s: l.receive("v", "hi", client_message_id=MB10), FieldTooLargeError,
     "client_message_id"),
    ("10 MB metadata", lambda l, s: l.reply(s, "x", metadata={"blob": MB10}), FieldTooLargeError,
     "metadata['blob']"),
    ("big slot", lambda l, s: l.set_slot(s, "k", ["y" * 1000] * 100), FieldTooLargeError, "value"),
    ("long visitor id", lambda l, s: l.receive("v" * 201, "hi"), FieldTooLargeError, "visitor_id"),
    ("long slot key", lambda l, s: l.clear_slot(s, "k" * 201), FieldTooLargeError, "key"),
    ("long task", lambda l, s: l.complete_task(s, "t" * 201), FieldTooLargeError, "task"),
    ("long reason", lambda l, s: l.end_session(s, reason="r" * 201), FieldTooLargeError, "reason"),
    ("long session id", lambda l, s: l.session_events("0" * 100), FieldTooLargeError, "session_id"),
]


def test_every_rule_refuses_with_a_specific_error_and_appends_nothing(database_url: str) -> None:
    ledger = ChatLedger.open(database_url, clock=ManualClock())
    try:
        sid = ledger.receive("v", "hello").session_id
        head = log_head(ledger)
        for name, call, error, field in CASES:
            with pytest.raises(InvalidFieldError) as caught:
                call(ledger, sid)
            exc = caught.value
            assert type(exc) is error, (name, exc)
            assert exc.field == field or exc.field.startswith(f"{field}["), (name, exc.field)
            assert field in str(exc) and "Nothing was written" in str(exc), (name, str(exc))
            assert log_head(ledger) == head, name
        # Item 3: no poison event got in, so every read model catches up and reads.
        ledger.catch_up()
        assert all(s.lag == 0 for s in ledger.projection_status())
        assert [m.text for m in ledger.transcript(sid).messages] == ["hello"]
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_limits_come_from_the_settings(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATLEDGER_MAX_ID_CHARS", "8")
    ledger = ChatLedger.open(sqlite_url, max_text_chars=10, max_json_bytes=50, max_json_depth=2)
    try:
        assert ledger.limits == Limits(max_text_chars=10, max_id_chars=8, max_json_bytes=50, max_json_depth=2)
        sid = ledger.receive("v-8char", "0123456789").session_id  # exactly at the limits
        head = log_head(ledger)
        with pytest.raises(FieldTooLargeError) as caught:
            ledger.receive("v-8char", "01234567890")
        assert (caught.value.field, caught.value.limit, caught.value.size) == ("text", 10, 11)
        assert "CHATLEDGER_MAX_TEXT_CHARS" in str(caught.value)
        with pytest.raises(FieldTooLargeError, match="visitor_id.*CHATLEDGER_MAX_ID_CHARS"):
            ledger.receive("v-9chars!", "hi")
        with pytest.raises(FieldTooLargeError, match="CHATLEDGER_MAX_JSON_BYTES"):
            ledger.set_slot(sid, "k", "z" * 60)
        with pytest.raises(InvalidValueError, match="nested more than 2 levels"):
            ledger.set_slot(sid, "k", [[[1]]])
        assert log_head(ledger) == head
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"snapshot_interval": 0}, "snapshot_interval"),
        ({"bogus": 1}, "bogus"),
        ({"cache_size": "many"}, "cache_size"),
        ({"max_text_chars": 0}, "max_text_chars"),
        ({"max_id_chars": 10_000}, "max_id_chars"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_setting(
    sqlite_url: str, settings: dict[str, Any], name: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        ChatLedger.open(sqlite_url, **settings)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp}/a%00b.db",
        "postgresql://postgres@127.0.0.1:5432/test?schema=a%00b",
        "postgresql://postgres@127.0.0.1:5432/test?schema=" + "s" * 64,
    ],
    ids=["nul-in-sqlite-path", "nul-in-schema", "schema-over-63-bytes"],
)
def test_an_unusable_database_url_is_a_configuration_error(tmp_path: Any, url: str) -> None:
    """Refused before anything connects: not a raw ValueError/DataError, and no
    schema silently truncated by PostgreSQL to 63 bytes (shared with another URL)."""
    with pytest.raises(ConfigurationError, match="database_url"):
        ChatLedger.open(url.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_bad_environment_variable_names_itself(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATLEDGER_CONFLICT_RETRIES", "lots")
    with pytest.raises(ConfigurationError, match="CHATLEDGER_CONFLICT_RETRIES"):
        ChatLedger.open(sqlite_url)
    with pytest.raises(ConfigurationError, match="database_url"):
        ChatLedger.open(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "policy",
    [
        {"idle_timeout": timedelta.max},
        {"max_session_length": timedelta(days=10**6)},
        {"task_idle_timeout": timedelta(days=40_000)},
        {"carry_over_slots": {"a\x00"}},
        {"carry_over_slots": {"\ud800"}},
        {"carry_over_slots": {"n" * 201}},
    ],
)
def test_policy_values_are_bounded(policy: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicyError):
        SessionPolicy(**policy)


def test_a_policy_or_clock_of_the_wrong_type_is_refused(sqlite_url: str) -> None:
    with pytest.raises(InvalidPolicyError, match="policy"):
        ChatLedger.open(sqlite_url, policy={"idle_timeout": 60})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        ChatLedger.open(sqlite_url, clock="now")  # type: ignore[arg-type]


def test_valid_edge_values_are_accepted_unchanged(sqlite_url: str) -> None:
    ledger = ChatLedger.open(sqlite_url, clock=ManualClock())
    try:
        at = datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        turn = ledger.receive("v\u00e9\U0001f600", "\U0001f600 ok", at=at, metadata={"n": -(2**63) + 1})
        assert turn.message.at == at.astimezone(UTC)
        value = {"deep": nested(30), "f": 1.5, "t": True, "none": None, "s": "\u2028"}
        state = ledger.set_slot(turn.session_id, "k", value, at=at)
        assert state.slots["k"] == json.loads(json.dumps(value))
        assert ledger.analytics(engagement=Engagement()).sessions == 0  # not caught up yet
    finally:
        ledger.close()


@pytest.mark.postgres
def test_10mb_values_are_refused_at_once_while_another_writer_keeps_writing(postgres_url: str) -> None:
    """They used to hang the insert while it held the events table lock, and every
    other writer (even ChatLedger.open) blocked behind it."""
    hostile, other = ChatLedger.open(postgres_url), ChatLedger.open(postgres_url)
    stop = threading.Event()
    written: list[float] = []

    def write() -> None:
        while not stop.is_set():
            other.receive(f"w{len(written) % 5}", "still writing")
            written.append(time.monotonic())

    writer = threading.Thread(target=write)
    try:
        sid = hostile.receive("h", "hi").session_id
        writer.start()
        while len(written) < 3:
            time.sleep(0.01)
        calls = [
            lambda: hostile.receive("h", "hi", client_message_id=MB10),
            lambda: hostile.receive("h", "hi", metadata={"blob": MB10}),
            lambda: hostile.reply(sid, MB10),
            lambda: hostile.set_slot(sid, "k", MB10),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(FieldTooLargeError):
                call()
            assert time.monotonic() - started < 1.0
        before = len(written)
        time.sleep(0.3)
        assert len(written) > before  # the other writer was never blocked
        stop.set()
        writer.join(10)
        assert not writer.is_alive()
        assert len(hostile.session_events(sid)) == 2  # started + the one message: nothing appended
    finally:
        stop.set()
        writer.join(10)
        hostile.close()
        other.close()


# ---- the validator alone, under hypothesis (the full fuzz over the API is separate)

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text | st.integers(), inner, max_size=4),
    max_leaves=20,
)
SMALL = Limits(max_text_chars=20, max_id_chars=10, max_json_bytes=200, max_json_depth=3)


@settings(max_examples=examples(150), deadline=None)
@given(any_text)
def test_validated_text_is_storable(text: str) -> None:
    try:
        checked = validation.check_text("text", text, SMALL)
    except InvalidFieldError as exc:
        assert exc.field == "text"
        return
    assert checked is text and "\x00" not in text and text.strip() and len(text) <= 20
    text.encode("utf-8")


@settings(max_examples=examples(150), deadline=None)
@given(json_values)
def test_validated_json_is_storable(value: Any) -> None:
    try:
        checked = validation.check_json("value", value, SMALL)
    except InvalidFieldError as exc:
        assert exc.field.startswith("value")
        return
    dumped = json.dumps(checked, ensure_ascii=False, allow_nan=False)
    assert len(dumped.encode("utf-8")) <= 200 and "\x00" not in dumped


@settings(max_examples=examples(100), deadline=None)
@given(st.datetimes(timezones=st.none() | st.timezones()))
def test_validated_times_are_aware_utc_and_in_range(value: datetime) -> None:
    try:
        checked = validation.check_time("at", value)
    except InvalidTimeError as exc:
        assert exc.field == "at" and exc.rule in ("naive", "range")
        return
    assert checked.tzinfo is UTC and checked == value.astimezone(UTC)
    checked + validation.MAX_DURATION  # a deadline never overflows


def test_the_limits_ceilings_are_the_domains() -> None:
    from chatledger.domain import conversation

    # the longest text and id the limits allow pass the domain's own checks; one more does not
    conversation.check_text("t" * validation.TEXT_CEILING)
    conversation.check_name("task name", "t" * validation.ID_CEILING)
    with pytest.raises(InvalidCommandError):
        conversation.check_text("t" * (validation.TEXT_CEILING + 1))
    with pytest.raises(InvalidCommandError):
        conversation.check_name("task name", "t" * (validation.ID_CEILING + 1))


def test_the_deepest_json_the_limits_allow_survives_snapshots_and_a_fresh_read(sqlite_url: str) -> None:
    """``max_json_depth`` is capped where pydantic can still read the value back
    from inside a session snapshot (its JSON parser stops at 200 levels): a
    session holding the deepest slot value, metadata and context it accepts
    stays readable and writable in a new process."""
    depth = Limits.model_fields["max_json_depth"].metadata[-1].le
    with pytest.raises(ConfigurationError, match="max_json_depth"):
        ChatLedger.open(sqlite_url, max_json_depth=depth + 1)
    ledger = ChatLedger.open(sqlite_url, max_json_depth=depth, snapshot_interval=2)
    try:
        sid = ledger.receive(
            "v", "hi", metadata={"m": nested(depth - 1)}, context={"client_metadata": {"c": nested(depth - 2)}}
        ).session_id
        ledger.set_slot(sid, "k", nested(depth), scope="user")
        ledger.reply(sid, "x", metadata={"m": nested(depth - 1)})
        with pytest.raises(InvalidValueError):
            ledger.set_slot(sid, "k", nested(depth + 1))
    finally:
        ledger.close()
    with ChatLedger.open(sqlite_url, max_json_depth=depth, snapshot_interval=2) as fresh:
        assert fresh.session(sid).slots["k"] == nested(depth)
        fresh.reply(sid, "still readable")
        fresh.catch_up()
        assert all(row.failed == 0 and row.lag == 0 for row in fresh.projection_status())
        assert all(e.model_dump_json() for e in fresh.events_after(0, content=True))
        assert fresh.verify(sid).ok and len(list(fresh.history(sid))) == 5
