"""Public re-export of the exception tree (defined in :mod:`chatledger.domain.errors`)."""

from chatledger.domain.errors import (
    ChatLedgerError,
    ClientMessageIdConflictError,
    ConcurrencyConflictError,
    ConfigurationError,
    IdentityConflictError,
    IdentityMismatchError,
    InvalidCommandError,
    InvalidPolicyError,
    SessionClosedError,
    SessionExpiredError,
    SessionOwnershipError,
    TaskStateError,
    UnknownSessionError,
    UnknownSubjectError,
)

__all__ = [
    "ChatLedgerError",
    "ClientMessageIdConflictError",
    "ConcurrencyConflictError",
    "ConfigurationError",
    "IdentityConflictError",
    "IdentityMismatchError",
    "InvalidCommandError",
    "InvalidPolicyError",
    "SessionClosedError",
    "SessionExpiredError",
    "SessionOwnershipError",
    "TaskStateError",
    "UnknownSessionError",
    "UnknownSubjectError",
]
