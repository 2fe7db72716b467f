"""The one validation layer: every caller-supplied value is checked here, against
one set of :class:`Limits`, before a command reads anything for writing, takes a
lock or writes.

Rules (each refusal is an :class:`~chatledger.domain.errors.InvalidFieldError`
subclass naming the field, the rule and what to do; nothing is appended):

- **text and ids** are ``str``, valid Unicode (no lone surrogates, so they
  encode as UTF-8), without NUL (``\\x00``; PostgreSQL text cannot hold it),
  not blank, and within ``max_text_chars`` (message text) or ``max_id_chars``
  (visitor, user, session and client message ids, slot keys, task names,
  reasons, channels) -> :class:`InvalidTextError`, :class:`FieldTooLargeError`;
- **JSON values** (metadata, slot values, context) are ``None``, ``bool``,
  ``int`` with ``|n| < 2**63``, finite ``float``, ``str`` (as text), ``list``,
  and ``dict`` with ``str`` keys (not a tuple or another Mapping); nested at most
  ``max_json_depth`` levels and at most ``max_json_bytes`` as UTF-8 JSON
  -> :class:`InvalidValueError`, :class:`InvalidTextError`, :class:`FieldTooLargeError`;
- **datetimes** are timezone-aware (a naive datetime is refused, never guessed
  to be UTC) and between :data:`MIN_TIME` and :data:`MAX_TIME`; **durations**
  are positive and at most :data:`MAX_DURATION` -> :class:`InvalidTimeError`;
- **counts** (``limit``, ``batch_size``, ``version``) are ``int`` in ``[1, 2**63)``.

Nothing is normalised except datetimes, which come back in UTC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from .errors import (
    FieldTooLargeError,
    InvalidTextError,
    InvalidTimeError,
    InvalidValueError,
)

#: Hard ceilings of the domain (``domain.conversation.check_text``/``check_name`` use them):
#: :class:`Limits` may lower them, not raise them.
TEXT_CEILING = 100_000
ID_CEILING = 200
#: The largest integer magnitude accepted in JSON values (a signed 64-bit int,
#: what PostgreSQL ``bigint``/JSON consumers and SQLite can hold exactly).
INT_BOUND = 2**63
#: Datetimes accepted (UTC): session ids are UUIDv7 (milliseconds since 1970),
#: and a deadline ``at + timeout`` must stay representable.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)
#: The longest duration accepted (timeouts, retention ages, re-sessionizing).
MAX_DURATION = timedelta(days=36_600)  # about 100 years


class Limits(BaseModel):
    """Size limits on caller-supplied values (set through :class:`Settings`:
    ``CHATLEDGER_MAX_TEXT_CHARS`` and so on).

    - ``max_text_chars``: a message text, in characters (default 100 000);
    - ``max_id_chars``: an id or name (visitor, user, session, client message
      id, slot key, task, reason, channel, context strings), in characters (200);
    - ``max_json_bytes``: a metadata dict, slot value or context, as UTF-8 JSON (64 KiB);
    - ``max_json_depth``: nesting of lists and dicts in those (32).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_text_chars: int = Field(default=TEXT_CEILING, ge=1, le=TEXT_CEILING)
    max_id_chars: int = Field(default=ID_CEILING, ge=1, le=ID_CEILING)
    max_json_bytes: int = Field(default=64 * 1024, ge=2, le=16 * 1024 * 1024)
    max_json_depth: int = Field(default=32, ge=1, le=128)


DEFAULT_LIMITS = Limits()
TEXT_SETTING, ID_SETTING, JSON_SETTING = (
    "CHATLEDGER_MAX_TEXT_CHARS", "CHATLEDGER_MAX_ID_CHARS", "CHATLEDGER_MAX_JSON_BYTES",
)


def _kind(value: object) -> str:
    return type(value).__name__


def check_str(
    field: str, value: object, max_chars: int, *, what: str = "a string", setting: str | None = None
) -> str:
    """A non-blank ``str`` of valid Unicode, no NUL, at most ``max_chars``."""
    if not isinstance(value, str):
        raise InvalidValueError(
            field, "type", f"{field} must be {what} (str), not {_kind(value)}; pass a str."
        )
    if len(value) > max_chars:
        raise FieldTooLargeError(field, max_chars, len(value), setting=setting)
    _check_unicode(field, value)
    if not value.strip():
        raise InvalidTextError(field, "blank", f"{field} must not be empty or blank; pass some text.")
    return value


def _check_unicode(field: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidTextError(
            field,
            "nul",
            f"{field} contains a NUL character (\\x00) at index {value.index(chr(0))}; "
            "remove it (NUL cannot be stored).",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidTextError(
            field,
            "surrogate",
            f"{field} is not valid Unicode (a lone surrogate at index {err.start}); "
            "decode the input properly (e.g. bytes.decode('utf-8')) before passing it.",
        ) from None


def check_text(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """A message text."""
    return check_str(field, value, limits.max_text_chars, what="a string", setting=TEXT_SETTING)


def check_id(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """An id or a name (visitor, user, client message id, slot key, task, reason, channel);
    never with the unit separator ``\x1f``, which joins a tenant to an id (see
    :mod:`chatledger.domain.tenancy`)."""
    checked = check_str(field, value, limits.max_id_chars, what="an id or name", setting=ID_SETTING)
    _check_separator(field, checked)
    return checked


def _check_separator(field: str, value: str) -> None:
    if "\x1f" in value:
        raise InvalidTextError(
            field, "separator", f"{field} contains the unit separator (\\x1f), reserved for tenants; remove it."
        )


def check_session_id(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> UUID | str:
    """A session id: a ``UUID`` or a ``str`` (whether it names a session is the
    command's business: an unparsable one is an unknown session)."""
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise InvalidValueError(
            field, "type", f"{field} must be a UUID or a str, not {_kind(value)}; pass the session's id."
        )
    if len(value) > 64:  # a UUID in any of its spellings is at most 45 characters
        raise FieldTooLargeError(field, 64, len(value), unit="characters")
    _check_unicode(field, value)
    return value


def check_json(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A JSON value (a slot value, a metadata entry)."""
    _walk(field, value, limits, 0)
    size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    if size > limits.max_json_bytes:
        raise FieldTooLargeError(field, limits.max_json_bytes, size, unit="bytes of JSON", setting=JSON_SETTING)
    return value


def check_object(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A JSON object (metadata, context)."""
    if not isinstance(value, dict):
        raise InvalidValueError(
            field, "type", f"{field} must be a dict (a JSON object), not {_kind(value)}; pass a dict."
        )
    check_json(field, value, limits)
    return dict(value)


def _walk(path: str, value: object, limits: Limits, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT_BOUND < value < INT_BOUND:
            raise InvalidValueError(
                path, "int_range", f"{path} is an integer outside ±2**63; store it as a string."
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(
                path, "finite", f"{path} is {value!r}; JSON numbers must be finite: pass a number or None."
            )
        return
    if isinstance(value, str):
        if len(value) > limits.max_json_bytes:
            raise FieldTooLargeError(path, limits.max_json_bytes, len(value), setting=JSON_SETTING)
        _check_unicode(path, value)
        return
    if isinstance(value, (list, dict)):
        if depth >= limits.max_json_depth:
            raise InvalidValueError(
                path,
                "depth",
                f"{path} is nested more than {limits.max_json_depth} levels deep; flatten it.",
            )
        if isinstance(value, dict):
            if len(value) * 2 > limits.max_json_bytes:
                raise FieldTooLargeError(
                    path, limits.max_json_bytes, len(value) * 2, unit="bytes of JSON", setting=JSON_SETTING
                )
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidValueError(
                        path, "key_type", f"{path} has a key of type {_kind(key)}; JSON object keys must be str."
                    )
                if len(key) > limits.max_json_bytes:
                    raise FieldTooLargeError(f"{path} key", limits.max_json_bytes, len(key), setting=JSON_SETTING)
                _check_unicode(f"{path} key", key)
                _walk(_child(path, repr(key[:40])), item, limits, depth + 1)
        else:
            if len(value) > limits.max_json_bytes:
                raise FieldTooLargeError(path, limits.max_json_bytes, len(value), unit="items", setting=JSON_SETTING)
            for index, item in enumerate(value):
                _walk(_child(path, str(index)), item, limits, depth + 1)
        return
    raise InvalidValueError(
        path,
        "type",
        f"{path} is of type {_kind(value)}; JSON values are str, int, float, bool, None, list or dict"
        + (" (pass a list)." if isinstance(value, tuple) else " (pass a dict)." if isinstance(value, Mapping) else "."),
    )


def _child(path: str, step: str) -> str:
    """``path[step]``, shortened in the middle once it gets long (deep nesting)."""
    if len(path) > 80:
        head, _, _ = path.partition("[")
        path = f"{head}[...]"
    return f"{path}[{step}]"


def check_time(field: str, value: object) -> datetime:
    """An aware datetime in ``[MIN_TIME, MAX_TIME)``, returned in UTC."""
    if not isinstance(value, datetime):
        raise InvalidTimeError(
            field, "type", f"{field} must be a datetime, not {_kind(value)}; pass an aware datetime."
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTimeError(
            field,
            "naive",
            f"{field}={value.isoformat()} has no timezone; pass an aware datetime, "
            "e.g. datetime.now(UTC) or value.replace(tzinfo=UTC).",
        )
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not MIN_TIME <= in_utc < MAX_TIME:
        raise InvalidTimeError(
            field,
            "range",
            f"{field}={value.isoformat()} is outside the supported range "
            f"[{MIN_TIME.isoformat()}, {MAX_TIME.isoformat()}); pass a real time.",
        )
    return in_utc


def check_duration(field: str, value: object, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """A positive ``timedelta`` of at most ``maximum``."""
    if not isinstance(value, timedelta):
        raise InvalidTimeError(
            field, "type", f"{field} must be a timedelta, not {_kind(value)}; e.g. timedelta(minutes=30)."
        )
    if value <= timedelta(0) or value > maximum:
        raise InvalidTimeError(
            field,
            "duration_range",
            f"{field}={value} must be a positive duration of at most {maximum.days} days.",
        )
    return value


def check_count(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> int:
    """A positive ``int`` below ``2**63`` (a limit, a batch size, a version)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(field, "type", f"{field} must be an int, not {_kind(value)}.")
    if not 1 <= value < INT_BOUND:
        raise InvalidValueError(field, "count_range", f"{field}={value} must be at least 1 (and below 2**63).")
    return value


def check_number(field: str, value: object, *, maximum: float) -> float:
    """A finite positive number of at most ``maximum`` (an interval in seconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValueError(field, "type", f"{field} must be a number, not {_kind(value)}.")
    if not math.isfinite(value) or not 0 < value <= maximum:
        raise InvalidValueError(
            field, "number_range", f"{field}={value!r} must be a finite number in (0, {maximum:g}]."
        )
    return float(value)


def check_choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidValueError(
            field, "choice", f"{field} must be one of {', '.join(map(repr, choices))}, not {value!r:.80}."
        )
    return value


__all__ = [
    "DEFAULT_LIMITS",
    "INT_BOUND",
    "MAX_DURATION",
    "MAX_TIME",
    "MIN_TIME",
    "Limits",
    "check_choice",
    "check_count",
    "check_duration",
    "check_id",
    "check_json",
    "check_number",
    "check_object",
    "check_session_id",
    "check_str",
    "check_text",
    "check_time",
]
