"""chatledger: event-sourced conversation state for chatbots.

Every fact (session started, message received or sent, slot or task changed,
session timed out, identity linked) is an immutable event in an append-only
store; sessions, transcripts, analytics and memory are rebuilt from it.

    >>> from chatledger import ChatLedger, SessionPolicy
    >>> ledger = ChatLedger.open("sqlite:///chat.db")   # doctest: +SKIP
"""

from .application.audit import HistoryStep
from .application.clock import Clock, ManualClock, system_clock
from .application.errors import (
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
    SessionClosedError,
    SessionExpiredError,
    SessionOwnershipError,
    TaskStateError,
    UnknownSessionError,
    UnknownSubjectError,
    ValueRefusedError,
)
from .application.ledger import ChatLedger
from .application.subscribers import LogEvent
from .domain.conversation import Message, SessionContext
from .domain.erasure import ErasureReceipt
from .domain.policy import SessionPolicy
from .domain.state import SessionState, Turn, VisitorState
from .domain.validation import Limits
from .infrastructure.hashchain import VerificationReport
from .infrastructure.webhooks import DeadLetter, DeliveryReport, WebhookWorker
from .projections.base import ProjectionFailure, ProjectionStatus
from .projections.results import (
    Analytics,
    Engagement,
    Memory,
    Resessionized,
    Transcript,
    TranscriptMessage,
)

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
    "Resessionized",
    "SessionClosedError",
    "SessionContext",
    "SessionExpiredError",
    "SessionOwnershipError",
    "SessionPolicy",
    "SessionState",
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
