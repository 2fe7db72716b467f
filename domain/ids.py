"""Time-ordered identifiers (UUID version 7, RFC 9562 section 5.7).

A session's id starts with the millisecond its session started, followed by 74
random bits. Sessions that start close together therefore sit close together in
every index keyed by session id: the event table's ``(originator_id,
originator_version)`` key, the hash chain, the read models. A sweep expiring
sessions in deadline order, or a rebuild writing transcripts in log order,
then touches a few neighbouring pages instead of one random page per session,
which is what keeps both fast once the store no longer fits in memory.

The id reveals when its session started, to the millisecond; the session's
``Started`` event records that anyway. Python's ``uuid.uuid7`` arrives only in
3.14, hence these few lines.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from uuid import UUID

from .pydantic_aggregates import utc

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_MAX_MS = (1 << 48) - 1


def uuid7(at: datetime) -> UUID:
    """A random UUIDv7 whose timestamp is ``at`` (timezone-aware)."""
    ms = int(utc(at).timestamp() * 1000)
    if not 0 <= ms <= _MAX_MS:
        msg = f"{at!r} cannot be encoded in a UUIDv7 (1970 to 10889 only)"
        raise ValueError(msg)
    rand_a = secrets.randbits(12)
    rand_b = secrets.randbits(62)
    return UUID(int=(ms << 80) | _VERSION_7 | (rand_a << 64) | _VARIANT_RFC | rand_b)


def uuid7_time_ms(value: UUID) -> int:
    """The millisecond timestamp of a UUIDv7 (for tests and diagnostics)."""
    if value.version != 7:
        msg = f"{value} is not a version-7 UUID"
        raise ValueError(msg)
    return value.int >> 80
