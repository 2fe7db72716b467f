"""Read models derived from the event log; each can be rebuilt from scratch.

``DEFAULT_READ_MODELS`` lists the projections every :class:`ChatLedger` keeps:
the conversation log (transcripts, exports), session analytics, cross-session
user memory, the active-session index the sweeper reads, and the gaps between a visitor's
messages (the timeout curve). See
``docs/projections.md`` and ``docs/timeouts.md``.
"""

from __future__ import annotations

from .active_sessions import ActiveSessions
from .analytics import SessionAnalytics
from .conversation_log import ConversationLog
from .gaps import MessageGaps
from .memory import UserMemory
from .read_model import ReadModel

DEFAULT_READ_MODELS: list[type[ReadModel]] = [
    ConversationLog,
    SessionAnalytics,
    UserMemory,
    ActiveSessions,
    MessageGaps,
]

__all__ = [
    "DEFAULT_READ_MODELS",
    "ActiveSessions",
    "ConversationLog",
    "MessageGaps",
    "ReadModel",
    "SessionAnalytics",
    "UserMemory",
]
