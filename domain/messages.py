"""A session's messages as a sequence that is read on access.

A session's snapshot does not hold its messages (a snapshot that did grew with
the conversation: re-serialising it cost more at every snapshot, and reading
it back validated every message before anything could use the session).
Messages are facts already in the log: :class:`MessageLog` holds the ones
recorded before the snapshot as a *stored* sequence the infrastructure reads
and decodes lazily, a message at a time (see
:class:`chatledger.infrastructure.snapshots.StoredMessages`), and the ones
recorded since as values. Commands never need the stored ones (the client-id
index is in the snapshot); a query that lists them pays for what it lists.

Erasure blanks messages (``Session.ContentErased``): the log records how many
of its first messages were erased, and blanks each one as it is read
(:func:`blank`), so a stored message decoded after the erasure reads exactly as
a replayed one does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, overload

from pydantic import PlainSerializer, PlainValidator, TypeAdapter

from .conversation import Message
from .erasure import ERASED_METADATA, ERASED_VALUES


def blank(message: Message) -> Message:
    """``message`` with its personal content replaced by the erased markers."""
    return message.model_copy(
        update={
            "text": ERASED_VALUES["text"],
            "metadata": dict(ERASED_METADATA) if message.metadata else {},
            "client_message_id": ERASED_VALUES["client_message_id"],
        }
    )


class StoredMessages(Sequence[Message]):
    """The messages of a session recorded before its snapshot, read from the
    store (the infrastructure subclasses it)."""

    def pinned(self) -> Sequence[Message]:
        """These messages as a sequence that reads them without going back to
        the store (what a :class:`~chatledger.domain.read_views.SessionState` holds,
        so it stays readable after its ledger is closed)."""
        return self


class NoStoredMessages(StoredMessages):
    """The stored part of a log whose store is not at hand (``count`` messages
    that cannot be read): reading one raises ``LookupError``."""

    def __init__(self, count: int) -> None:
        self.size = count

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        msg = f"{self.size} messages recorded before this session's snapshot are not loaded."
        raise LookupError(msg)


class Messages(Sequence[Message]):
    """A read-only sequence of a session's messages, in order (``position`` =
    index); equal to any sequence of the same messages (a tuple, a list)."""

    __slots__ = ("_stored", "_recorded", "_erased", "_blanked", "_lock")

    def __init__(self, stored: Sequence[Message] = (), recorded: Sequence[Message] = (), erased: int = 0) -> None:
        self._stored = stored
        self._recorded = list(recorded)
        self._erased = erased
        self._blanked: dict[int, Message] = {}
        self._lock = threading.Lock()

    @property
    def stored_count(self) -> int:
        """How many messages come from the store (recorded before the snapshot)."""
        return len(self._stored)

    @property
    def erased_count(self) -> int:
        """How many of the first messages were erased."""
        return self._erased

    def __len__(self) -> int:
        return len(self._stored) + len(self._recorded)

    def _at(self, i: int) -> Message:
        n = len(self._stored)
        message = self._stored[i] if i < n else self._recorded[i - n]
        if i < self._erased:
            blanked = self._blanked.get(i)
            if blanked is None:
                with self._lock:
                    blanked = self._blanked.setdefault(i, blank(message))
            return blanked
        return message

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        size = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            if step == 1:
                return self._range(start, max(start, stop))
            return [self._at(i) for i in range(start, stop, step)]
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("message index out of range")
        return self._at(index)

    def _range(self, start: int, stop: int) -> list[Message]:
        """Messages ``start`` to ``stop``: the stored ones read as one slice
        (which the store decodes in one pass), the erased ones blanked."""
        n = len(self._stored)
        found = list(self._stored[start:min(stop, n)]) if start < n else []
        found += self._recorded[max(start - n, 0):max(stop - n, 0)]
        if start < self._erased:
            for k in range(min(stop, self._erased) - start):
                found[k] = self._at(start + k)
        return found

    def __iter__(self) -> Iterator[Message]:
        return iter(self._range(0, len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} messages)"

    def frozen(self) -> Messages:
        """A read-only copy that later appends to this log do not change, and
        that reads its messages without the store (:meth:`StoredMessages.pinned`)."""
        stored = self._stored.pinned() if isinstance(self._stored, StoredMessages) else self._stored
        return Messages(stored, self._recorded, self._erased)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Messages:
        # Messages are frozen values and the stored part never changes: share them.
        return type(self)(self._stored, self._recorded, self._erased)


class MessageLog(Messages):
    """The messages of a live :class:`~chatledger.domain.session.Session`: the
    events append to it and erase it."""

    __slots__ = ()

    def append(self, message: Message) -> None:
        self._recorded.append(message)

    def erase(self) -> None:
        """Every message so far reads as erased (``Session.ContentErased``)."""
        self._erased = len(self)
        self._blanked = {}


_MESSAGE_TUPLE: TypeAdapter[tuple[Message, ...]] = TypeAdapter(tuple[Message, ...])


def _as_messages(value: Any) -> Messages:
    return value if isinstance(value, Messages) else Messages(recorded=_MESSAGE_TUPLE.validate_python(value))


MessagesField = Annotated[
    Messages,
    PlainValidator(_as_messages),
    PlainSerializer(tuple, return_type=tuple[Message, ...]),
]
"""A pydantic field of :class:`Messages`: one is taken as it is (unread), any
other sequence is validated as messages; serialised as the tuple of them."""

__all__ = ["MessageLog", "Messages", "MessagesField", "NoStoredMessages", "StoredMessages", "blank"]
