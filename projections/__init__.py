"""Read models derived from the event log; each can be rebuilt from scratch.

``DEFAULT_READ_MODELS`` lists the projections every :class:`ChatLedger` keeps:
the conversation log (transcripts, exports), session analytics, and
cross-session user memory. See ``docs/projections.md``.
"""

from __future__ import annotations

from .analytics import SessionAnalytics
from .base import ReadModel
from .conversation_log import ConversationLog
from .memory import UserMemory

DEFAULT_READ_MODELS: list[type[ReadModel]] = [ConversationLog, SessionAnalytics, UserMemory]

__all__ = [
    "DEFAULT_READ_MODELS",
    "ConversationLog",
    "ReadModel",
    "SessionAnalytics",
    "UserMemory",
]
