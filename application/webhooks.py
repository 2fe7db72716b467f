"""Webhook delivery: post each event of the log to a URL, at least once, in log order.

A :class:`WebhookWorker` is a subscriber tracked like a projection: its position (the
last event a receiver answered with a 2xx) is stored durably per subscription name of the
tenant in ``chatledger_webhook_positions``, and advanced (compare-and-set) only after that
answer. It reads the log with :meth:`ChatLedger.events_after`: nothing skipped or reordered.

Each event is one ``POST`` of its :class:`~chatledger.application.subscribers.LogEvent`
JSON with the headers ``Chatledger-Event-Id`` (also ``event_id`` in the body),
``Chatledger-Event-Position`` and ``Chatledger-Subscription``. A crash between
the receiver's answer and the position update redelivers that event, and a
timeout may deliver one the receiver did get: receivers deduplicate by event id.

A failed attempt (a connection error, a timeout, any answer but 2xx, redirects
included) is retried after ``backoff * 2**(attempt - 1)`` seconds (at most
``max_backoff``), ``max_attempts`` times in all. Then a dead letter is recorded
in ``chatledger_dead_letters`` (subscription, position, event id, attempts,
last error) and, by default (``on_dead_letter="stop"``), the worker stops at
that event: its position stays before it, nothing after it is sent, and the
next run starts with it again. ``on_dead_letter="skip"`` moves on past it
instead (the dead letter records what the receiver is missing).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..domain import validation as v
from ..domain.errors import InvalidValueError
from ..domain.pydantic_aggregates import Immutable
from ..infrastructure.persistence import schema_lock
from ..projections.prefixes import on
from .event_feed import EventFeed, create_tables, dead_letters_table, positions_table, subscription_key

if TYPE_CHECKING:
    from .subscribers import LogEvent

OnDeadLetter = Literal["stop", "skip"]
MAX_URL_CHARS = 2048
MAX_ATTEMPTS = 1000
USER_AGENT = "chatledger-webhooks/1"


class DeadLetter(Immutable):
    """An event a subscription's receiver did not accept after ``attempts`` tries.

    ``outcome``: ``"stopped"`` (the worker stopped before it), ``"skipped"``
    (it moved on past it), or ``"delivered"`` (a later run got a 2xx for it)."""

    subscription: str
    position: int
    event_id: str
    attempts: int
    last_error: str
    failed_at: datetime
    outcome: Literal["stopped", "skipped", "delivered"]


class DeliveryReport(Immutable):
    """What one :meth:`WebhookWorker.deliver_once` did."""

    subscription: str
    delivered: int
    """Events the receiver accepted (2xx) in this run."""
    position: int
    """The subscription's position afterwards."""
    head: int
    """The head of the log when the run started."""
    dead_letters: tuple[DeadLetter, ...] = ()
    """Dead letters recorded in this run."""
    stopped: bool = False
    """True if the run stopped at a dead letter (``on_dead_letter="stop"``)."""


class DeliveryError(Exception):
    """One failed attempt (internal; becomes a retry or a dead letter)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer that is not 2xx: a failed attempt


def check_url(field: str, value: object) -> str:
    url = v.check_str(field, value, MAX_URL_CHARS, what="a URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValueError(
            field, "url", f"{field}={url[:80]!r} must be an http:// or https:// URL with a host."
        )
    return url


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED = ("content-type", "content-length", "host", "chatledger-event-id",
             "chatledger-event-position", "chatledger-subscription")


def _check_headers(headers: object, limits: v.Limits) -> dict[str, str]:
    """Extra request headers (e.g. an ``Authorization``): names are HTTP tokens,
    values have no line breaks, and the worker's own headers cannot be replaced."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidValueError("headers", "type", f"headers must be a mapping of str to str, not {type(headers).__name__}.")
    checked: dict[str, str] = {}
    for key, value in headers.items():
        key = v.check_id("headers key", key, limits)
        if not _TOKEN.fullmatch(key) or key.lower() in _RESERVED:
            raise InvalidValueError(
                "headers key", "header", f"headers key {key[:80]!r} must be an HTTP header name the worker does not set itself."
            )
        value = v.check_str(f"headers[{key!r}]", value, 8192)
        if "\r" in value or "\n" in value:
            raise InvalidValueError(f"headers[{key!r}]", "header", f"headers[{key!r}] must not contain a line break.")
        checked[key] = value
    return checked


def list_dead_letters(ledger: EventFeed, name: str) -> list[DeadLetter]:
    """The dead letters of subscription ``name`` of the ledger's tenant, in log order."""
    name = v.check_id("name", name, ledger.limits)
    engine = ledger.projector.engine
    with schema_lock(ledger.settings):
        create_tables(engine)
    table = on(engine, dead_letters_table)
    with engine.connect() as conn:
        rows = conn.execute(
            select(table)
            .where(table.c.subscription == subscription_key(ledger.tenant_id, name))
            .order_by(table.c.position)
        ).mappings()
        return [DeadLetter(**{**dict(r), "subscription": name}) for r in rows]


class WebhookWorker:
    """Posts every event after its stored position to ``url``; see the module doc.

    ``content`` (default False): send personal fields decrypted instead of
    sealed (erased content is sent as erased; each attempt reads its event
    again, so content erased since its batch was read is not sent). ``timeout`` is per
    request, in seconds. ``sleep`` is how the worker waits between attempts.
    """

    def __init__(
        self,
        ledger: EventFeed,
        name: str,
        url: str,
        *,
        content: bool = False,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        on_dead_letter: OnDeadLetter = "stop",
        batch_size: int = 100,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        limits = ledger.limits
        self.ledger = ledger
        self.name = v.check_id("name", name, limits)
        self.subscription = subscription_key(ledger.tenant_id, self.name)  # the tenant's own
        self.url = check_url("url", url)
        if not isinstance(content, bool):
            raise InvalidValueError("content", "type", f"content must be True or False, not {type(content).__name__}.")
        self.content = content
        self.max_attempts = v.check_count("max_attempts", max_attempts, limits)
        if self.max_attempts > MAX_ATTEMPTS:
            raise InvalidValueError(
                "max_attempts", "count_range", f"max_attempts={max_attempts} is over {MAX_ATTEMPTS}; retries are bounded."
            )
        self.backoff = v.check_number("backoff", backoff, maximum=3600.0)
        self.max_backoff = v.check_number("max_backoff", max_backoff, maximum=86_400.0)
        self.timeout = v.check_number("timeout", timeout, maximum=3600.0)
        self.on_dead_letter = v.check_choice("on_dead_letter", on_dead_letter, ("stop", "skip"))
        self.batch_size = v.check_count("batch_size", batch_size, limits)
        if self.batch_size > 10_000:
            raise InvalidValueError("batch_size", "count_range", f"batch_size={batch_size} is over 10000.")
        self.headers = _check_headers(headers, limits)
        if not callable(sleep):
            raise InvalidValueError("sleep", "type", "sleep must be a callable taking seconds.")
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.engine = ledger.projector.engine
        self.positions_table, self.dead_letters_table = on(self.engine, positions_table), on(self.engine, dead_letters_table)
        with schema_lock(ledger.settings):
            create_tables(self.engine)
        self._stop = threading.Event()

    # ------------------------------------------------------------------ state

    def position(self) -> int:
        """The position of the last event this subscription's receiver accepted."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(self.positions_table.c.position).where(self.positions_table.c.subscription == self.subscription)
            ).scalar()
        return int(found or 0)

    def dead_letters(self) -> list[DeadLetter]:
        """This subscription's dead letters, in log order."""
        return list_dead_letters(self.ledger, self.name)  # of the ledger's tenant

    def _advance(self, expected: int, position: int) -> bool:
        """Compare-and-set the stored position; False if another worker moved it."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if expected == 0:
                exists = conn.execute(
                    select(self.positions_table.c.position).where(self.positions_table.c.subscription == self.subscription)
                ).first()
                if exists is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                self.positions_table.insert().values(
                                    subscription=self.subscription, position=position, updated_at=now
                                )
                            )
                    except IntegrityError:
                        return False
                    return True
            result = conn.execute(
                self.positions_table.update()
                .where(self.positions_table.c.subscription == self.subscription, self.positions_table.c.position == expected)
                .values(position=position, updated_at=now)
            )
            return result.rowcount == 1

    def _record_dead_letter(self, event: LogEvent, attempts: int, error: str, outcome: str) -> DeadLetter:
        now = datetime.now(UTC)
        key = (self.dead_letters_table.c.subscription == self.subscription, self.dead_letters_table.c.position == event.position)
        with self.engine.begin() as conn:
            previous = conn.execute(select(self.dead_letters_table.c.attempts).where(*key)).scalar()
            values = {"event_id": event.event_id, "last_error": error[:2000], "failed_at": now, "outcome": outcome}
            if previous is None:
                conn.execute(
                    self.dead_letters_table.insert().values(
                        subscription=self.subscription, position=event.position, attempts=attempts, **values
                    )
                )
                total = attempts
            else:
                total = int(previous) + attempts
                conn.execute(self.dead_letters_table.update().where(*key).values(attempts=total, **values))
        return DeadLetter(
            subscription=self.name, position=event.position, event_id=event.event_id,
            attempts=total, last_error=error[:2000], failed_at=now, outcome=outcome,
        )

    def _resolve_dead_letter(self, position: int) -> None:
        t = self.dead_letters_table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.subscription == self.subscription, t.c.position == position, t.c.outcome == "stopped")
                .values(outcome="delivered")
            )

    # ------------------------------------------------------------------ delivery

    def _post(self, event: LogEvent) -> None:
        body = event.model_dump_json().encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        for key, value in self.headers.items():
            request.add_header(key, value)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        request.add_header("Chatledger-Event-Id", event.event_id)
        request.add_header("Chatledger-Event-Position", str(event.position))
        request.add_header("Chatledger-Subscription", self.name)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
                response.read(65536)
        except urllib.error.HTTPError as err:
            raise DeliveryError(f"HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise DeliveryError(f"{type(err).__name__}: {reason}") from err
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}")

    def _deliver(self, event: LogEvent) -> tuple[bool, int, str]:
        """Try one event up to ``max_attempts`` times: (delivered, attempts, last error)."""
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._sleep(min(self.backoff * 2 ** (attempt - 2), self.max_backoff))
            if self.content:
                # Read it again before every attempt: its content may have been
                # erased since its batch was read (or since the last attempt).
                fresh = self.ledger.events_after(event.position - 1, limit=1, content=True)
                if fresh and fresh[0].position == event.position:
                    event = fresh[0]
            try:
                self._post(event)
            except DeliveryError as err:
                error = str(err)
                continue
            return True, attempt, ""
        return False, self.max_attempts, error

    def deliver_once(self) -> DeliveryReport:
        """Deliver every event up to the head of the log as it is now, in order;
        return when done, or at a dead letter if ``on_dead_letter="stop"``."""
        head = self.ledger.recorder.max_notification_id() or 0
        position = self.position()
        delivered = 0
        letters: list[DeadLetter] = []
        while position < head and not self._stop.is_set():
            batch = self.ledger.events_after(position, limit=self.batch_size, content=self.content)
            batch = [e for e in batch if e.position <= head]
            if not batch:
                break
            for event in batch:
                ok, attempts, error = self._deliver(event)
                if ok:
                    if not self._advance(position, event.position):
                        return self._report(delivered, head, letters, moved=True)
                    if delivered == 0:  # the event a previous run stopped at, if any
                        self._resolve_dead_letter(event.position)
                    position = event.position
                    delivered += 1
                    continue
                if self.on_dead_letter == "stop":
                    letters.append(self._record_dead_letter(event, attempts, error, "stopped"))
                    return self._report(delivered, head, letters, stopped=True)
                letters.append(self._record_dead_letter(event, attempts, error, "skipped"))
                if not self._advance(position, event.position):
                    return self._report(delivered, head, letters, moved=True)
                position = event.position
                if self._stop.is_set():
                    break
        return self._report(delivered, head, letters)

    def _report(
        self, delivered: int, head: int, letters: list[DeadLetter], *, stopped: bool = False, moved: bool = False
    ) -> DeliveryReport:
        # ``moved``: another worker of this subscription advanced it; it carries on.
        return DeliveryReport(
            subscription=self.name,
            delivered=delivered,
            position=self.position(),
            head=head,
            dead_letters=tuple(letters),
            stopped=stopped,
        )

    def run(self, interval: float = 1.0) -> DeliveryReport:
        """Deliver, then poll every ``interval`` seconds, until :meth:`stop` or
        (with ``on_dead_letter="stop"``) a dead letter; return the last report."""
        interval = v.check_number("interval", interval, maximum=86_400.0)
        while True:
            report = self.deliver_once()
            if report.stopped or self._stop.wait(interval):
                return report

    def stop(self) -> None:
        """Make :meth:`run` (and :meth:`deliver_once`) return after the event
        being delivered; for good: a worker that was stopped sends nothing more
        (make a new one to resume, from the stored position)."""
        self._stop.set()


__all__ = ["DeadLetter", "DeliveryReport", "WebhookWorker", "check_url", "list_dead_letters"]
