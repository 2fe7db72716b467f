"""``chatledger audit …`` and ``chatledger erase``: thin commands over the audit API.

Registered in :mod:`chatledger.entrypoints.cli`. Errors travel as
``ChatLedgerError`` to ``cli.main``, which prints one red line and exits 1.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .cli_options import (
    DatabaseOption,
    JsonOption,
    OptionalText,
    atomic_output,
    exactly_one,
    open_ledger,
    output_file,
    parse_time,
)

audit_app = typer.Typer(
    no_args_is_help=True, help="Replay, verify and export the event log for auditors."
)
console = Console(highlight=False)



def _event_payload(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = event.model_dump(mode="json")
    for key in ("originator_id", "originator_version", "originator_topic"):
        data.pop(key, None)
    return data


@audit_app.command("replay")
def replay(
    session_id: str,
    until: Annotated[
        Optional[datetime],  # noqa: UP045
        typer.Option(
            "--until", parser=parse_time, metavar="TIME", help="ISO time: only the events known by then."
        ),
    ] = None,
    version: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--version", help="Stop after this event version."),
    ] = None,
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a session event by event with the state after each step (from the log only)."""
    at = until
    with open_ledger(database, read_only=True) as ledger:
        steps = list(ledger.history(session_id, until=at, version=version))
        final = ledger.replay(session_id, until=at) if at is not None else None
    if as_json:
        doc = {
            "session_id": session_id,
            "until": at.isoformat() if at else None,
            "version": version,
            "steps": [
                {
                    "version": step.event.originator_version,
                    "type": type(step.event).__name__,
                    "actor": step.actor,
                    "request_id": step.request_id,
                    "event": _event_payload(step.event),
                    "state": step.state.model_dump(mode="json"),
                }
                for step in steps
            ],
            "state_at_until": final.model_dump(mode="json") if final else None,
        }
        print(json.dumps(doc, indent=2))
        return
    for step in steps:
        e, s = step
        console.print(
            f"[bold]v{e.originator_version}[/] {e.occurred_at.isoformat()} "
            f"[cyan]{type(e).__name__}[/] by {escape(step.actor)} {escape(json.dumps(_event_payload(e), default=str))}"
        )
        last = f"{s.messages[-1].role}: {s.messages[-1].text}" if s.messages else "-"
        console.print(
            escape(
                f"    status={s.status} messages={len(s.messages)} last={last!r} "
                f"slots={json.dumps(s.slots)} open_tasks={list(s.open_tasks)} "
                f"completed_tasks={list(s.completed_tasks)}"
            )
        )
    if final is not None and steps and final.status != steps[-1].state.status:
        console.print(f"at {at.isoformat() if at else ''}: {final.status} since {final.closed_at}")


@audit_app.command("verify")
def verify(
    session: Annotated[
        OptionalText,
        typer.Option("--session", help="Verify one session's chain instead of the whole log."),
    ] = None,
    anchor: Annotated[
        OptionalText,
        typer.Option("--anchor", metavar="ROOT@POS", help="A root printed by 'audit anchor': detects truncation."),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also exit 1 if the unsealed tail is longer or older than the bound.")
    ] = False,
    archive: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--archive", metavar="DIR", help="Check the retention archive against what the log removed."),
    ] = None,
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute the hash chains and seals; exit status 1 if any link is broken."""
    with open_ledger(database, read_only=True) as ledger:
        report = ledger.verify(session, anchor=anchor)
        limits = (ledger.settings.audit_tail_max_events, ledger.settings.audit_tail_max_age_s)
        if archive is not None:
            from ..application.log_retention import check_archives

            archives = check_archives(ledger, archive, report)
    tail_ok = report.tail_within(*limits)
    if as_json:
        extra = {"archive": archives.as_dict()} if archive is not None else {}
        print(json.dumps(report.as_dict() | {"tail_within_bound": tail_ok} | extra, indent=2))
    elif report.ok:
        console.print(f"[green]OK[/] {report.scope}: {report.checked} events verified; log head at position {report.head_position}")
        if session is None:
            age = "-" if report.tail_age_s is None else f"{report.tail_age_s:.1f} s"
            console.print(
                f"sealed through position {report.sealed_through} ({report.seals} seals, root {report.seal_root or '-'}); "
                f"unsealed tail: {report.tail_count} events, oldest {age}"
            )
        if report.removed:
            files = ", ".join(f"{name}: {n}" for name, n in sorted(report.removed_by_archive.items()))
            console.print(f"removed by retention: {report.removed} events (archives {files}), accounted for by the log's records")
        if archive is not None:
            console.print(
                f"archive {archive}: {archives.agreed} of {archives.sessions} removed sessions agree with the log"
                + (f", {archives.erased} erased (unreadable)" if archives.erased else "")
            )
    else:
        first = report.first_break
        assert first is not None
        console.print(f"[red]BROKEN[/] {report.scope}: {report.break_count} broken link(s)")
        console.print(f"first: {first.describe()}")
        for brk in report.breaks[1:]:
            console.print(f"  then: {brk.describe()}")
    if strict and session is None and not tail_ok and not as_json:
        console.print(
            f"[red]TAIL[/] the unsealed tail ({report.tail_count} events, {report.tail_age_s or 0:.1f} s) "
            f"exceeds the bound ({limits[0]} events, {limits[1]} s)"
        )
    if not report.ok or (strict and session is None and not tail_ok):
        raise typer.Exit(code=1)


@audit_app.command("anchor")
def anchor_cmd(
    database: DatabaseOption = None,
    seal: Annotated[bool, typer.Option("--seal/--no-seal", help="Seal what is committed first.")] = True,
) -> None:
    """Print the newest seal as ROOT@POSITION, to publish outside the database."""
    with open_ledger(database, read_only=True) as ledger:
        if seal:
            ledger.seal()
        found = ledger.anchor()
    if found is None:
        console.print("[red]nothing sealed yet[/] (the log is empty)")
        raise typer.Exit(code=1)
    print(found)


def erase(
    ctx: typer.Context,
    user: Annotated[
        OptionalText,
        typer.Option("--user", help="Erase a user: every visitor ever linked to them."),
    ] = None,
    visitor: Annotated[
        OptionalText,
        typer.Option("--visitor", help="Erase one (possibly anonymous) visitor."),
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Crypto-shred a person's conversation content; print the erasure receipt (JSON)."""
    exactly_one(ctx, user=user, visitor=visitor)
    # A store that does not exist holds no one to erase: refuse it like a read.
    with open_ledger(database, read_only=True) as ledger:
        receipt = ledger.erase(user_id=user, visitor_id=visitor)
    print(receipt.model_dump_json(indent=2))


@audit_app.command("export")
def export(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", callback=output_file, help="The JSONL file to write.")
    ],
    user: Annotated[
        OptionalText,
        typer.Option("--user", help="Export every visitor and session of this user."),
    ] = None,
    session: Annotated[
        OptionalText,
        typer.Option("--session", help="Export one session."),
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Write a self-describing JSONL bundle: header, events with hashes, verification result.

    An unknown --user or --session is an error, and a failed export leaves no file."""
    exactly_one(ctx, user=user, session=session)
    with open_ledger(database, read_only=True) as ledger, atomic_output(out) as fh:
        report = ledger.export_audit(fh, user_id=user, session_id=session)
    status = "[green]verified[/]" if report.ok else "[red]BROKEN[/]"
    console.print(f"wrote {out} (log {status}, head position {report.head_position})")
    if not report.ok:
        raise typer.Exit(code=1)
