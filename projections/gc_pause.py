"""Pausing Python's cyclic garbage collector around bulk work."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector during a bulk catch-up.

    Each batch allocates tens of thousands of containers (records, events,
    row dicts) that live until the batch is written, so they survive young
    collections and keep triggering full ones, which walk every object of the
    process: ~15 % of a rebuild. Reference counting still frees everything the
    projector drops (it makes no cycles); collection resumes, with one young
    pass, at the end."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(1)
