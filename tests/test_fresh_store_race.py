"""Several processes opening one fresh SQLite file at the same moment: each
creates the event tables (Application init) and the read models' tables
(the projector) under the schema lock, so none fails with ``table … already
exists``, and every one of them can write and catch up afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from chatledger import ChatLedger

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from chatledger import ChatLedger
    from chatledger.application.sweeper import sweep

    url, ready, go, role = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.0005)
    with ChatLedger.open(url) as ledger:
        if role == "sweep":
            sweep(ledger, ledger.clock())
        else:
            ledger.catch_up()
        ledger.receive(f"visitor-{os.getpid()}", "hello")
        ledger.catch_up()
    print("ok")
    """
)

PROCESSES = 4
ROUNDS = 3


def _race(tmp_path: Path, round_: int) -> list[str]:
    """Start the workers together on a fresh file; return their failures."""
    folder = tmp_path / f"round{round_}"
    folder.mkdir()
    url = f"sqlite:///{folder}/chat.db"
    go = folder / "go"
    workers = []
    for i in range(PROCESSES):
        ready = folder / f"ready{i}"
        role = "sweep" if i % 2 else "catch-up"
        workers.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, url, str(ready), str(go), role],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in workers):  # all imported, waiting
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    go.touch()
    failures = []
    for _, process in workers:
        _, err = process.communicate(timeout=120)
        if process.returncode != 0:
            last = [line for line in err.splitlines() if "Error" in line]
            failures.append(f"round {round_}: {last[-1] if last else err[-500:]}")
    if failures:
        return failures
    with ChatLedger.open(url) as ledger:
        ledger.catch_up()
        status = ledger.projection_status()
        assert status[0].head > 0
        assert all(s.lag == 0 for s in status)
        assert ledger.analytics().sessions == PROCESSES  # every worker wrote
    return []


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    failures = [f for round_ in range(ROUNDS) for f in _race(tmp_path, round_)]
    assert not failures, "\n".join(failures)

