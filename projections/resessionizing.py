"""Re-sessionizing: split recorded messages into conversations under another
timeout (``ChatLedger.resessionize``), from ``(visitor, at)`` pairs alone."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ..domain.errors import InvalidCommandError


def resessionize(
    messages: Iterable[tuple[str, datetime]], timeout: timedelta
) -> list[tuple[str, datetime, datetime, int]]:
    """Split each visitor's messages into conversations under ``timeout``.

    ``messages`` are ``(visitor_id, at)`` pairs in time order per visitor. A
    gap *longer* than ``timeout`` between two consecutive messages of a visitor
    starts a new conversation (exactly ``timeout`` does not, as in the engine).
    Returns ``(visitor_id, first_at, last_at, message_count)`` per conversation.
    """
    if timeout <= timedelta(0):
        raise InvalidCommandError(f"A re-sessionizing timeout must be positive, got {timeout}.")
    open_: dict[str, list[Any]] = {}
    done: list[tuple[str, datetime, datetime, int]] = []
    for visitor, at in messages:
        current = open_.get(visitor)
        if current is not None and at - current[1] <= timeout:
            current[1] = at
            current[2] += 1
            continue
        if current is not None:
            done.append((visitor, current[0], current[1], current[2]))
        open_[visitor] = [at, at, 1]
    done.extend((v, c[0], c[1], c[2]) for v, c in open_.items())
    done.sort(key=lambda c: (c[1], c[0]))
    return done


__all__ = ["resessionize"]
