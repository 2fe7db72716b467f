"""The one pause of Python's cyclic garbage collector that bulk jobs share
(a rebuild's catch-up and the sweeper): counted across
nested and concurrent pauses, and a collector the application turned off
stays off."""

from __future__ import annotations

import gc
import threading

import pytest
from chatledger.projections.gc_pause import gc_paused


def test_the_collector_resumes_only_when_the_last_pause_ends() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other_job() -> None:  # e.g. a shadow rebuild while the background runner catches up
        with gc_paused():
            inside.set()
            release.wait(5)

    with gc_paused():  # this pause began first
        thread = threading.Thread(target=other_job)
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread's pause still holds
    release.set()
    thread.join()
    assert gc.isenabled()

    with gc_paused(), gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()

    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failing batch")
    assert gc.isenabled()


def test_a_collector_the_application_turned_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
