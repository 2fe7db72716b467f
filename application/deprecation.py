"""Public methods of released versions (0.3.0, 0.4.0) that were renamed: the old name still
works, with a DeprecationWarning (CHANGELOG, Unreleased, lists them)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def renamed(method: F, old: str, since: str) -> F:
    """``method`` under its former name ``old`` (the name of release ``since``), warning."""
    new = method.__name__

    @functools.wraps(method)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"ChatLedger.{old}() is deprecated; use {new}()", DeprecationWarning, stacklevel=2
        )
        return method(*args, **kwargs)

    alias.__name__ = old
    alias.__qualname__ = method.__qualname__.replace(new, old)
    alias.__doc__ = f"Deprecated ({since}'s name): :meth:`{new}`."
    return cast(F, alias)


__all__ = ["renamed"]
