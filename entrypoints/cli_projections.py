"""CLI for the read models: ``chatledger projections …``, ``export …`` and ``report``.

Commands stay thin: they call the public API (or the projector) and render.
Registered in :mod:`chatledger.entrypoints.cli` by :func:`register`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .. import InvalidCommandError, UnknownSubjectError
from ..domain import validation as v
from .cli_options import (
    DatabaseOption,
    OptionalText,
    SinceOption,
    UntilOption,
    atomic_output,
    open_ledger,
    output_file,
)

if TYPE_CHECKING:  # imported where used: a usage error or --help loads no store code
    from .. import ChatLedger, TranscriptMessage

projections_app = typer.Typer(no_args_is_help=True, help="Operate the read models.")
export_app = typer.Typer(no_args_is_help=True, help="Export read models.")

console = Console()
err_console = Console(stderr=True)

BatchOption = Annotated[
    int, typer.Option("--batch-size", min=1, max=2**63 - 1, help="Events per transaction.")
]


def register(app: typer.Typer) -> None:
    """Add the projection commands to the main ``chatledger`` app."""
    app.add_typer(projections_app, name="projections")
    app.add_typer(export_app, name="export")
    app.command("report")(report)


def _open(database: str | None, *, read_only: bool = False) -> ChatLedger:
    return open_ledger(database, read_only=read_only)


@contextmanager
def _progress_bar(label: str) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        yield bar


def _events_progress(bar: Progress, task: TaskID, per_event: int) -> Callable[[int, int], None]:
    """A projector ``progress(done, total)`` callback that moves ``bar`` over log events.

    The projector counts applications (events x read models, see
    ``chatledger.projections.status.Progress``); ``per_event`` read models share each
    event, so the bar shows events and events/s.
    """
    started = time.perf_counter()
    per_event = max(per_event, 1)

    def progress(done: int, total: int) -> None:
        elapsed = max(time.perf_counter() - started, 1e-9)
        events = done // per_event
        bar.update(task, completed=events, total=-(-total // per_event), rate=events / elapsed)

    return progress


@projections_app.command("status")
def status(database: DatabaseOption = None) -> None:
    """Each projection's position against the head of the log, its lag, and
    the events it could not apply (failed; listed below the table)."""
    with _open(database, read_only=True) as ledger:
        rows = ledger.projection_status()
        failures = ledger.projection_failures() if any(row.failed for row in rows) else []
    table = Table("projection", "position", "head", "lag", "failed")
    for row in rows:
        table.add_row(row.name, str(row.position), str(row.head), str(row.lag), str(row.failed))
    console.print(table)
    if not failures:
        return
    console.print(
        f"{len(failures):,} event(s) not applied, each skipped by that projection only "
        "(fix the cause, then rebuild the projection to apply them):"
    )
    for f in failures[:FAILURES_SHOWN]:
        console.print(
            escape(
                f"  {f.projection}: log position {f.notification_id}, {f.topic.rpartition(':')[2]} "
                f"of {f.originator_id} (version {f.originator_version}): "
                f"{f.error_type}: {f.error_message}"
            ),
            soft_wrap=True,
        )
    if len(failures) > FAILURES_SHOWN:
        console.print(
            f"  … and {len(failures) - FAILURES_SHOWN:,} more (ledger.projection_failures() lists them all)"
        )


FAILURES_SHOWN = 20


@projections_app.command("rebuild")
def rebuild(
    names: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Projections to drop and replay together (see status).", show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Rebuild every projection.")] = False,
    database: DatabaseOption = None,
    batch_size: BatchOption = 5000,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Build into new tables while the live ones keep serving, then swap "
            "atomically (no downtime; a crash leaves the live tables as they were).",
        ),
    ] = False,
) -> None:
    """Drop projections and replay them from the first event (progress and events/s).

    Several names (or ``--all``) are rebuilt in one pass over the log: each
    batch is read and decoded once and applied to each of them. With
    ``--shadow`` reads keep being served by the old tables until the swap.
    """
    with _open(database) as ledger:
        known = list(ledger.projector.projections)
        if all_ and names:
            raise InvalidCommandError("Give projection names or --all, not both.")
        chosen = known if all_ else list(dict.fromkeys(names or ()))
        if not chosen:
            raise InvalidCommandError(f"Name the projections to rebuild (or --all): {', '.join(known)}.")
        for name in chosen:
            if name not in known:
                raise InvalidCommandError(f"No projection named {name!r}; choose one of: {', '.join(known)}.")
        label = f"rebuild {'--shadow ' if shadow else ''}{', '.join(chosen)}"
        started = time.perf_counter()
        with _progress_bar(label) as bar:
            task = bar.add_task(label, total=None, rate=0.0)
            progress = _events_progress(bar, task, len(chosen))
            applied = ledger.projector.rebuild_many(
                chosen, batch_size=batch_size, progress=progress, shadow=shadow
            )
        elapsed = time.perf_counter() - started
    events = applied // len(chosen)  # each log event is applied to each projection
    console.print(
        f"rebuilt {', '.join(chosen)}: {events:,} events in {elapsed:.1f} s "
        f"({events / max(elapsed, 1e-9):,.0f} events/s)"
    )


@projections_app.command("catch-up")
def catch_up(database: DatabaseOption = None, batch_size: BatchOption = 2000) -> None:
    """Apply every event not yet applied, to every projection, then exit (progress and events/s)."""
    with _open(database) as ledger:
        names = list(ledger.projector.projections)
        behind = sum(row.lag for row in ledger.projection_status())
        with _progress_bar("catch-up") as bar:
            task = bar.add_task("catch-up", total=-(-behind // max(len(names), 1)), rate=0.0)
            progress = _events_progress(bar, task, len(names))
            applied = ledger.projector.catch_up(batch_size=batch_size, progress=progress)
    console.print(f"applied {applied:,} event applications across {len(names)} read models")


@projections_app.command("run")
def run(
    database: DatabaseOption = None,
    interval: Annotated[float, typer.Option(help="Seconds between catch-ups.")] = 1.0,
) -> None:
    """Keep every projection current until interrupted (a runner for ``worker`` setups)."""
    v.check_number("--interval", interval, maximum=86_400.0)
    with _open(database) as ledger:
        console.print(f"keeping projections current every {interval}s; Ctrl-C to stop")
        try:
            while True:
                ledger.projector.catch_up()
                time.sleep(interval)
        except KeyboardInterrupt:
            console.print("stopped")


# ------------------------------------------------------------------ exports

FIELDS = ["session_id", "position", "visitor_id", "user_id", "channel", "role", "text", "at"]


def _row(message: TranscriptMessage) -> dict[str, object]:
    data = message.model_dump(mode="json")
    return {k: data[k] for k in FIELDS}


@export_app.command("transcripts")
def export_transcripts(
    out: Annotated[
        Path, typer.Option("--out", "-o", callback=output_file, help="File to write (.jsonl or .csv).")
    ],
    database: DatabaseOption = None,
    fmt: Annotated[
        OptionalText, typer.Option("--format", help="jsonl or csv (default: from --out).")
    ] = None,
    user: Annotated[OptionalText, typer.Option("--user", help="Only this user's messages.")] = None,
    session: Annotated[OptionalText, typer.Option("--session", help="Only this session.")] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    catch_up_first: Annotated[bool, typer.Option("--catch-up/--no-catch-up")] = True,
) -> None:
    """Export the conversation log (one message per line/row) as JSONL or CSV.

    An unknown --user or --session is an error, and a failed export leaves no file."""
    kind = (fmt or out.suffix.lstrip(".")).lower()
    if kind not in ("jsonl", "csv"):
        raise InvalidCommandError(f"Cannot export as {kind!r}; use --format jsonl or csv.")
    start = v.check_time("--since", since) if since is not None else None
    end = v.check_time("--until", until) if until is not None else None
    from ..application.audit import visitors_of_user

    with _open(database, read_only=True) as ledger:
        if session is not None:
            ledger.session(session)  # UnknownSessionError for an id the log has never seen
        if user is not None and not visitors_of_user(ledger, user):
            raise UnknownSubjectError("user", user)
        if catch_up_first:
            ledger.catch_up()
        if user or session:
            transcript = ledger.transcript(session, user_id=user, start=start, end=end)
            position, head, messages = transcript.position, transcript.head, iter(transcript.messages)
        else:
            position, head, messages = ledger.messages(start=start, end=end)
        count = _write(out, kind, messages)
    console.print(f"wrote {count:,} messages to {out} (log position {position} of {head})")


def _write(out: Path, kind: str, messages: Iterator[TranscriptMessage]) -> int:
    count = 0
    with atomic_output(out, newline="") as fh:
        if kind == "csv":
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            for message in messages:
                writer.writerow(_row(message))
                count += 1
        else:
            for message in messages:
                fh.write(json.dumps(_row(message), ensure_ascii=False) + "\n")
                count += 1
    return count


# ------------------------------------------------------------------ report


def report(
    out: Annotated[
        Path, typer.Option("--out", "-o", callback=output_file, help="HTML file to write.")
    ] = Path("report.html"),
    database: DatabaseOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Write a self-contained HTML analytics report (inline SVG charts, no network)."""
    from .report import render_report

    with _open(database, read_only=True) as ledger:
        ledger.catch_up()
        analytics = ledger.analytics(start=since, end=until)
    with atomic_output(out) as fh:
        fh.write(render_report(analytics))
    console.print(f"wrote {out} ({analytics.sessions:,} sessions)")
