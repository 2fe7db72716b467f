"""Argument checks of the public API: ``@checked(name=CHECK, ...)``.

Each public method of :class:`~chatledger.ChatLedger` names its arguments'
checks (from :mod:`chatledger.domain.validation`, against the ledger's
``limits``); they run before the method does, so bad input is refused before
anything is read for writing, a lock is taken or anything is written.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from ..domain import validation as v
from ..domain.conversation import SessionContext
from ..domain.errors import InvalidCommandError, InvalidValueError
from ..projections.query_results import Engagement
from .retention import RetentionPolicy
from .subscribers import MAX_FEED_BATCH

F = TypeVar("F", bound=Callable[..., Any])
Check = Callable[[str, Any, v.Limits], Any]


def checked(**checks: Check) -> Callable[[F], F]:
    """Check the named arguments of a public method with :mod:`domain.validation`
    (against ``self.limits``) before the method runs: before anything is read
    for writing, a lock is taken or anything is written. A check returns the
    value to use (datetimes come back in UTC)."""

    def decorate(method: F) -> F:
        signature = inspect.signature(method)
        params = list(signature.parameters.values())[1:]  # after self
        positional = {p.name: i for i, p in enumerate(params) if p.kind == p.POSITIONAL_OR_KEYWORD}
        plain = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        items = list(checks.items())

        @functools.wraps(method)
        def run_checks(self: Any, *args: Any, **kwargs: Any) -> Any:
            limits = self.limits
            if not plain or len(args) > len(positional) or any(positional.get(k, len(args)) < len(args) for k in kwargs):
                bound = signature.bind(self, *args, **kwargs)  # the general case (and its TypeError)
                arguments = bound.arguments
                for name, check in items:
                    if name in arguments:
                        arguments[name] = check(name, arguments[name], limits)
                return method(*bound.args, **bound.kwargs)
            # The usual call, without Signature.bind (~5 % of a command's CPU): the
            # same checks in the same order, on the arguments given.
            given = list(args)
            for name, check in items:
                i = positional.get(name, len(given))
                if i < len(given):
                    given[i] = check(name, given[i], limits)
                elif name in kwargs:
                    kwargs[name] = check(name, kwargs[name], limits)
            return method(self, *given, **kwargs)

        return run_checks  # type: ignore[return-value]

    return decorate


def opt(check: Check) -> Check:
    return lambda name, value, limits: None if value is None else check(name, value, limits)


def choice(*choices: str) -> Check:
    return lambda name, value, limits: v.check_choice(name, value, choices)


def context_arg(name: str, value: Any, limits: v.Limits) -> SessionContext | None:
    if value is None or isinstance(value, SessionContext):
        if value is not None:
            v.check_object(name, value.model_dump(), limits)
        return value
    return to_context(SessionContext, v.check_object(name, value, limits))


def path_arg(name: str, value: Any, limits: v.Limits) -> Any:
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidValueError(name, "type", f"{name} must be a str or a path, not {type(value).__name__}.")
    v.check_str(name, os.fspath(value), 4096, what="a path")
    return value


def _kind_arg(what: str, accepts: Callable[[Any], bool]) -> Check:
    """A check that ``value`` is None or ``accepts(value)``; else names ``what`` it must be."""

    def check(name: str, value: Any, limits: v.Limits) -> Any:
        if value is not None and not accepts(value):
            raise InvalidValueError(name, "type", f"{name} must be {what} or None, not {type(value).__name__}.")
        return value

    return check


def writer_arg(name: str, value: Any, limits: v.Limits) -> Any:
    if not callable(getattr(value, "write", None)):
        raise InvalidValueError(name, "type", f"{name} must be a text file open for writing, not {type(value).__name__}.")
    return value


engagement_arg = _kind_arg("an Engagement", lambda value: isinstance(value, Engagement))
callback_arg = _kind_arg("a callable", callable)
retention_arg = _kind_arg("a RetentionPolicy", lambda value: isinstance(value, RetentionPolicy))


def interval_arg(name: str, value: Any, limits: v.Limits) -> float:
    return v.check_number(name, value, maximum=86_400.0 * 366)


def position_arg(name: str, value: Any, limits: v.Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(name, "type", f"{name} must be an int (a log position), not {type(value).__name__}.")
    if not 0 <= value < v.INT_BOUND:
        raise InvalidValueError(
            name, "position_range", f"{name}={value} must be a log position: 0 (the start) or more, below 2**63."
        )
    return value


def flag_arg(name: str, value: Any, limits: v.Limits) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(name, "type", f"{name} must be True or False, not {type(value).__name__}.")
    return value


def feed_limit_arg(name: str, value: Any, limits: v.Limits) -> int:
    v.check_count(name, value, limits)
    if value > MAX_FEED_BATCH:
        raise InvalidValueError(
            name, "count_range", f"{name}={value} is over {MAX_FEED_BATCH}; read in pages of at most that many."
        )
    return int(value)


ID, TEXT, SID, OBJ, JSON = v.check_id, v.check_text, v.check_session_id, v.check_object, v.check_json
COUNT = v.check_count
TIME: Check = lambda name, value, limits: v.check_time(name, value)
DURATION: Check = lambda name, value, limits: v.check_duration(name, value)


def to_context(model: type[SessionContext], data: dict[str, Any]) -> SessionContext:
    """``data`` as the session context (:class:`InvalidCommandError` if it is none)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InvalidCommandError(f"Invalid session context: {err}") from err


__all__ = [
    "COUNT", "DURATION", "ID", "JSON", "OBJ", "SID", "TEXT", "TIME", "Check", "callback_arg", "checked",
    "choice", "context_arg", "engagement_arg", "feed_limit_arg", "flag_arg", "interval_arg", "opt",
    "path_arg", "position_arg", "retention_arg", "to_context", "writer_arg",
]
