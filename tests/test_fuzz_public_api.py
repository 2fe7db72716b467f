"""Issue 9's fuzz: hostile values through every public command, query and the CLI.

Each call gets at most one hostile argument (a lone surrogate, a NUL, 10 MB of
text, a wrong type, NaN, nesting 40 deep, a naive or absurd datetime, ...), the
others drawn from valid values. The oracle knows which rule a hostile value
breaks: the call must raise exactly that :class:`InvalidFieldError` subclass and
append nothing. With only valid arguments a call either succeeds or raises a
``ChatLedgerError`` about the state of the store (an unknown or closed session,
a task out of order, someone else's session), never a validation error, and
again appends nothing unless it succeeded. Afterwards every read model catches
up and the log verifies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from chatledger import (
    ChatLedger,
    ChatLedgerError,
    FieldTooLargeError,
    InvalidFieldError,
    InvalidTextError,
    InvalidTimeError,
    InvalidValueError,
    ManualClock,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import POSTGRES_URL, drop_schema, require_postgres
from .helpers import examples, log_head

BIG = "x" * 10_000_000  # 10 MB

# ---------------------------------------------------------------- value strategies


@dataclass(frozen=True)
class Arg:
    value: Any
    error: type[InvalidFieldError] | None = None  # the rule it breaks, if hostile

    def __repr__(self) -> str:
        shown = repr(self.value)
        return f"Arg({shown[:60]}{'...' if len(shown) > 60 else ''}, {self.error.__name__ if self.error else 'ok'})"


ok_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
id_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x1f")
surrogate = st.characters(whitelist_categories=("Cs",))


def _with(text: st.SearchStrategy[str], ch: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(text, ch, text).map(lambda t: t[0] + t[1] + t[2])


def strings(valid_max: int, oversize: str, *, is_id: bool = False) -> st.SearchStrategy[Arg]:
    """Texts or ids: valid ones, and each way a string can be hostile (an id also
    with the unit separator, which joins a tenant to an id)."""
    chars = id_chars if is_id else ok_chars
    valid = st.text(chars, min_size=1, max_size=min(valid_max, 30)).filter(str.strip)
    hostile = [
        _with(st.text(chars, max_size=5), st.just("\x1f")).map(lambda s: Arg(s, InvalidTextError))
    ] if is_id else []
    return st.one_of(
        *hostile,
        valid.map(Arg),
        valid.map(Arg),
        _with(st.text(ok_chars, max_size=5), surrogate).map(lambda s: Arg(s, InvalidTextError)),
        _with(st.text(ok_chars, max_size=5), st.just("\x00")).map(lambda s: Arg(s, InvalidTextError)),
        st.sampled_from(["", "   ", "\n\t"]).map(lambda s: Arg(s, InvalidTextError)),
        st.just(Arg(oversize, FieldTooLargeError)),
        st.sampled_from([123, 4.5, b"bytes", ["a"], object()]).map(lambda x: Arg(x, InvalidValueError)),
    )


TEXT = strings(100_000, BIG)
ID = strings(200, "i" * 201, is_id=True)
VISITORS = ["v-1", "v-2", "v-3"]
USERS = ["u-1", "u-2"]


def known_or(strategy: st.SearchStrategy[Arg], known: list[str]) -> st.SearchStrategy[Arg]:
    """Mostly ids the store knows (so commands get past validation into state), else fuzz."""
    return st.one_of(st.sampled_from(known).map(Arg), st.sampled_from(known).map(Arg), strategy)


nested_40: Any = 1
for _ in range(40):
    nested_40 = [nested_40]

JSON_VALID = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(ok_chars, max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(ok_chars, max_size=5), children, max_size=3),
    max_leaves=8,
)
JSON_HOSTILE = st.sampled_from([
    Arg(math.nan, InvalidValueError),
    Arg(math.inf, InvalidValueError),
    Arg([1, -math.inf], InvalidValueError),
    Arg(nested_40, InvalidValueError),
    Arg(2**70, InvalidValueError),
    Arg({1: "int key"}, InvalidValueError),
    Arg({"a": {1, 2}}, InvalidValueError),
    Arg(b"bytes", InvalidValueError),
    Arg(BIG, FieldTooLargeError),
    Arg({"note": BIG}, FieldTooLargeError),
    Arg("bad \ud800", InvalidTextError),
    Arg({"k": "nul\x00"}, InvalidTextError),
    Arg({"bad \udcff key": 1}, InvalidTextError),
])
JSON = st.one_of(JSON_VALID.map(Arg), JSON_VALID.map(Arg), JSON_HOSTILE)
METADATA = st.one_of(
    st.just(Arg(None)),
    st.dictionaries(st.text(ok_chars, max_size=8), JSON_VALID, max_size=3).map(Arg),
    JSON_HOSTILE.filter(lambda a: isinstance(a.value, dict)),
    st.sampled_from([Arg([1, 2], InvalidValueError), Arg("text", InvalidValueError)]),
)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TIME = st.one_of(
    st.just(Arg(None)),
    st.integers(0, 7200).map(lambda s: Arg(NOW + timedelta(seconds=s))),
    st.sampled_from([
        Arg(datetime(2026, 1, 1, 12, 0), InvalidTimeError),  # naive
        Arg(datetime(9999, 12, 31, 23, 59, tzinfo=UTC), InvalidTimeError),
        Arg(datetime(1, 1, 1, tzinfo=UTC), InvalidTimeError),
        Arg("2026-01-01T12:00:00Z", InvalidTimeError),
        Arg(1767268800, InvalidTimeError),
    ]),
)
DURATION = st.one_of(
    st.integers(1, 7200).map(lambda s: Arg(timedelta(seconds=s))),
    st.sampled_from([
        Arg(timedelta.max, InvalidTimeError),
        Arg(timedelta(0), InvalidTimeError),
        Arg(timedelta(seconds=-5), InvalidTimeError),
        Arg(30, InvalidTimeError),
    ]),
)
COUNT = st.one_of(
    st.integers(1, 10_000).map(Arg),
    st.sampled_from([Arg(0, InvalidValueError), Arg(-1, InvalidValueError), Arg(2**64, InvalidValueError),
                     Arg(1.5, InvalidValueError), Arg("10", InvalidValueError), Arg(True, InvalidValueError)]),
)

# ---------------------------------------------------------------- the calls

Call = tuple[str, Callable[[ChatLedger, dict[str, Any]], Any], dict[str, st.SearchStrategy[Arg]]]


def session_ids(ledger: ChatLedger) -> list[str]:
    found = [str(s) for v in VISITORS if (state := ledger.visitor(v)) for s in state.session_ids]
    return found or [str(uuid4())]


def _sid(strategy: st.SearchStrategy[Arg] | None = None) -> st.SearchStrategy[Arg]:
    """A session id: usually one of the store's (chosen at call time), else fuzz."""
    hostile = st.sampled_from([
        Arg("sess\x00", InvalidTextError), Arg("\ud800", InvalidTextError), Arg(BIG, FieldTooLargeError),
        Arg(42, InvalidValueError), Arg(None, InvalidValueError),
    ])
    return st.one_of(st.integers(0, 50).map(lambda i: Arg(("#known", i))), st.just(Arg(str(uuid4()))), hostile)


CALLS: list[Call] = [
    ("receive", lambda l, a: l.receive(a["visitor_id"], a["text"], client_message_id=a["cid"], metadata=a["metadata"], at=a["at"], channel=a["channel"]),
     {"visitor_id": known_or(ID, VISITORS), "text": TEXT, "cid": st.one_of(st.just(Arg(None)), ID), "metadata": METADATA, "at": TIME, "channel": known_or(ID, ["web"])}),
    ("reply", lambda l, a: l.reply(a["session_id"], a["text"], client_message_id=a["cid"], metadata=a["metadata"]),
     {"session_id": _sid(), "text": TEXT, "cid": st.one_of(st.just(Arg(None)), ID), "metadata": METADATA}),
    ("set_slot", lambda l, a: l.set_slot(a["session_id"], a["key"], a["value"], at=a["at"]),
     {"session_id": _sid(), "key": ID, "value": JSON, "at": TIME}),
    ("clear_slot", lambda l, a: l.clear_slot(a["session_id"], a["key"]), {"session_id": _sid(), "key": ID}),
    ("start_task", lambda l, a: l.start_task(a["session_id"], a["task"]), {"session_id": _sid(), "task": ID}),
    ("complete_task", lambda l, a: l.complete_task(a["session_id"], a["task"]), {"session_id": _sid(), "task": ID}),
    ("end_session", lambda l, a: l.end_session(a["session_id"], reason=a["reason"], at=a["at"]),
     {"session_id": _sid(), "reason": ID, "at": TIME}),
    ("link_identity", lambda l, a: l.link_identity(a["visitor_id"], a["user_id"]),
     {"visitor_id": known_or(ID, VISITORS), "user_id": known_or(ID, USERS)}),
    ("session", lambda l, a: l.session(a["session_id"], as_of=a["as_of"], visitor_id=a["visitor_id"]),
     {"session_id": _sid(), "as_of": TIME, "visitor_id": st.one_of(st.just(Arg(None)), known_or(ID, VISITORS))}),
    ("session_events", lambda l, a: l.session_events(a["session_id"]), {"session_id": _sid()}),
    ("history", lambda l, a: list(l.history(a["session_id"], until=a["until"])), {"session_id": _sid(), "until": TIME}),
    ("transcript", lambda l, a: l.transcript(user_id=a["user_id"], start=a["start"]),
     {"user_id": known_or(ID, USERS), "start": TIME}),
    ("memory", lambda l, a: l.memory(visitor_id=a["visitor_id"]), {"visitor_id": known_or(ID, VISITORS)}),
    ("visitor", lambda l, a: l.visitor(a["visitor_id"]), {"visitor_id": known_or(ID, VISITORS)}),
    ("analytics", lambda l, a: l.analytics(start=a["start"], as_of=a["as_of"]), {"start": TIME, "as_of": TIME}),
    ("resessionize", lambda l, a: l.resessionize(a["timeout"]), {"timeout": DURATION}),
    ("sweep", lambda l, a: l.sweep(a["now"], limit=a["limit"], batch_size=a["batch_size"]),
     {"now": TIME, "limit": st.one_of(st.just(Arg(None)), COUNT), "batch_size": COUNT}),
    ("erase", lambda l, a: l.erase(user_id=a["user_id"]), {"user_id": ID}),  # unknown users: refused, or erased
    ("events_after", lambda l, a: l.events_after(a["position"], limit=a["limit"], content=a["content"]),
     {"position": st.one_of(st.integers(0, 200).map(Arg), st.sampled_from([Arg(-1, InvalidValueError), Arg("3", InvalidValueError), Arg(2**64, InvalidValueError)])),
      "limit": st.one_of(st.integers(1, 500).map(Arg), st.sampled_from([Arg(0, InvalidValueError), Arg(10**9, InvalidValueError)])),
      "content": st.one_of(st.booleans().map(Arg), st.just(Arg("yes", InvalidValueError)))}),
    ("projection_failures", lambda l, a: l.projection_failures(a["name"]),
     {"name": st.one_of(st.just(Arg(None)), st.sampled_from(["analytics", "memory"]).map(Arg), ID)}),
]

@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Callable[..., Any], dict[str, Arg]]:
    name, fn, params = draw(st.sampled_from(CALLS))
    args = {key: draw(strategy) for key, strategy in params.items()}
    hostile = [k for k, a in args.items() if a.error is not None]
    if len(hostile) > 1:  # at most one hostile argument, so the oracle knows the rule
        keep = draw(st.sampled_from(hostile))
        for key in hostile:
            if key != keep:
                args[key] = draw(params[key].filter(lambda a: a.error is None))
    return name, fn, args


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzz_ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatLedger]:
    """One store per database for the whole fuzz, with a few visitors in it."""
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}", None
    else:
        require_postgres()
        schema = f"t_{uuid4().hex[:16]}"
        url = f"{POSTGRES_URL}?schema={schema}"
    clock = ManualClock(NOW)
    try:
        with ChatLedger.open(url, clock=clock) as ledger:
            for visitor in VISITORS:
                ledger.receive(visitor, f"hello from {visitor}")
            ledger.link_identity("v-1", "u-1")
            yield ledger
    finally:
        if schema:
            drop_schema(schema)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=calls())
def test_each_call_succeeds_or_refuses_for_the_rule_it_broke(fuzz_ledger: ChatLedger, call: tuple[str, Callable[..., Any], dict[str, Arg]]) -> None:
    name, fn, args = call
    values = {k: a.value for k, a in args.items()}
    for key, value in values.items():
        if isinstance(value, tuple) and value and value[0] == "#known":
            known = session_ids(fuzz_ledger)
            values[key] = known[value[1] % len(known)]
    expected = next((a.error for a in args.values() if a.error is not None), None)
    head = log_head(fuzz_ledger)
    try:
        fn(fuzz_ledger, values)
    except ChatLedgerError as err:
        assert log_head(fuzz_ledger) == head, f"{name} raised {err!r} after appending"
        if expected is not None:
            assert isinstance(err, expected), f"{name}({args}) raised {type(err).__name__}: {err}, expected {expected.__name__}"
        else:
            assert not isinstance(err, InvalidFieldError), f"{name}({args}) refused a valid value: {err}"
        return
    assert expected is None, f"{name}({args}) accepted a value that breaks {expected.__name__}"


def test_after_the_fuzz_every_read_model_catches_up_and_the_log_verifies(fuzz_ledger: ChatLedger) -> None:
    fuzz_ledger.catch_up()
    assert all(s.lag == 0 for s in fuzz_ledger.projection_status())
    assert fuzz_ledger.verify().ok
    fuzz_ledger.transcript(user_id="u-1")
    fuzz_ledger.analytics()
