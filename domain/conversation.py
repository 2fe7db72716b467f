"""What a conversation holds, as values: its context, messages, slots and the
state a session snapshot keeps, with the checks of message text and names.
The :class:`~chatledger.domain.session.Session` aggregate's events carry them."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, JsonValue

from .errors import InvalidCommandError
from .pydantic_aggregates import Immutable
from .validation import ID_CEILING, TEXT_CEILING

Role = Literal["user", "bot", "system"]
Status = Literal["active", "timed_out", "ended"]
SlotScope = Literal["session", "user"]

MAX_TEXT_LENGTH = TEXT_CEILING  # the domain's hard limits: the validation layer's ceilings
MAX_NAME_LENGTH = ID_CEILING


class SessionContext(Immutable):
    """Where the conversation started (all optional)."""

    page_url: str | None = None
    locale: str | None = None
    client_metadata: dict[str, JsonValue] = Field(default_factory=dict)


class Message(Immutable):
    """One message of a conversation, as recorded."""

    position: int
    role: Role
    text: str
    at: AwareDatetime
    client_message_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class Slot(Immutable):
    value: JsonValue
    scope: SlotScope = "session"
    set_at: AwareDatetime


def check_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidCommandError("Message text must be a non-empty string.")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidCommandError(
            f"Message text is {len(text)} characters; the limit is {MAX_TEXT_LENGTH}."
        )
    return text


def check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidCommandError(f"A {kind} must be a non-empty string of at most {MAX_NAME_LENGTH} characters.")
    return name
