"""Public re-export of the exception tree (defined in :mod:`chatledger.domain.errors`); the
renamed names of released versions still work, with a DeprecationWarning."""

from ..domain.errors import (
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
    InvalidFieldError,
    InvalidPolicyError,
    InvalidTextError,
    InvalidTimeError,
    InvalidValueError,
    ReadTimeoutError,
    SessionClosedError,
    SessionOwnershipError,
    SessionTimedOutError,
    TaskStateError,
    UnknownSessionError,
    UnknownSubjectError,
    ValueRefusedError,
    renamed_error,
)

__all__ = [
    "ChatLedgerError",
    "ClientMessageIdConflictError",
    "CommitOutcomeUnknownError",
    "ConcurrencyConflictError",
    "ConfigurationError",
    "EventVersionError",
    "FieldTooLargeError",
    "IdentityConflictError",
    "IdentityMismatchError",
    "InvalidCommandError",
    "InvalidFieldError",
    "InvalidPolicyError",
    "InvalidTextError",
    "InvalidTimeError",
    "InvalidValueError",
    "ReadTimeoutError",
    "SessionClosedError",
    "SessionOwnershipError",
    "SessionTimedOutError",
    "TaskStateError",
    "UnknownSessionError",
    "UnknownSubjectError",
    "ValueRefusedError",
]


def __getattr__(name: str) -> type[ChatLedgerError]:
    return renamed_error(name, __name__)
