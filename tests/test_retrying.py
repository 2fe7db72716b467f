"""The optimistic-concurrency loop's decisions on refusals (``UnitOfWork.retrying``):
a refusal decided on cached reads is decided again on the store, one decided on the
store is raised at once, and a command whose write may have landed is never re-run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chatledger import (
    ChatLedger,
    ChatLedgerError,
    CommitOutcomeUnknownError,
    InvalidCommandError,
    UnknownSessionError,
)


def counting(
    ledger: ChatLedger, body: Callable[[], object]
) -> tuple[list[bool], Callable[[], None]]:
    runs: list[bool] = []

    def command() -> None:
        runs.append(True)
        body()

    return runs, command


def test_a_refusal_without_cached_reads_is_not_run_twice(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        turn = ledger.receive("v-1", "hello")

        def refuse() -> None:
            ledger.get_session(turn.session_id)  # a read of the store
            raise InvalidCommandError("refused on the store's data")

        runs, command = counting(ledger, refuse)
        with pytest.raises(InvalidCommandError):
            ledger.retrying("refuse", command)
        assert len(runs) == 1


def test_a_refusal_on_cached_reads_is_decided_again_on_the_store(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        turn = ledger.receive("v-1", "hello")

        def refuse() -> None:
            ledger.get_session(turn.session_id, cached=True)
            raise InvalidCommandError("refused")

        runs, command = counting(ledger, refuse)
        with pytest.raises(InvalidCommandError):
            ledger.retrying("refuse", command)
        assert len(runs) == 2  # the cached run, then one on fresh reads


def test_an_unknown_session_is_refused_after_one_run(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive("v-1", "hello")
        runs, command = counting(ledger, lambda: ledger.get_session("0" * 32))
        with pytest.raises(UnknownSessionError):
            ledger.retrying("read", command)
        assert len(runs) == 1  # not cached: the store said so already


def test_an_unknown_commit_outcome_is_a_ledger_error_and_never_re_run(sqlite_url: str) -> None:
    assert issubclass(CommitOutcomeUnknownError, ChatLedgerError)
    assert issubclass(CommitOutcomeUnknownError, RuntimeError)  # as before
    with ChatLedger.open(sqlite_url) as ledger:
        turn = ledger.receive("v-1", "hello")

        def interrupted() -> None:
            ledger.get_session(turn.session_id, cached=True)  # would be re-run if it were a refusal
            raise CommitOutcomeUnknownError("interrupted")

        runs, command = counting(ledger, interrupted)
        with pytest.raises(CommitOutcomeUnknownError):
            ledger.retrying("write", command)
        assert len(runs) == 1
