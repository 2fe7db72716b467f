"""Errors as ``application/problem+json`` (RFC 9457).

Each :class:`~chatledger.ChatLedgerError` class has a problem ``type``, the URI
``urn:chatledger:problem:<kebab-case class name without "Error">`` (``UnknownSessionError`` is
``urn:chatledger:problem:unknown-session``), and an HTTP status (:data:`STATUS`, the nearest
class wins). A request the service itself refuses before the ledger sees it has one of
:data:`SERVICE_PROBLEMS`. docs/api.md, "HTTP service", lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from ... import (
    ChatLedgerError,
    ClientMessageIdConflictError,
    CommitOutcomeUnknownError,
    ConcurrencyConflictError,
    ConfigurationError,
    EventVersionError,
    FieldTooLargeError,
    IdentityConflictError,
    IdentityMismatchError,
    InvalidCommandError,
    ReadTimeoutError,
    SessionClosedError,
    SessionOwnershipError,
    TaskStateError,
    UnknownSessionError,
    UnknownSubjectError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PREFIX = "urn:chatledger:problem:"

# Another visitor's, user's (or, with tenants, tenant's) session is 404 like an unknown one:
# ids cannot be probed.
STATUS: dict[type, int] = {
    ChatLedgerError: 400,
    InvalidCommandError: 422,
    FieldTooLargeError: 422,
    UnknownSessionError: 404,
    UnknownSubjectError: 404,
    SessionOwnershipError: 404,
    IdentityMismatchError: 404,
    SessionClosedError: 409,
    IdentityConflictError: 409,
    ClientMessageIdConflictError: 409,
    TaskStateError: 409,
    ConcurrencyConflictError: 503,
    ReadTimeoutError: 503,
    CommitOutcomeUnknownError: 503,  # retry with the same client_message_id (idempotent)
    ConfigurationError: 500,
    EventVersionError: 500,
}

SERVICE_PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid-request": (422, "The request does not have the shape the endpoint takes."),
    "body-too-large": (413, "The request body is over the limit the validation settings allow."),
    "not-found": (404, "No such resource."),
    "unauthorized": (401, "No API key, or an unknown or revoked one."),
    "forbidden": (403, "The API key has no scope this endpoint takes."),
    "not-ready": (503, "The database does not answer, or the read models lag too far behind."),
}


# A problem type is a wire contract: a class renamed since a release keeps its released type
# (SessionTimedOutError was 0.4.0's SessionExpiredError).
RELEASED_TYPES = {"SessionTimedOutError": "session-expired"}


def problem_type(error: type[ChatLedgerError]) -> str:
    """``UnknownSessionError`` -> ``urn:chatledger:problem:unknown-session``."""
    if error.__name__ in RELEASED_TYPES:
        return PREFIX + RELEASED_TYPES[error.__name__]
    stem = error.__name__.removesuffix("Error") or error.__name__
    return PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "-", stem).lower()


def status_of(error: type[ChatLedgerError]) -> int:
    for cls in error.__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(status: int, type_: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def error_problem(exc: ChatLedgerError) -> JSONResponse:
    """The problem a ledger error answers with (``field``/``rule`` of field errors too)."""
    extra = {k: getattr(exc, k) for k in ("field", "rule") if isinstance(getattr(exc, k, None), str)}
    cls = type(exc)
    return problem(status_of(cls), problem_type(cls), cls.__name__, str(exc), **extra)


def service_problem(
    name: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    status, title = SERVICE_PROBLEMS[name]
    response = problem(status, PREFIX + name, title, detail, **extra)
    response.headers.update(headers or {})
    return response


__all__ = [
    "PROBLEM_MEDIA_TYPE", "RELEASED_TYPES", "SERVICE_PROBLEMS", "STATUS", "error_problem", "problem",
    "problem_type", "service_problem", "status_of",
]
