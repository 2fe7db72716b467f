"""What the framework adapters share: the versioned payload kept in a message's metadata.

A framework item (an Agents SDK input item, an ADK event) is stored whole, as JSON, under
``metadata["fw"]``: ``{"v": PAYLOAD_VERSION, "kind": ..., ...}``. The message's ``text`` is a
readable rendering for transcripts, search and erasure; reading back uses the payload only,
so what the framework appended is what it reads, field for field. A later payload version
adds a reader here; version 1 keeps its meaning.
"""

from __future__ import annotations

import json
from typing import Any

from ..domain.conversation import Message

PAYLOAD_KEY = "fw"
PAYLOAD_VERSION = 1
MAX_RENDERED = 4000
"""Characters of an item's rendering kept as the message text (the item itself is whole)."""


def payload(kind: str, **fields: Any) -> dict[str, Any]:
    """The metadata of one stored framework item or operation."""
    return {PAYLOAD_KEY: {"v": PAYLOAD_VERSION, "kind": kind, **fields}}


def read_payload(message: Message) -> dict[str, Any] | None:
    """The framework payload of ``message``, or None if it carries none (a plain chat message).

    An erased message's metadata reads as erased (not a dict): None too."""
    raw = message.metadata.get(PAYLOAD_KEY) if isinstance(message.metadata, dict) else None
    if not isinstance(raw, dict) or raw.get("v") != PAYLOAD_VERSION:
        return None
    return raw


def render(value: Any, fallback: str) -> str:
    """A non-empty, bounded text for the transcript."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.strip() or fallback
    return text[:MAX_RENDERED]
