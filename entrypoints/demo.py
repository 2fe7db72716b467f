"""``chatledger demo``: the seed's story, told by the event log.

A visitor asks two questions, walks away for an hour (a simulated clock), comes
back and is greeted as a returning visitor in a fresh session, then logs in.
"""

from __future__ import annotations

import json
from datetime import timedelta
from uuid import uuid4

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import ChatLedger, ManualClock, SessionPolicy, SessionState
from ..domain.erasure import ERASED_TEXT
from ..domain.session import Session


def run_demo(database_url: str, console: Console | None = None) -> dict[str, str]:
    """Run the scripted conversation; returns the ids it used."""
    console = console or Console()
    clock = ManualClock()
    policy = SessionPolicy(idle_timeout=timedelta(minutes=30), carry_over_slots=frozenset({"language"}))
    visitor = f"visitor-{uuid4().hex[:6]}"
    with ChatLedger.open(database_url, policy=policy, clock=clock) as ledger:
        console.rule(f"[bold]chatledger demo[/] on {database_url}")
        console.print(f"Idle timeout {policy.idle_timeout}; visitor [cyan]{visitor}[/]\n")

        def say(text: str) -> None:
            console.print(f"[dim]{clock():%H:%M}[/] [green]user[/]: {text}")

        def bot(session_id: object, text: str) -> None:
            ledger.reply(session_id, text)  # type: ignore[arg-type]
            console.print(f"[dim]{clock():%H:%M}[/] [magenta]bot[/]:  {text}")

        say("Hi! What are your opening hours?")
        first = ledger.receive(visitor, "Hi! What are your opening hours?", context={"page_url": "https://shop.example/help", "locale": "en-GB"})
        ledger.set_slot(first.session_id, "language", "en")
        bot(first.session_id, "Hello! We're open 9:00-18:00, Monday to Saturday.")
        clock.advance(minutes=2)
        say("Do you ship to Portugal?")
        ledger.receive(visitor, "Do you ship to Portugal?")
        bot(first.session_id, "Yes, delivery to Portugal takes 3-5 working days.")

        console.print("\n[yellow]... the visitor walks away for an hour ...[/]\n")
        clock.advance(hours=1)
        say("I'm back, I'd like to order")
        second = ledger.receive(visitor, "I'm back, I'd like to order")
        greeting = "Welcome back! How can I help you today?" if second.is_returning else "Hello!"
        bot(second.session_id, greeting)
        console.print(
            f"  new session: {second.is_new_session}, returning: {second.is_returning}, "
            f"away for {second.away_for}, carried slots {second.carried_slots}"
        )
        clock.advance(minutes=1)
        ledger.link_identity(visitor, "user-ana")
        console.print(f"[dim]{clock():%H:%M}[/] [blue]login[/]: {visitor} is user-ana (identity linked)")
        ledger.start_task(second.session_id, "order")
        ledger.set_slot(second.session_id, "name", "Ana", scope="user")
        bot(second.session_id, "Thanks, Ana. Let's start your order.")

        console.print()
        console.rule("Event log")
        table = Table("session", "v", "occurred at", "event", "payload")
        for sid in (first.session_id, second.session_id):
            for event in ledger.session_events(sid):
                payload = event.model_dump(
                    exclude_defaults=True,
                    mode="json",
                    exclude={"originator_id", "originator_version", "timestamp", "occurred_at", "originator_topic"},
                )
                table.add_row(
                    "…" + str(sid)[-8:],  # UUIDv7: the head is the start time, the tail is random
                    str(event.originator_version),
                    f"{event.occurred_at:%H:%M:%S}",
                    type(event).__name__,
                    escape(json.dumps(payload)[:80]),
                )
        console.print(table)

        console.rule("Rebuilt states")
        for sid in (first.session_id, second.session_id):
            print_session_state(console, ledger.session(sid), erased=content_erased(ledger, sid))
        return {
            "visitor_id": visitor,
            "first_session_id": str(first.session_id),
            "second_session_id": str(second.session_id),
        }


def content_erased(ledger: ChatLedger, session_id: object) -> bool:
    """Whether an erasure shredded this session's content (its slot values read as null)."""
    events = ledger.session_events(session_id)  # type: ignore[arg-type]
    return any(isinstance(e, Session.ContentErased) for e in events)


def print_session_state(console: Console, state: SessionState, *, erased: bool = False) -> None:
    """The state as text; caller-supplied strings are escaped (``[erased]`` is not markup).

    ``erased``: the session's content was erased, so its null slot values print as
    ``[erased]`` (as its message texts already read)."""
    closed = f" at {state.closed_at:%H:%M} ({state.close_reason})" if state.closed_at else ""
    slots = {k: ERASED_TEXT if erased and v is None else v for k, v in state.slots.items()}
    console.print(
        f"[bold]{state.session_id}[/] status [bold]{state.status}[/]{escape(closed)}; "
        f"user {escape(str(state.user_id))}; returning {state.is_returning}; "
        f"previous {state.previous_session_id}"
    )
    console.print(f"  slots {escape(str(slots))}; open tasks {escape(str(list(state.open_tasks)))}")
    for m in state.messages:
        console.print(f"  {m.position:>2} {m.at:%H:%M} {m.role:<6} {escape(m.text)}")
