"""chatledger: event-sourced conversation state for chatbots.

Every fact (session started, message received or sent, slot or task changed,
session timed out, identity linked) is an immutable event in an append-only
store; sessions, transcripts, analytics and memory are rebuilt from it.

    >>> from chatledger import ChatLedger, SessionPolicy
    >>> ledger = ChatLedger.open("sqlite:///chat.db")   # doctest: +SKIP
"""

# The public names are imported when first used (PEP 562), so that ``import chatledger.x`` -- the
# command line's startup, a test's subprocess -- costs only what ``x`` needs. Type checkers and
# import-linter read the imports below. Absolute imports (relative ones everywhere else in the
# package): pytest imports this root __init__.py on its own when it sets up the root folder as a
# package, under whatever name the checkout's folder has; it must resolve to chatledger.
from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from chatledger.application.audit import HistoryStep
    from chatledger.application.clock import Clock, ManualClock, system_clock
    from chatledger.application.errors import (
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
    )
    from chatledger.application.ledger import ChatLedger
    from chatledger.application.subscribers import LogEvent
    from chatledger.application.webhooks import DeadLetter, DeliveryReport, WebhookWorker
    from chatledger.domain.conversation import Message, SessionContext
    from chatledger.domain.erasure import ErasureReceipt
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
        TimeoutCurve,
        Transcript,
        TranscriptMessage,
    )
    from chatledger.projections.status import ProjectionStatus

_WHERE = {
    "Analytics": "chatledger.projections.query_results",
    "ChatLedger": "chatledger.application.ledger",
    "ChatLedgerError": "chatledger.application.errors",
    "ClientMessageIdConflictError": "chatledger.application.errors",
    "Clock": "chatledger.application.clock",
    "CommitOutcomeUnknownError": "chatledger.application.errors",
    "ConcurrencyConflictError": "chatledger.application.errors",
    "ConfigurationError": "chatledger.application.errors",
    "DeadLetter": "chatledger.application.webhooks",
    "DeliveryReport": "chatledger.application.webhooks",
    "Engagement": "chatledger.projections.query_results",
    "ErasureReceipt": "chatledger.domain.erasure",
    "EventVersionError": "chatledger.application.errors",
    "FieldTooLargeError": "chatledger.application.errors",
    "HistoryStep": "chatledger.application.audit",
    "IdentityConflictError": "chatledger.application.errors",
    "IdentityMismatchError": "chatledger.application.errors",
    "InvalidCommandError": "chatledger.application.errors",
    "InvalidFieldError": "chatledger.application.errors",
    "InvalidPolicyError": "chatledger.application.errors",
    "InvalidTextError": "chatledger.application.errors",
    "InvalidTimeError": "chatledger.application.errors",
    "InvalidValueError": "chatledger.application.errors",
    "ReadTimeoutError": "chatledger.application.errors",
    "Limits": "chatledger.domain.validation",
    "LogEvent": "chatledger.application.subscribers",
    "ManualClock": "chatledger.application.clock",
    "Memory": "chatledger.projections.query_results",
    "Message": "chatledger.domain.conversation",
    "ProjectionFailure": "chatledger.projections.failures",
    "ProjectionStatus": "chatledger.projections.status",
    "Resessionized": "chatledger.projections.query_results",
    "TimeoutCurve": "chatledger.projections.query_results",
    "SessionClosedError": "chatledger.application.errors",
    "SessionContext": "chatledger.domain.conversation",
    "SessionOwnershipError": "chatledger.application.errors",
    "SessionPolicy": "chatledger.domain.policy",
    "SessionState": "chatledger.domain.read_views",
    "SessionTimedOutError": "chatledger.application.errors",
    "TaskStateError": "chatledger.application.errors",
    "Transcript": "chatledger.projections.query_results",
    "TranscriptMessage": "chatledger.projections.query_results",
    "Turn": "chatledger.domain.read_views",
    "UnknownSessionError": "chatledger.application.errors",
    "UnknownSubjectError": "chatledger.application.errors",
    "ValueRefusedError": "chatledger.application.errors",
    "VerificationReport": "chatledger.infrastructure.hashchain",
    "VisitorState": "chatledger.domain.read_views",
    "WebhookWorker": "chatledger.application.webhooks",
    "system_clock": "chatledger.application.clock",
}
"""Where each public name is defined: ``chatledger.NAME`` imports that module when first used."""

__all__ = [
    "Analytics",
    "ChatLedger",
    "ChatLedgerError",
    "ClientMessageIdConflictError",
    "Clock",
    "CommitOutcomeUnknownError",
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
    "TimeoutCurve",
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


def __getattr__(name: str) -> object:
    """A public name, imported when first used; or a renamed one of a released version
    (``SessionExpiredError``): still there, with a DeprecationWarning (CHANGELOG, Unreleased)."""
    module = _WHERE.get(name)
    if module is None:
        renamed_error = _import_module("chatledger.domain.errors").renamed_error
        return renamed_error(name, __name__)
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
