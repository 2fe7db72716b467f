"""chatledger: event-sourced conversation state for chatbots.

Every fact (session started, message received or sent, slot or task changed,
session timed out, identity linked) is an immutable event in an append-only
store; sessions, transcripts, analytics and memory are rebuilt from it.

    >>> from chatledger import ChatLedger, SessionPolicy
    >>> ledger = ChatLedger.open("sqlite:///chat.db")   # doctest: +SKIP
"""

# Absolute imports here (relative ones everywhere else in the package): pytest imports this
# root __init__.py on its own when it sets up the root folder as a package, under whatever
# name the checkout's folder has, and it must then resolve to the installed chatledger.
from chatledger.application.audit import HistoryStep
from chatledger.application.clock import Clock, ManualClock, system_clock
from chatledger.application.errors import (
    ChatLedgerError,
    ClientMessageIdConflictError,
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
)
from chatledger.application.ledger import ChatLedger
from chatledger.application.subscribers import LogEvent
from chatledger.application.webhooks import DeadLetter, DeliveryReport, WebhookWorker
from chatledger.domain.conversation import Message, SessionContext
from chatledger.domain.erasure import ErasureReceipt
from chatledger.domain.errors import renamed_error as _renamed_error
from chatledger.domain.policy import SessionPolicy
from chatledger.domain.read_views import SessionState, Turn, VisitorState
from chatledger.domain.validation import Limits
from chatledger.infrastructure.hashchain import VerificationReport
from chatledger.projections.failures import ProjectionFailure
from chatledger.projections.query_results import (
    Analytics,
    Engagement,
    Memory,
    Resessionized,
    Transcript,
    TranscriptMessage,
)
from chatledger.projections.status import ProjectionStatus

__all__ = [
    "Analytics",
    "ChatLedger",
    "ChatLedgerError",
    "ClientMessageIdConflictError",
    "Clock",
    "ConcurrencyConflictError",
    "ConfigurationError",
    "DeadLetter",
    "DeliveryReport",
    "Engagement",
    "ErasureReceipt",
    "EventVersionError",
    "FieldTooLargeError",
    "HistoryStep",
    "IdentityConflictError",
    "IdentityMismatchError",
    "InvalidCommandError",
    "InvalidFieldError",
    "InvalidPolicyError",
    "InvalidTextError",
    "InvalidTimeError",
    "InvalidValueError",
    "Limits",
    "LogEvent",
    "ManualClock",
    "Memory",
    "Message",
    "ProjectionFailure",
    "ProjectionStatus",
    "ReadTimeoutError",
    "Resessionized",
    "SessionClosedError",
    "SessionContext",
    "SessionOwnershipError",
    "SessionPolicy",
    "SessionState",
    "SessionTimedOutError",
    "TaskStateError",
    "Transcript",
    "TranscriptMessage",
    "Turn",
    "UnknownSessionError",
    "UnknownSubjectError",
    "ValueRefusedError",
    "VerificationReport",
    "VisitorState",
    "WebhookWorker",
    "system_clock",
]


def __getattr__(name: str) -> type[ChatLedgerError]:
    """The renamed public names of released versions (``SessionExpiredError``): still there,
    with a DeprecationWarning (see CHANGELOG, Unreleased)."""
    return _renamed_error(name, __name__)
