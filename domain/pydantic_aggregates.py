"""Pydantic building blocks for event-sourced aggregates.

eventsourcing 9.5.6 ships no ``eventsourcing.pydantic`` module, so this is the
small adapter its ``examples/aggregate7``/``aggregate8`` describe: domain events
are frozen pydantic models (validated payloads, readable JSON), aggregates are
``eventsourcing.domain.BaseAggregate`` subclasses, snapshots are pydantic too.
"""

from __future__ import annotations

from copy import deepcopy
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

# get_topic is eventsourcing.domain's own import from eventsourcing.utils; the domain takes it
# from eventsourcing.domain, the one module of the library it may use.
from eventsourcing.domain import (  # type: ignore[attr-defined]
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    get_topic,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter, model_validator

from .errors import EventVersionError, InvalidTimeError

_datetime = TypeAdapter(AwareDatetime)


def utc(value: datetime, field: str = "at") -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are refused
    (:class:`InvalidTimeError`), never guessed to be UTC."""
    if not isinstance(value, datetime):
        raise InvalidTimeError(field, "type", f"{field} must be a datetime, not {type(value).__name__}.")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTimeError(
            field,
            "naive",
            f"{field}={value!r} has no timezone; pass an aware datetime (UTC), "
            "e.g. datetime.now(UTC).",
        )
    return value.astimezone(UTC)


class Immutable(BaseModel):
    """A frozen value object. Sharing one instance is safe, so copies are free."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Immutable:
        return self


class DomainEvent(Immutable):
    """Base of every stored event.

    ``timestamp`` is the wall-clock time the event object was created (the
    library's recording time); ``occurred_at`` is the business time of the fact,
    from the injected clock or the caller's ``at``. Only ``occurred_at`` drives
    behaviour, so replay is the same whenever and wherever it runs.

    ``class_version`` is the version of the event's stored shape (eventsourcing's
    own attribute, 1 unless bumped). An event class at version ``n > 1`` has
    static methods ``upcast_v1_v2(state: dict) -> None`` … ``upcast_v{n-1}_v{n}``
    that turn a stored state of the older shape into the next one, in place;
    the mapper writes ``"class_version": n`` into the stored state (not at
    version 1, as the library does) and runs the upcasters on what it reads
    before validation (:func:`upcast`). See docs/events.md, "Versions and upgrades".
    """

    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    timestamp: AwareDatetime
    occurred_at: AwareDatetime

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        version = cls.__dict__.get("class_version", cls.class_version)
        if type(version) is not int or version < 1:
            msg = f"{cls.__qualname__}.class_version must be an int >= 1, not {version!r}."
            raise TypeError(msg)
        missing = [
            f"upcast_v{n}_v{n + 1}" for n in range(1, version) if not callable(getattr(cls, f"upcast_v{n}_v{n + 1}", None))
        ] if not getattr(cls, "_never_upcast", False) else []
        if missing:
            msg = (
                f"{cls.__qualname__} is at class_version {version} but has no {', '.join(missing)}: "
                "write each as a @staticmethod that changes the stored state dict in place."
            )
            raise TypeError(msg)


class SnapshotState(Immutable):
    """Typed aggregate state inside a snapshot; subclasses declare the fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    # An "after" validator, not a custom ``__init__`` (nor a "before" validator):
    # either of those makes pydantic hand the whole parsed JSON to Python and
    # validate it in Python mode, which for a long session's snapshot (thousands
    # of messages) took about twice as long as the JSON-mode validation.
    @model_validator(mode="after")
    def _typed_timestamps(self) -> SnapshotState:
        extra = self.__pydantic_extra__
        if extra:
            for key in ("_created_on", "_modified_on"):
                if key in extra:
                    extra[key] = _datetime.validate_python(extra[key])
        return self


class AggregateSnapshot(DomainEvent, CanSnapshotAggregate[UUID]):
    """A snapshot event whose ``state`` is a typed :class:`SnapshotState`.

    Its ``class_version`` needs no upcasters: a snapshot of another version is
    never upcast (:class:`StaleSnapshot`), the aggregate is replayed."""

    _never_upcast: ClassVar[bool] = True

    topic: str
    state: Any
    occurred_at: AwareDatetime | None = None  # type: ignore[assignment]

    @classmethod
    def state_of(cls, aggregate: Any) -> dict[str, Any]:
        """What of ``aggregate`` the snapshot keeps (its attributes, by default)."""
        state = dict(vars(aggregate))
        for key in ("_id", "_version", "_pending_events"):
            state.pop(key, None)
        return state

    @classmethod
    def take(cls, aggregate: Any) -> AggregateSnapshot:
        state = cls.state_of(aggregate)
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            state=state,
        )


class StaleSnapshot(Exception):
    """A stored snapshot's ``class_version`` is not its class's: it is ignored
    (snapshots are derived data) and the aggregate is rebuilt from its events."""


def upcast(cls: type[DomainEvent], state: dict[str, Any], originator_id: Any, originator_version: Any) -> dict[str, Any]:
    """Bring a decoded stored ``state`` of ``cls`` to ``cls.class_version``, in place.

    Pops ``state["class_version"]`` (1 if absent) and runs ``upcast_v{n}_v{n+1}``
    from the stored version up. The state is the decoded, decrypted one: a
    personal field is plaintext, or the erased marker of its stored name
    (``chatledger.domain.erasure.ERASED_VALUES``), never an envelope.

    A snapshot (:class:`AggregateSnapshot`) at any other version raises
    :class:`StaleSnapshot`: it is never upcast, the aggregate is replayed. An
    event stored at a newer version than ``cls`` has (written by newer code)
    raises :class:`~chatledger.domain.errors.EventVersionError`.
    """
    stored = state.pop("class_version", 1)
    current = cls.class_version
    if stored == current and type(stored) is int:
        return state
    if issubclass(cls, AggregateSnapshot):
        raise StaleSnapshot(f"{cls.__qualname__} stored at version {stored!r}, now {current}")
    if type(stored) is not int or not 1 <= stored < current:
        raise EventVersionError(cls.__qualname__, stored, current, originator_id, originator_version)
    while stored < current:
        getattr(cls, f"upcast_v{stored}_v{stored + 1}")(state)
        stored += 1
    return state


#: Values that are never mutated in place, so a copy may share them.
_IMMUTABLE_VALUES = (
    str, bytes, int, float, bool, type(None), Decimal,
    datetime, date, time, timedelta, UUID, Immutable,
)  # fmt: skip


class Aggregate(BaseAggregate[UUID]):
    """An aggregate whose events are pydantic :class:`DomainEvent` models."""

    #: Attributes that are a list, dict or set of immutable values (str, ints,
    #: datetimes, UUIDs, :class:`Immutable` models): ``deepcopy`` copies the
    #: container and shares the values. Every other attribute is deep-copied.
    shallow_containers: ClassVar[frozenset[str]] = frozenset({"_pending_events"})

    def __deepcopy__(self, memo: dict[int, Any]) -> Aggregate:
        """A deep copy in O(attributes), not O(values).

        The application's aggregate cache deep-copies an aggregate on every
        ``repository.get`` so a command's mutations cannot leak into the cache.
        The generic ``copy.deepcopy`` walks every message of a long session
        (about 1.5 microseconds each) although messages are frozen; this copy
        gives the same isolation: immutable values are shared (as
        ``Immutable.__deepcopy__`` already does), the containers named in
        ``shallow_containers`` are copied one level, anything else is
        deep-copied as before.
        """
        cls = type(self)
        copy = object.__new__(cls)
        memo[id(self)] = copy
        shallow = cls.shallow_containers
        state: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, _IMMUTABLE_VALUES):
                state[key] = value
            elif key in shallow and type(value) in (list, dict, set):
                state[key] = value.copy()
            else:
                state[key] = deepcopy(value, memo)
        object.__setattr__(copy, "__dict__", state)
        return copy

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid4()

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        pass

    class Created(Event, CanInitAggregate[UUID]):
        originator_topic: str
