"""``AsyncChatLedger``: the :class:`~chatledger.ChatLedger` facade as awaitables, for asyncio
(FastAPI, aiohttp, agent SDKs) and trio, through anyio.

No database call runs on the event loop's thread: every command and query runs the synchronous
ledger in a worker thread (``anyio.to_thread.run_sync``), at most ``workers`` at once (a
``CapacityLimiter``; by default as many as the store has connections to give). The ledger below
is the same object a synchronous program uses, so one command is still one transaction, re-run
on a lost race inside the worker.

Cancellation. A command runs in its worker from start to end, or not at all:

- cancelled while it waits for a worker (all ``workers`` busy), it never starts: nothing is
  appended, and the await raises the cancellation at once;
- cancelled once its worker has started it, the worker finishes the command, retries
  included (it is never abandoned half way), and the await returns only then. Under an anyio or
  trio cancel scope the await returns the command's result (the scope cancels at the caller's
  next checkpoint); under asyncio's ``task.cancel()``, ``asyncio.timeout()`` or ``wait_for``
  it raises ``CancelledError`` once the command has ended. The command then either committed
  (all of its events) or appended nothing, and the ``CancelledError`` does not say which: it is
  not a failure. Re-issue the command with the same ``client_message_id`` (``receive``,
  ``reply``: idempotent; ``turn.duplicate`` tells it had been recorded), or read the state. The
  outcome of such a call is logged on the ``chatledger.aio`` logger.

So cancelling an await never leaves half a command in the store, and the worker count bounds
the commands in flight also while cancelled awaits wait for theirs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload
from uuid import UUID

from ..domain.actors import acting_as
from ..domain.errors import ChatLedgerError, ConfigurationError

try:
    import anyio
    from anyio import CapacityLimiter, to_thread
except ImportError as err:  # pragma: no cover - the base install has no anyio
    raise ConfigurationError(
        "chatledger.aio needs anyio: pip install 'chatledger[aio]' (or 'chatledger[server]')."
    ) from err

from ..domain.policy import SessionPolicy
from ..domain.validation import Limits
from ..infrastructure.scheduler import BackgroundJobs
from ..projections.query_results import TranscriptMessage
from .audit import HistoryStep
from .clock import Clock
from .ledger import ChatLedger
from .retention import RetentionPolicy

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("chatledger.aio")

SQLITE_WORKERS = 4  # SQLite commits one writer at a time; a few threads keep reads flowing


class LedgerClosedError(ChatLedgerError, RuntimeError):
    """An ``AsyncChatLedger`` was used after :meth:`AsyncChatLedger.aclose` (nothing was run)."""


class _Call(Generic[R]):
    """One offloaded call: it runs in a worker at most once, never after its await gave up."""

    def __init__(self, what: str, fn: Callable[[], R]) -> None:
        self.what, self._fn = what, fn
        self._lock = threading.Lock()
        self._state = "queued"  # -> "running" | "abandoned"
        self._outcome = "did not end"
        self.finished = threading.Event()

    def __call__(self) -> R:  # in the worker thread
        with self._lock:
            if self._state == "abandoned":  # its await is gone: nobody sees this
                raise RuntimeError(f"{self.what} was cancelled before it started")
            self._state = "running"
        try:
            result = self._fn()
            self._outcome = "returned"
            return result
        except BaseException as exc:
            self._outcome = f"raised {type(exc).__name__}: {exc}"
            raise
        finally:
            self.finished.set()

    def abandon(self) -> bool:
        """Give up on the call; True if it had not started (it now never will)."""
        with self._lock:
            if self._state == "queued":
                self._state = "abandoned"
                return True
            return False

    async def outlast(self) -> None:
        """Wait, through further cancellations, until the started call has ended."""
        while not self.finished.is_set():
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.002)
            except anyio.get_cancelled_exc_class():  # asyncio's task.cancel() goes through shields
                continue
        log.info("%s was cancelled while it ran; it ran to its end and %s", self.what, self._outcome)


async def offload(what: str, fn: Callable[[], R], threads: CapacityLimiter | None = None) -> R:
    """``fn()`` in a worker thread, safe under cancellation (see the module docstring)."""
    call = _Call(what, fn)
    try:
        return await to_thread.run_sync(call, limiter=threads)
    except anyio.get_cancelled_exc_class():
        if not call.abandon():
            await call.outlast()
        raise


class offloaded(Generic[P, R]):
    """A :class:`ChatLedger` method as a coroutine method of :class:`AsyncChatLedger`: the same
    parameters (mypy sees them through the ``ParamSpec``), awaited, run in a worker."""

    def __init__(self, method: Callable[Concatenate[ChatLedger, P], R]) -> None:
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__
        signature = inspect.signature(method)
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> offloaded[P, R]: ...

    @overload
    def __get__(
        self, obj: AsyncChatLedger, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(
        self, obj: AsyncChatLedger | None, owner: type[Any]
    ) -> offloaded[P, R] | Callable[P, Coroutine[Any, Any, R]]:
        if obj is None:
            return self
        method, name = self.method, self.name

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await obj.run(name, functools.partial(method, obj.sync, *args, **kwargs))

        call.__name__ = call.__qualname__ = name
        call.__doc__ = self.__doc__
        call.__signature__ = self.signature  # type: ignore[attr-defined]
        return call


class _Opening:
    """What :meth:`AsyncChatLedger.open` returns: ``await`` it, or ``async with`` it."""

    def __init__(self, opener: Callable[[], AsyncChatLedger]) -> None:
        self._opener = opener
        self._ledger: AsyncChatLedger | None = None

    async def _open(self) -> AsyncChatLedger:
        return await offload("AsyncChatLedger.open()", self._opener)

    def __await__(self) -> Generator[Any, None, AsyncChatLedger]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncChatLedger:
        self._ledger = await self._open()
        return self._ledger

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ledger is not None:
            await self._ledger.aclose()


class AsyncChatLedger:
    """The commands and queries of :class:`~chatledger.ChatLedger`, awaited.

    ``async with AsyncChatLedger.open(url) as ledger:`` (or ``ledger = await
    AsyncChatLedger.open(url)`` and ``await ledger.aclose()``); or wrap a ledger you opened:
    ``AsyncChatLedger(ChatLedger.open(url), workers=8)`` (it is closed with this one). Each method
    takes the parameters of the :class:`ChatLedger` method of the same name and returns what
    it returns; :meth:`history` returns a list. Share one instance per process and event loop.
    """

    acting_as = staticmethod(acting_as)
    """As ``ChatLedger.acting_as``: the block's awaited calls record that actor (a
    worker thread runs each call in the caller's context)."""

    def __init__(self, ledger: ChatLedger, *, workers: int | None = None) -> None:
        if workers is None:
            settings = ledger.settings
            workers = (
                SQLITE_WORKERS if settings.backend == "sqlite"
                else settings.postgres_pool_size + settings.postgres_max_overflow
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f"workers={workers!r}: the worker count must be an int, 1 or more.")
        self._ledger = ledger
        self.workers = workers
        self._slots = CapacityLimiter(workers)  # held for a whole call, cancelled ones included
        self._threads = CapacityLimiter(workers)
        self._closed = False

    @classmethod
    def open(
        cls, database_url: str | None = None, *, policy: SessionPolicy | None = None,
        clock: Clock | None = None, workers: int | None = None, **settings: Any,
    ) -> _Opening:
        """Open (and create if needed) the ledger at ``database_url`` in a worker thread:
        the arguments of :meth:`ChatLedger.open`, plus ``workers`` (the worker threads;
        default: the PostgreSQL pool's connections, or 4 on SQLite)."""

        def opener() -> AsyncChatLedger:
            ledger = ChatLedger.open(database_url, policy=policy, clock=clock, **settings)
            try:
                return cls(ledger, workers=workers)
            except BaseException:
                ledger.close()
                raise

        return _Opening(opener)

    @property
    def sync(self) -> ChatLedger:
        """The synchronous ledger underneath (for threads of your own: every call blocks)."""
        return self._ledger

    async def run(self, what: str, fn: Callable[[], R]) -> R:
        """``fn()`` (a call on :attr:`sync`) in one of this ledger's workers."""
        if self._closed:
            raise LedgerClosedError(f"{what}: this AsyncChatLedger is closed.")
        async with self._slots:
            return await offload(what, fn, self._threads)

    async def aclose(self) -> None:
        """Let the calls in flight end, then close the ledger (idempotent)."""
        if self._closed:
            return
        self._closed = True
        holders = [object() for _ in range(self.workers)]
        for holder in holders:
            await self._slots.acquire_on_behalf_of(holder)
        await offload("AsyncChatLedger.aclose()", self._ledger.close)

    async def tenant(
        self, tenant: str, *, policy: SessionPolicy | None = None, limits: Limits | None = None
    ) -> AsyncChatLedger:
        handle = AsyncChatLedger.__new__(AsyncChatLedger)
        handle.__dict__.update(self.__dict__)  # the same workers and limits on calls
        handle._ledger = self._ledger.tenant(tenant, policy=policy, limits=limits)
        return handle

    tenant.__doc__ = ChatLedger.tenant.__doc__

    async def __aenter__(self) -> AsyncChatLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ commands
    receive = offloaded(ChatLedger.receive)
    reply = offloaded(ChatLedger.reply)
    set_slot = offloaded(ChatLedger.set_slot)
    clear_slot = offloaded(ChatLedger.clear_slot)
    start_task = offloaded(ChatLedger.start_task)
    complete_task = offloaded(ChatLedger.complete_task)
    end_session = offloaded(ChatLedger.end_session)
    time_out_if_idle = offloaded(ChatLedger.time_out_if_idle)
    expire_if_idle = offloaded(ChatLedger.expire_if_idle)  # deprecated: warns
    link_identity = offloaded(ChatLedger.link_identity)
    erase = offloaded(ChatLedger.erase)

    # ------------------------------------------------------------------ queries of the log
    session = offloaded(ChatLedger.session)
    session_events = offloaded(ChatLedger.session_events)
    visitor = offloaded(ChatLedger.visitor)
    current_session = offloaded(ChatLedger.current_session)
    replay = offloaded(ChatLedger.replay)
    verify = offloaded(ChatLedger.verify)
    seal = offloaded(ChatLedger.seal)
    anchor = offloaded(ChatLedger.anchor)
    export_audit = offloaded(ChatLedger.export_audit)

    async def history(
        self, session_id: UUID | str, *, until: datetime | None = None, version: int | None = None
    ) -> list[HistoryStep]:
        """:meth:`ChatLedger.history`, read whole in the worker (the iterator reads the store)."""
        ledger = self._ledger
        return await self.run(
            "history", lambda: list(ledger.history(session_id, until=until, version=version))
        )

    # ------------------------------------------------------------------ read models
    catch_up = offloaded(ChatLedger.catch_up)
    events_after = offloaded(ChatLedger.events_after)
    projection_status = offloaded(ChatLedger.projection_status)
    projection_failures = offloaded(ChatLedger.projection_failures)
    transcript = offloaded(ChatLedger.transcript)
    analytics = offloaded(ChatLedger.analytics)
    analytics_by_tenant = offloaded(ChatLedger.analytics_by_tenant)

    async def messages(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[int, int, list[TranscriptMessage]]:
        """:meth:`ChatLedger.messages`, read whole in the worker (the iterator holds a connection)."""
        ledger = self._ledger

        def read() -> tuple[int, int, list[TranscriptMessage]]:
            position, head, messages = ledger.messages(start=start, end=end)
            return position, head, list(messages)

        return await self.run("messages", read)

    resessionize = offloaded(ChatLedger.resessionize)
    memory = offloaded(ChatLedger.memory)
    wait_for = offloaded(ChatLedger.wait_for)
    # Read your writes from asyncio: turn.position, or log_position() after any command (a
    # worker thread ran it, so written_position() of the caller's thread says nothing).
    log_position = offloaded(ChatLedger.log_position)

    # ------------------------------------------------------------------ housekeeping
    sweep = offloaded(ChatLedger.sweep)
    sweep_backlog = offloaded(ChatLedger.sweep_backlog)
    archive_closed_sessions = offloaded(ChatLedger.archive_closed_sessions)
    read_archive = offloaded(ChatLedger.read_archive)
    start_background_jobs = offloaded(ChatLedger.start_background_jobs)
    stop_background_jobs = offloaded(ChatLedger.stop_background_jobs)

    @asynccontextmanager
    async def background_jobs(
        self, interval: float = 30.0, *, retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> AsyncIterator[BackgroundJobs]:
        """``async with ledger.background_jobs(): ...``: the sweep and catch-up jobs run in
        their scheduler thread while the block runs."""
        jobs = await self.start_background_jobs(
            interval, retention=retention, projections_interval=projections_interval
        )
        try:
            yield jobs
        finally:
            await self.stop_background_jobs()


__all__ = ["AsyncChatLedger", "LedgerClosedError", "offload", "offloaded"]
