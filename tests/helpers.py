"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import settings

from chatledger import ChatLedger
from chatledger.domain.session import Session


def examples(full: int) -> int:
    """A property's number of Hypothesis examples: ``full`` under the "full" profile (the full
    suite), a tenth of it (at least 3) under "fast" (the fast loop); see conftest.py."""
    return max(3, full * settings.default.max_examples // 100)


def slow_except(params: Sequence[Any], *fast: str) -> list[Any]:
    """The cases of a parametrized test, every one but those with an id in ``fast`` marked
    ``slow``: the fast loop runs one case per command family, the full suite runs them all."""
    marked = []
    for p in params:
        if p.id in fast:
            marked.append(p)
        else:
            marked.append(pytest.param(*p.values, id=p.id, marks=[*p.marks, pytest.mark.slow]))
    assert {p.id for p in params} >= set(fast), fast
    return marked


def log_head(ledger: ChatLedger) -> int:
    """Position of the last stored event (0 for an empty log)."""
    return ledger.recorder.max_notification_id() or 0


def event_names(ledger: ChatLedger, session_id: object) -> list[str]:
    return [type(e).__name__ for e in ledger.session_events(session_id)]  # type: ignore[arg-type]


def load_session(ledger: ChatLedger, session_id: object) -> Session:
    """The session aggregate itself, current (through the ledger's unit of work and cache)."""
    return ledger.get_session(session_id)  # type: ignore[arg-type]


def visitor_stream_id(visitor_id: str) -> object:
    """The id of a visitor's own event stream (not a session)."""
    from chatledger.domain.visitor import visitor_aggregate_id

    return visitor_aggregate_id(visitor_id)


@contextmanager
def unicode_checks_off() -> Iterator[None]:
    """Let NUL and lone surrogates through the validation layer (and nothing
    else), to reach what the database itself does with a value it refuses."""
    from chatledger.domain import validation

    original = validation._check_unicode
    validation._check_unicode = lambda field, value: None  # type: ignore[assignment]
    try:
        yield
    finally:
        validation._check_unicode = original  # type: ignore[assignment]


@contextmanager
def separator_checks_off() -> Iterator[None]:
    """Let the unit separator (``\\x1f``) through the validation layer (and nothing
    else), as releases before 0.5 did: to write the ids an old store may hold (a
    default-tenant visitor ``"acme\\x1fbob"``)."""
    from chatledger.domain import validation

    original = validation._check_separator
    validation._check_separator = lambda field, value: None  # type: ignore[assignment]
    try:
        yield
    finally:
        validation._check_separator = original  # type: ignore[assignment]


def store_unchecked(ledger: ChatLedger, session_id: object, event_class: type, **fields: object) -> int:
    """Append one event of ``event_class`` to a session exactly as given, the
    way a store written before input validation (or by a bug) may hold it:
    no command, domain or pydantic check runs (``model_construct``); it goes
    through the ledger's own mapper (encryption) and recorder (hash chain).
    Returns its log position. Fields: those of the event besides the
    originator's id, version and timestamp (``occurred_at`` defaults to the
    ledger clock)."""
    from uuid import UUID

    session = ledger.repository.get(UUID(str(session_id)))
    fields.setdefault("occurred_at", ledger.clock())
    event = event_class.model_construct(  # type: ignore[attr-defined]
        originator_id=session.id,
        originator_version=session.version + 1,
        timestamp=event_class.create_timestamp(),  # type: ignore[attr-defined]
        **fields,
    )
    ledger.recorder.insert_events([ledger.mapper.to_stored_event(event)])
    return log_head(ledger)


def read_stored_as(ledger: ChatLedger, aggregate_id: object, classes: dict[type, type] | None = None) -> list:
    """An aggregate's events decoded from the store by the ledger's own mapper,
    each event of a class in ``classes`` under the class it maps to: the same
    stored bytes, read by a release in which that event class has another
    shape or version (how a newer, or older, process reads this store)."""
    from uuid import UUID

    from eventsourcing.persistence import StoredEvent
    from eventsourcing.utils import get_topic

    topics = {get_topic(old): get_topic(new) for old, new in (classes or {}).items()}
    events = []
    for stored in ledger.recorder.select_events(UUID(str(aggregate_id))):
        relabelled = StoredEvent(
            originator_id=stored.originator_id,
            originator_version=stored.originator_version,
            topic=topics.get(stored.topic, stored.topic),
            state=stored.state,
        )
        events.append(ledger.mapper.to_domain_event(relabelled))
    return events


def stored_states(ledger: ChatLedger, aggregate_id: object) -> list[bytes]:
    """The stored ``state`` bytes of an aggregate's events, in order."""
    from uuid import UUID

    return [bytes(s.state) for s in ledger.recorder.select_events(UUID(str(aggregate_id)))]


def background_jobs(ledger: ChatLedger) -> Any:
    """The ledger's running background jobs, or None when none are started."""
    return ledger.background


def key_ring_caches(ledger: ChatLedger) -> dict[str, Sized]:
    """The key ring's in-memory caches (bounded by ``key_ring.MAX_CACHED_KEYS``)."""
    ring: Any = ledger.mapper.key_ring  # type: ignore[attr-defined]
    return {
        "key_owners": ring._key_owners, "active": ring._active, "by_kid": ring._by_kid,
        "erased": ring._erased,
    }


def hold_uncommitted_key(ledger: ChatLedger, visitor_id: str, key: Any) -> None:
    """Make ``ledger`` encode ``visitor_id``'s content under ``key`` (a ``KeyRow``)
    as if it had made that key itself and not committed it yet."""
    ring: Any = ledger.mapper.key_ring  # type: ignore[attr-defined]
    ring._active[visitor_id] = (0.0, key, False)


def cached_copy(ledger: ChatLedger, aggregate_id: object) -> Any:
    """The aggregate cache's copy of an aggregate (what a command's first
    attempt writes against), or None if it holds none."""
    from uuid import UUID

    cache = ledger.repository.cache
    if cache is None:
        return None
    try:
        return cache.get(UUID(str(aggregate_id)))
    except KeyError:
        return None


@contextmanager
def read_paused_in(ledger: ChatLedger, thread_name: str, reached: Any, go: Any) -> Iterator[None]:
    """Pause the thread named ``thread_name`` right after its next read of
    ``ledger``'s event store (the events read, not yet applied or cached):
    ``reached`` is set there, and the read goes on when ``go`` is set."""
    import threading

    store: Any = ledger.events
    original = store.get

    def get(*args: Any, **kwargs: Any) -> Any:
        events = list(original(*args, **kwargs))
        if threading.current_thread().name == thread_name and not reached.is_set():
            reached.set()
            assert go.wait(20), "the paused read was never let go"
        return events

    store.get = get
    try:
        yield
    finally:
        del store.get


@contextmanager
def lost_batch(ledger: ChatLedger, error: BaseException) -> Iterator[None]:
    """The next batch taken from ``ledger``'s commit queue is lost: ``error``
    is raised right after the callers are taken off the queue, before any of
    them is written or marked done (as an asynchronous exception could)."""
    store: Any = ledger.events
    original = store._take

    def take() -> Any:
        del store._take
        original()
        raise error

    store._take = take
    try:
        yield
    finally:
        store.__dict__.pop("_take", None)


@contextmanager
def inserts_paused_until(ledger: ChatLedger, go: Any) -> Iterator[None]:
    """``ledger``'s recorder waits for ``go`` before each insert of events."""
    recorder: Any = ledger.recorder
    original = recorder.insert_events

    def insert_events(*args: Any, **kwargs: Any) -> Any:
        assert go.wait(20), "the paused insert was never let go"
        return original(*args, **kwargs)

    recorder.insert_events = insert_events
    try:
        yield
    finally:
        del recorder.insert_events
