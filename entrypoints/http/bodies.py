"""Request bodies: their models, and the byte bound applied before one is parsed whole.

:class:`BoundedBodies` is an ASGI middleware: a request whose ``Content-Length`` is over the bound
is refused before any of it is read, and a body sent without one (chunked) is counted as it
arrives and refused as soon as it passes the bound; either way ``413`` (problem
``body-too-large``) and the ledger is never called. The bound follows from the ledger's
validation limits (:func:`body_bound`): the largest body whose every field could pass them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ... import Limits
from .problems import service_problem

JSON_ESCAPE = 6  # the most bytes one character takes in JSON text ("\u0000")
OVERHEAD = 4096  # keys, punctuation, whitespace


def body_bound(limits: Limits) -> int:
    """Bytes enough for a text, three ids (client message id, session id, channel), the
    metadata and the context each at their limits."""
    return (
        JSON_ESCAPE * (limits.max_text_chars + 3 * limits.max_id_chars)
        + 2 * JSON_ESCAPE * limits.max_json_bytes
        + OVERHEAD
    )


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncomingMessage(Body):
    """A user message: ``POST /v1/visitors/{visitor_id}/messages``."""

    text: str
    client_message_id: str | None = None
    session_id: str | None = None
    channel: str = "web"
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class Reply(Body):
    """The bot's (or the system's) message: ``POST /v1/sessions/{session_id}/replies``."""

    text: str
    role: Literal["bot", "system"] = "bot"
    client_message_id: str | None = None
    metadata: dict[str, Any] | None = None


class SlotValue(Body):
    """A slot's value: ``PUT /v1/sessions/{session_id}/slots/{key}``."""

    value: Any
    scope: Literal["session", "user"] = "session"


class NewTask(Body):
    """A task to start: ``POST /v1/sessions/{session_id}/tasks``."""

    task: str


class Ending(Body):
    """``POST /v1/sessions/{session_id}/end``."""

    reason: str = "ended"


class IdentityLink(Body):
    """The user a visitor logged in as: ``POST /v1/visitors/{visitor_id}/identity``."""

    user_id: str


class ErasureRequest(Body):
    """Whose content to erase (exactly one of the two): ``POST /v1/erasures``."""

    user_id: str | None = None
    visitor_id: str | None = None


class BodyTooLarge(HTTPException):
    """Raised by the counting ``receive`` inside the endpoint's body read: FastAPI passes an
    ``HTTPException`` through as it is, and the app answers it as problem ``body-too-large``."""

    def __init__(self, bound: int) -> None:
        super().__init__(413, f"The body is over {bound} bytes.")
        self.bound = bound


class BodyLimit:
    """The bound in bytes: set from the ledger's limits once it is open (the app's lifespan)."""

    def __init__(self, bytes_: int = 1 << 20) -> None:
        self.bytes = bytes_


class BoundedBodies:
    """Refuse request bodies over ``limit.bytes`` before they are read whole."""

    def __init__(self, app: ASGIApp, limit: BodyLimit) -> None:
        self.app, self.limit = app, limit

    @property
    def bound(self) -> int:
        return self.limit.bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        bound = self.bound
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > bound):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > bound:
                    raise BodyTooLarge(bound)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = service_problem(
            "body-too-large", f"The body is over {self.bound} bytes.", limit=self.bound
        )
        await response(scope, receive, send)


__all__ = [
    "Body", "BodyLimit", "BodyTooLarge", "BoundedBodies", "Ending", "ErasureRequest", "IdentityLink",
    "IncomingMessage", "NewTask", "Reply", "SlotValue", "body_bound",
]
