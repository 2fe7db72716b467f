"""The chatledger exception tree.

::

    ChatLedgerError
    ├── InvalidCommandError (ValueError)     bad input; nothing was written
    │   ├── InvalidFieldError                one argument broke a rule of
    │   │   │                                domain.validation (exc.field, exc.rule)
    │   │   ├── InvalidTextError             NUL, a lone surrogate, or blank
    │   │   ├── FieldTooLargeError           over a Limits size (exc.limit, exc.size)
    │   │   ├── InvalidValueError            wrong type, non-finite or too large a
    │   │   │                                number, too deep nesting, a non-str key
    │   │   └── InvalidTimeError             naive or out-of-range datetime, bad duration
    │   ├── InvalidPolicyError               a SessionPolicy that makes no sense
    │   ├── ClientMessageIdConflictError     a client message id reused for another role
    │   ├── TaskStateError                   a task command out of order
    │   └── ValueRefusedError                the database refused a value (rolled back)
    ├── UnknownSessionError (LookupError)    no session has that id
    ├── UnknownSubjectError (LookupError)    no visitor or user to erase or export
    ├── SessionOwnershipError (PermissionError)
    │                                        the session belongs to someone else
    ├── IdentityMismatchError (PermissionError)
    │                                        a visitor id given with a user id it is not linked to
    ├── SessionClosedError                   the session already ended or timed out
    │   └── SessionTimedOutError             idle past its timeout (not yet recorded)
    ├── IdentityConflictError                visitor already linked to another user
    ├── ConcurrencyConflictError             retries exhausted under contention
    ├── ConfigurationError                   a database URL or setting is unusable
    └── EventVersionError                    a stored event is newer than this code

Every message is a sentence that says what to do next; the facts travel as
attributes (``exc.session_id``), so callers never parse messages.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from uuid import UUID


class ChatLedgerError(Exception):
    """Base of every error chatledger raises on purpose."""


class InvalidCommandError(ChatLedgerError, ValueError):
    """Raised when a command's input is invalid. Nothing was appended."""


class InvalidFieldError(InvalidCommandError):
    """Raised when one argument breaks a rule of :mod:`chatledger.domain.validation`.

    ``field`` is the parameter's name (with a path into JSON, e.g.
    ``metadata['tags'][3]``), ``rule`` a short code such as ``"nul"``.
    """

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{message} Nothing was written.")
        self.field = field
        self.rule = rule


class InvalidTextError(InvalidFieldError):
    """A string holds a NUL character or a lone surrogate, or is blank."""


class FieldTooLargeError(InvalidFieldError):
    """A value is over its size limit (see :class:`~chatledger.domain.validation.Limits`)."""

    def __init__(
        self, field: str, limit: int, size: int, *, unit: str = "characters", setting: str | None = None
    ) -> None:
        hint = f"Shorten it, or raise the {setting} setting." if setting else "Shorten it."
        super().__init__(field, "size", f"{field} is {size} {unit}; the limit is {limit}. {hint}")
        self.limit = limit
        self.size = size


class InvalidValueError(InvalidFieldError):
    """A value of the wrong type, a non-finite or out-of-range number, JSON
    nested too deep, or a non-str object key."""


class InvalidTimeError(InvalidFieldError):
    """A naive or out-of-range datetime, or a non-positive or huge duration."""


class ValueRefusedError(InvalidCommandError):
    """The database refused a value that validation let through; the
    transaction was rolled back, nothing was written."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The database refused a value of this command ({detail}); nothing was "
            "written. Check the command's text, ids and metadata."
        )
        self.detail = detail


class InvalidPolicyError(InvalidCommandError):
    """Raised when a :class:`SessionPolicy` is built from nonsense values."""


class TaskStateError(InvalidCommandError):
    """Raised when a task is started twice or completed without being started."""

    def __init__(self, message: str, *, session_id: UUID, task: str) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.task = task


class ClientMessageIdConflictError(InvalidCommandError):
    """Raised when a client message id is reused for a message of another role.

    A retry repeats the same message, so a user message and a bot reply can never
    share an id; recording the second would make the first unfindable by its id,
    and returning the first would silently drop the second.
    """

    def __init__(self, session_id: UUID, client_message_id: str, *, recorded_role: str, role: str) -> None:
        super().__init__(
            f"Client message id {client_message_id!r} already belongs to a {recorded_role} message "
            f"of session {session_id}; a {role} message needs an id of its own."
        )
        self.session_id = session_id
        self.client_message_id = client_message_id
        self.recorded_role = recorded_role
        self.role = role


class UnknownSessionError(ChatLedgerError, LookupError):
    """Raised when no session with the given id exists."""

    def __init__(self, session_id: UUID | str) -> None:
        super().__init__(
            f"No session {session_id} exists; check the id, or call receive() "
            "without session_id to start one."
        )
        self.session_id = session_id


class UnknownSubjectError(ChatLedgerError, LookupError):
    """Raised when an erasure or export names a visitor or user the log has never seen."""

    def __init__(self, kind: str, subject_id: str) -> None:
        super().__init__(
            f"No {kind} {subject_id!r} is recorded; nothing was written. Check the id "
            f"(a user is known once a visitor was linked to it)."
        )
        self.kind = kind
        self.subject_id = subject_id


class SessionOwnershipError(ChatLedgerError, PermissionError):
    """Raised when a session is addressed by a visitor or user it does not belong to."""

    def __init__(self, session_id: UUID, *, visitor_id: str | None, user_id: str | None) -> None:
        who = f"visitor {visitor_id!r}" if visitor_id else f"user {user_id!r}"
        super().__init__(
            f"Session {session_id} does not belong to {who}; nothing was written. "
            "Drop the session id and let receive() pick the visitor's own session."
        )
        self.session_id = session_id
        self.visitor_id = visitor_id
        self.user_id = user_id


class IdentityMismatchError(ChatLedgerError, PermissionError):
    """Raised when a call names a visitor and a user that do not belong together."""

    def __init__(self, visitor_id: str, user_id: str) -> None:
        super().__init__(
            f"Visitor {visitor_id!r} is not linked to user {user_id!r}; nothing was read or "
            "written. Pass only the id you act as, or link the visitor first (link_identity)."
        )
        self.visitor_id = visitor_id
        self.user_id = user_id


class SessionClosedError(ChatLedgerError):
    """Raised when a command addresses a session that has already ended or timed out."""

    def __init__(self, session_id: UUID, status: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"Session {session_id} is {status.replace('_', ' ')}; nothing was written. "
            "The visitor's next message starts a new session."
        )
        self.session_id = session_id
        self.status = status


class SessionTimedOutError(SessionClosedError):
    """Raised when a command reaches a session that has been idle past its timeout (its
    ``TimedOut`` event not yet recorded). 0.4.0 called it ``SessionExpiredError`` (deprecated)."""

    def __init__(self, session_id: UUID, idle_since: datetime, timed_out_at: datetime) -> None:
        super().__init__(
            session_id,
            "timed_out",
            f"Session {session_id} has been idle since {idle_since.isoformat()} and "
            f"timed out at {timed_out_at.isoformat()}; nothing was written. The visitor's "
            "next message starts a new session.",
        )
        self.idle_since = idle_since
        self.timed_out_at = timed_out_at

    @property
    def expired_at(self) -> datetime:
        """Deprecated (0.4.0's name): :attr:`timed_out_at`."""
        warnings.warn(
            "SessionTimedOutError.expired_at is deprecated; use timed_out_at",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.timed_out_at


class IdentityConflictError(ChatLedgerError):
    """Raised when a visitor already linked to one user is linked to another."""

    def __init__(self, visitor_id: str, linked_user_id: str, requested_user_id: str) -> None:
        super().__init__(
            f"Visitor {visitor_id!r} is already linked to user {linked_user_id!r}; "
            f"refusing to link it to {requested_user_id!r}. Use a new visitor id "
            "for a different person."
        )
        self.visitor_id = visitor_id
        self.linked_user_id = linked_user_id
        self.requested_user_id = requested_user_id


class ConcurrencyConflictError(ChatLedgerError):
    """Raised when concurrent writers kept winning the race after every retry."""

    def __init__(self, what: str, attempts: int) -> None:
        super().__init__(
            f"{what} conflicted with concurrent writers {attempts} times; nothing "
            "was lost or half-written. Retry the command."
        )
        self.attempts = attempts


class ReadTimeoutError(ChatLedgerError, TimeoutError):
    """Raised when the read models did not reach the log position a query asked
    for (``after=``) within the timeout: the answer would not include that write."""

    def __init__(self, position: int, reached: int, timeout: float) -> None:
        super().__init__(
            f"The read models reached log position {reached}, not {position}, within {timeout:g} s; "
            "nothing was read. Is the write committed (a position this store returned)? Retry, "
            "or raise read_wait_timeout_s."
        )
        self.position = position
        self.reached = reached


class CommitOutcomeUnknownError(ChatLedgerError, RuntimeError):
    """Raised when a command's events may or may not be committed: its write (or
    its wait for a group commit that had taken its events) was interrupted, or
    its events were lost from the commit queue. Read the store to find out
    (for a message, look for its ``client_message_id``). Never re-run by
    chatledger itself: a re-run could write the command twice."""


class ConfigurationError(ChatLedgerError):
    """Raised when a database URL or a setting cannot be used."""


class EventVersionError(ChatLedgerError):
    """Raised when a stored event was written by newer code than this process runs.

    Its ``class_version`` is above the version this process's event class has,
    and no upcaster can turn a newer shape into an older one: the event is
    refused, never mis-read. ``event`` is the event class's name, ``stored`` and
    ``current`` the two versions, ``originator_id``/``originator_version`` where
    it is in the log.
    """

    def __init__(
        self, event: str, stored: object, current: int, originator_id: object, originator_version: object
    ) -> None:
        super().__init__(
            f"Stored event {event} (aggregate {originator_id} version {originator_version}) is at "
            f"class_version {stored}, but this code reads {event} up to version {current}: it was "
            "written by a newer release. Upgrade this process to the release that wrote it; during "
            "a rolling deploy, deploy readers that understand a new version before any writer "
            "writes it (docs/events.md, Versions and upgrades)."
        )
        self.event = event
        self.stored = stored
        self.current = current
        self.originator_id = originator_id
        self.originator_version = originator_version


RENAMED = {"SessionExpiredError": "SessionTimedOutError"}
"""Public names of released versions (0.3.0, 0.4.0) that were renamed: old -> new. The old
names still work (this module's, ``chatledger.application.errors``' and ``chatledger``'s
``__getattr__``) and warn with a DeprecationWarning."""


def renamed_error(name: str, module: str) -> type[ChatLedgerError]:
    """What ``module.name`` stands for if ``name`` is in :data:`RENAMED` (with a
    DeprecationWarning at the caller of ``module``'s ``__getattr__``); else AttributeError."""
    if name not in RENAMED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"chatledger's {name} is deprecated; use {RENAMED[name]}", DeprecationWarning, stacklevel=3
    )
    found: type[ChatLedgerError] = globals()[RENAMED[name]]
    return found


def __getattr__(name: str) -> type[ChatLedgerError]:
    return renamed_error(name, __name__)
