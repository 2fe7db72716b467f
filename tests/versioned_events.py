"""Test-only aggregates whose events change shape between versions.

``NoteV1`` is what an older release defined; ``NoteV2`` the same events after
a change of shape, each at ``class_version = 2`` with its upcaster next to it:

- ``Titled``: a field renamed (``title`` -> ``heading``);
- ``Coloured``: a field removed (``shade``);
- ``Signed``: a field split in two (``author`` -> ``first_name``, ``last_name``).

``NoteV3.Signed`` goes one step further (``last_name`` upper-cased), so a chain
of upcasters (v1 -> v2 -> v3) is exercised too. The real events of chatledger are
not changed by any of this.
"""

from __future__ import annotations

from typing import Any

from chatledger.domain.pydantic_aggregates import Aggregate


class NoteV1(Aggregate):
    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        pass

    class Titled(Event):
        title: str

        def apply(self, note: Any) -> None:
            note.title = self.title

    class Coloured(Event):
        colour: str
        shade: str

        def apply(self, note: Any) -> None:
            note.colour = self.colour

    class Signed(Event):
        author: str

        def apply(self, note: Any) -> None:
            note.author = self.author

    @classmethod
    def create(cls, at: Any) -> NoteV1:
        return cls._create(cls.Created, occurred_at=at)


class NoteV2(Aggregate):
    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        pass

    class Titled(Event):
        """v2: ``title`` is called ``heading``."""

        class_version = 2
        heading: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["heading"] = state.pop("title")

        def apply(self, note: Any) -> None:
            note.heading = self.heading

    class Coloured(Event):
        """v2: ``shade`` is gone."""

        class_version = 2
        colour: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            del state["shade"]

        def apply(self, note: Any) -> None:
            note.colour = self.colour

    class Signed(Event):
        """v2: ``author`` is split into ``first_name`` and ``last_name``."""

        class_version = 2
        first_name: str
        last_name: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            first, _, last = state.pop("author").partition(" ")
            state["first_name"] = first
            state["last_name"] = last

        def apply(self, note: Any) -> None:
            note.first_name, note.last_name = self.first_name, self.last_name

    @classmethod
    def create(cls, at: Any) -> NoteV2:
        return cls._create(cls.Created, occurred_at=at)


class NoteV3(Aggregate):
    class Event(Aggregate.Event):
        pass

    class Signed(Event):
        """v3: ``last_name`` is stored upper-case."""

        class_version = 3
        first_name: str
        last_name: str

        upcast_v1_v2 = NoteV2.Signed.upcast_v1_v2

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["last_name"] = state["last_name"].upper()
