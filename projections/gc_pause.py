"""Pausing Python's cyclic garbage collector around bulk work.

A batch of a bulk job (a long catch-up or rebuild; a sweep) allocates tens of
thousands of container objects (records, events, row dicts, parameter
tuples) that all live until its transaction ends, so they survive young
collections and keep triggering full ones, which walk every object of the
process: ~15 % of a rebuild, about a tenth of a sweep's CPU time
(docs/benchmarks.md). Reference counting still frees everything a batch
drops; any cycle made meanwhile is collected when collection resumes.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector for the duration of the block.

    Nested and concurrent pauses (threads) are counted: the collector resumes,
    with one young pass (``gc.collect(1)``), when the last one ends. A
    collector the application turned off stays off."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            resume = _pauses == 0 and _was_enabled
            if resume:
                gc.enable()
        if resume:
            gc.collect(1)
