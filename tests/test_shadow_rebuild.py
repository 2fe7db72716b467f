"""Shadow rebuilds (issue 11): ``projections rebuild --shadow`` builds read
models into new tables while the live ones keep serving, then swaps them in
one transaction. Readers never see a half-built model, live catch-ups and
writes go on during the build (each event applied once), failure records
move with the swap, and a process killed at any point (SIGKILL) leaves the
live model as it was; a rerun completes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest
from chatledger import ChatLedger, ConfigurationError, ManualClock
from chatledger.infrastructure.settings import Settings
from chatledger.projections import DEFAULT_READ_MODELS, ConversationLog
from sqlalchemy import inspect

from .test_projection_failures import MARKER, PickyLog
from .test_projections import at, dump, write_history

MODELS = ["conversation_log", "analytics", "memory", "active_sessions", "message_gaps"]


def _expected(ledger: ChatLedger) -> dict[str, Any]:
    """The answers a reader must get, whatever moment it reads at."""
    return {
        "transcripts": {u: ledger.transcript(user_id=u).messages for u in ("user-0", "user-1")},
        "sessions": ledger.analytics(end=at(10_000), as_of=at(10_000)).sessions,
        "messages": ledger.analytics(end=at(10_000), as_of=at(10_000)).messages,
        "memory": ledger.memory(user_id="user-2").model_dump(exclude={"position", "head", "lag"}),
    }


def _answers(ledger: ChatLedger) -> dict[str, Any]:
    return _expected(ledger)


def _leftovers(ledger: ChatLedger) -> list[str]:
    """Tables of other generations (shadows, retired live tables) still in the store."""
    with ledger.projector.engine.connect() as conn:
        return sorted(n for n in inspect(conn).get_table_names() if "__g" in n)


class Reads:
    """Reads the ledger in a thread of its own until stopped; counts wrong answers."""

    def __init__(self, ledger: ChatLedger, expected: dict[str, Any]) -> None:
        self.ledger, self.expected = ledger, expected
        self.done = self.wrong = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def check(self) -> None:
        answers = _answers(self.ledger)
        self.done += 1
        if answers != self.expected:
            self.wrong += 1
            self.first_wrong = getattr(self, "first_wrong", None) or {
                k: {f: (x, self.expected[k][f]) for f, x in v.items() if x != self.expected[k][f]} if isinstance(v, dict) else (v, self.expected[k]) for k, v in answers.items() if v != self.expected[k]
            }

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except BaseException as err:  # noqa: BLE001 - reported by stop()
                self.errors.append(err)
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.mark.slow
def test_reads_stay_whole_while_a_shadow_is_built_and_live_writes_go_on(
    database_url: str, clock: ManualClock
) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        write_history(ledger, visitors=8)
        ledger.catch_up()
        expected = _expected(ledger)
        assert expected["transcripts"]["user-0"] and expected["sessions"] == 24
        head_before = ledger.projector.head()
        control = ChatLedger.open(database_url, clock=clock)

        # The control: an in-place rebuild is seen half-built by the same reads.
        in_place = Reads(control, expected)
        control.projector.rebuild_many(MODELS, batch_size=10, progress=lambda d, t: in_place.check())
        assert in_place.wrong > 0

        written: list[str] = []

        def during(done: int, total: int) -> None:
            # After each shadow batch: a read, a write, and a live catch-up
            # that the read model serves at once (on the old tables).
            reads.check()
            visitor = f"late-{len(written)}"
            ledger.receive(visitor, f"said during the rebuild {len(written)}", at=at(20_000 + done))
            written.append(visitor)
            ledger.projector.catch_up()
            assert [m.text for m in ledger.transcript(visitor_id=visitor).messages] == [
                f"said during the rebuild {len(written) - 1}"
            ]

        stop = threading.Event()

        def writer() -> None:  # and more writes, racing the build and the swap
            n = 0
            while not stop.is_set():
                control.receive(f"racer-{n % 5}", f"race {n}", at=at(30_000 + n))
                n += 1

        racing = threading.Thread(target=writer, daemon=True)
        with Reads(ledger, expected) as reads:
            racing.start()
            applied = ledger.projector.rebuild_shadow(MODELS, batch_size=10, progress=during)
            stop.set()
            racing.join(30)
        assert reads.wrong == 0, reads.first_wrong
        assert reads.errors == [] and reads.done > len(written) > 5
        assert applied >= 4 * head_before

        ledger.catch_up()
        head = ledger.projector.head()
        assert {s.position for s in ledger.projection_status()} == {head}
        live = dump(ledger)
        messages = sum(
            1
            for n in ledger.projector.recorder.select_notifications(0, head + 1)
            if n.topic.endswith(("Session.MessageReceived", "Session.MessageSent"))
        )
        assert len(live["conversation_messages"]) == messages  # each once
        assert _leftovers(ledger) == [] and ledger.projector.shadow_status() == []
        ledger.projector.rebuild_many(MODELS)  # fully rebuilt, in place
        assert dump(ledger) == live
        control.close()


def test_a_second_shadow_and_an_in_place_rebuild_after_it(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        write_history(ledger, visitors=3)
        ledger.catch_up()
        before = dump(ledger)
        for _ in range(2):  # generations 1 then 2: index names never collide
            ledger.projector.rebuild_many(["analytics", "conversation_log"], shadow=True)
            assert dump(ledger) == before and _leftovers(ledger) == []
        with ChatLedger.open(database_url, clock=clock) as other:  # opening adds no index
            with other.projector.engine.connect() as conn:
                names = [i["name"] for i in inspect(conn).get_indexes("conversation_messages")]
            assert sorted(names) == sorted(
                f"{i.name}__g2" for i in ConversationLog.metadata.tables["conversation_messages"].indexes
            )
        ledger.projector.rebuild("conversation_log")
        assert dump(ledger) == before
        ledger.receive("visitor-0", "after all that")
        ledger.catch_up()
        assert ledger.transcript(user_id="user-0").messages[-1].text == "after all that"


def test_failure_records_move_with_the_swap(database_url: str, clock: ManualClock) -> None:
    models = [PickyLog if m is ConversationLog else m for m in DEFAULT_READ_MODELS]
    with (
        ChatLedger(Settings(database_url=database_url), clock=clock, read_models=models) as picky,
        pytest.raises(ConfigurationError, match="supports_shadow_rebuild"),
    ):
        picky.projector.rebuild_shadow(["conversation_log"])
    PickyLog.supports_shadow_rebuild = True  # it writes through view.table(), as its base
    try:
        with ChatLedger(Settings(database_url=database_url), clock=clock, read_models=models) as picky:
            picky.receive("ana", "hello")
            picky.receive("ana", MARKER)
            picky.catch_up()
            assert [f.projection for f in picky.projection_failures()] == ["conversation_log"]
            seen: list[Any] = []
            picky.projector.rebuild_shadow(
                ["conversation_log"], progress=lambda d, t: seen.append(picky.projection_failures())
            )
            # During the build, the live model's records; after the swap, the shadow's.
            assert seen and all(len(s) == 1 for s in seen)
            failures = picky.projection_failures()
            assert [f.projection for f in failures] == ["conversation_log"]
            assert {s.name: s.failed for s in picky.projection_status()}["conversation_log"] == 1
    finally:
        del PickyLog.supports_shadow_rebuild
    with ChatLedger.open(database_url, clock=clock) as fixed:
        fixed.projector.rebuild_shadow(["conversation_log"])
        assert fixed.projection_failures() == []
        assert [m.text for m in fixed.transcript(visitor_id="ana").messages] == ["hello", MARKER]


# ---------------------------------------------------------------- SIGKILL

PAUSE_IN_SWAP = textwrap.dedent(
    """
    import sys
    from sqlalchemy import event
    from chatledger import ChatLedger

    ledger = ChatLedger.open(sys.argv[1])
    renames = [0]

    @event.listens_for(ledger.projector.engine, "before_cursor_execute")
    def pause(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(sys.argv[2]):
            renames[0] += 1
            if renames[0] == int(sys.argv[3]):
                print("paused", flush=True)
                sys.stdin.readline()  # wait here to be killed

    ledger.projector.rebuild_shadow(["conversation_log", "analytics"], batch_size=7)
    """
)


def _cli(url: str, *args: str) -> list[str]:
    script = Path(sys.executable).parent / "chatledger"
    return [str(script), "projections", "rebuild", "--shadow", *args, "-d", url]


def _check_untouched(ledger: ChatLedger, before: dict[str, Any], expected: dict[str, Any]) -> None:
    assert dump(ledger) == before
    assert _answers(ledger) == expected
    head = ledger.projector.head()
    assert {s.position for s in ledger.projection_status()} == {head}


def _killed_history(url: str, clock: ManualClock) -> tuple[ChatLedger, dict[str, Any], dict[str, Any]]:
    ledger = ChatLedger.open(url, clock=clock)
    write_history(ledger, visitors=10)
    ledger.catch_up()
    return ledger, dump(ledger), _expected(ledger)


def test_killed_inside_the_swap_leaves_the_live_model_and_a_rerun_completes(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger, before, expected = _killed_history(database_url, clock)
    script = tmp_path / "child.py"
    script.write_text(PAUSE_IN_SWAP)
    child = subprocess.Popen(
        [sys.executable, str(script), database_url, "ALTER TABLE", "5"],  # 4 of 10 renames done
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "paused"
        if database_url.startswith("sqlite"):  # PostgreSQL: readers wait for the swap's locks
            _check_untouched(ledger, before, expected)  # SQLite: they read on
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    _check_untouched(ledger, before, expected)
    assert [s.name for s in ledger.projector.shadow_status()] == [
        "analytics__shadow", "conversation_log__shadow",
    ]  # fmt: skip
    done = subprocess.run(_cli(database_url, "conversation_log", "analytics"),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Continued, not started again: the shadow had reached the head before the kill.
    assert "rebuilt conversation_log, analytics: 0 events" in done.stdout
    _check_untouched(ledger, before, expected)
    assert ledger.projector.shadow_status() == [] and _leftovers(ledger) == []
    ledger.close()


def test_killed_after_the_swap_the_old_tables_left_are_dropped_by_the_next_rebuild(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger, before, expected = _killed_history(database_url, clock)
    script = tmp_path / "child.py"
    script.write_text(PAUSE_IN_SWAP)
    child = subprocess.Popen(
        [sys.executable, str(script), database_url, "DROP TABLE", "1"],  # committed, not dropped
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    _check_untouched(ledger, before, expected)  # the new generation, the same answers
    assert ledger.projector.shadow_status() == []
    assert "conversation_messages__g0" in _leftovers(ledger)
    ledger.projector.rebuild("conversation_log")  # in place: the leftovers' index names are free
    assert not any(n.startswith("conversation_") for n in _leftovers(ledger))
    ledger.projector.rebuild_shadow(["analytics"])
    assert _leftovers(ledger) == []
    _check_untouched(ledger, before, expected)
    ledger.close()


@pytest.mark.slow
def test_the_cli_killed_at_random_points_leaves_the_live_model_and_a_rerun_completes(
    database_url: str, clock: ManualClock
) -> None:
    ledger, before, expected = _killed_history(database_url, clock)
    command = _cli(database_url, "--all", "--batch-size", "3")
    started = time.monotonic()  # how long one whole run takes, to aim the kills
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    whole = time.monotonic() - started
    _check_untouched(ledger, before, expected)
    rng = random.Random(os.getpid())
    kills = 0
    for _ in range(12):  # until enough kills landed before the end (a loaded box is slow to aim)
        if kills >= 4:
            break
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.9) * whole)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
        _check_untouched(ledger, before, expected)
    assert kills >= 3  # most landed before the end
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    _check_untouched(ledger, before, expected)
    assert ledger.projector.shadow_status() == [] and _leftovers(ledger) == []
    ledger.close()


def test_an_erasure_drops_an_unfinished_shadow_and_its_copies(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """A shadow killed before its swap holds plaintext copied from the log; no
    catch-up reaches it, so an erasure drops it (found by review)."""
    ledger = ChatLedger.open(database_url, clock=clock)
    write_history(ledger, visitors=4)
    turn = ledger.receive("eve", "XYZZY my secret")
    ledger.catch_up()
    script = tmp_path / "child.py"
    script.write_text(PAUSE_IN_SWAP)
    child = subprocess.Popen(
        [sys.executable, str(script), database_url, "ALTER TABLE", "1"],  # built, not swapped
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _leftovers(ledger) != []  # the shadow's copies, "XYZZY" among them
    ledger.erase(visitor_id="eve")
    assert ledger.projector.shadow_status() == [] and _leftovers(ledger) == []
    assert [m.text for m in ledger.session(turn.session_id).messages] == ["[erased]"]
    if database_url.startswith("sqlite"):
        ledger.close()
        path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"XYZZY" not in raw
        ledger = ChatLedger.open(database_url, clock=clock)
    ledger.projector.rebuild_shadow(["conversation_log", "analytics"])  # a rerun starts afresh
    assert "XYZZY my secret" not in [m.text for m in ledger.transcript(visitor_id="eve").messages]
    ledger.close()


def test_a_shadow_abandoned_while_it_runs_swaps_nothing_and_says_so(database_url: str, clock: ManualClock) -> None:
    from chatledger import ConcurrencyConflictError

    ledger = ChatLedger.open(database_url, clock=clock)
    write_history(ledger, visitors=3)
    ledger.catch_up()
    before = dump(ledger)

    def abandon(done: int, total: int) -> None:
        ledger.projector.cancel_shadows()  # as an erasure in another process would

    with pytest.raises(ConcurrencyConflictError, match="abandoned"):
        ledger.projector.rebuild_shadow(["conversation_log"], batch_size=5, progress=abandon)
    assert dump(ledger) == before
    ledger.close()
