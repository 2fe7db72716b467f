"""Projection operations: CLI, exports, the HTML report (also in real Chromium),
and a runner killed with SIGKILL in the middle of a batch."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from chatledger import ChatLedger
from chatledger.entrypoints.cli import app
from typer.testing import CliRunner

from .test_projections import at, dump, rebuilt, write_history

runner = CliRunner()


def history(ledger: ChatLedger) -> None:
    write_history(ledger, visitors=5)
    t = ledger.receive("late", "day two", at=at(60 * 24))
    ledger.start_task(t.session_id, "refund", at=at(60 * 24 + 1))


def test_status_rebuild_and_errors(sqlite_url: str, ledger: ChatLedger) -> None:
    history(ledger)
    head = ledger.projector.head()
    url = ledger.settings.database_url
    result = runner.invoke(app, ["projections", "status", "-d", url])
    assert result.exit_code == 0, result.output
    assert re.search(rf"conversation_log\s*│\s*0\s*│\s*{head}\s*│\s*{head}", result.output)

    result = runner.invoke(app, ["projections", "rebuild", "memory", "-d", url, "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert f"rebuilt memory: {head:,} events" in result.output and "events/s" in result.output
    assert ledger.projector.position("memory") == head
    assert ledger.projector.position("analytics") == 0

    result = runner.invoke(app, ["projections", "rebuild", "nope", "-d", url])
    assert result.exit_code != 0 and "No projection named 'nope'" in str(result.exception)


def test_rebuild_several_or_all_in_one_pass(sqlite_url: str, ledger: ChatLedger) -> None:
    history(ledger)
    head = ledger.projector.head()
    url = ledger.settings.database_url
    ledger.catch_up()
    before = dump(ledger)
    calls: list[list[str]] = []
    original = ledger.projector.rebuild_many

    result = runner.invoke(
        app, ["projections", "rebuild", "memory", "analytics", "-d", url, "--batch-size", "7"]
    )
    assert result.exit_code == 0, result.output
    assert f"rebuilt memory, analytics: {head:,} events" in result.output

    with ChatLedger.open(url) as other:
        assert dump(other) == before  # dropped and replayed: the same rows

    # --all rebuilds every projection through one rebuild_many call.
    from chatledger.projections import runner as runner_module

    def spy(self: Any, names: Any = None, **kwargs: Any) -> int:
        calls.append(list(names))
        return original.__func__(self, names, **kwargs)  # type: ignore[attr-defined]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_module.ProjectionRunner, "rebuild_many", spy)
        result = runner.invoke(app, ["projections", "rebuild", "--all", "-d", url])
    assert result.exit_code == 0, result.output
    assert calls == [list(ledger.projector.projections)]
    assert f"{head:,} events" in " ".join(result.output.split())  # rich wraps the long line of names
    with ChatLedger.open(url) as other:
        assert dump(other) == before
        assert all(other.projector.position(n) == head for n in other.projector.projections)

    result = runner.invoke(app, ["projections", "rebuild", "memory", "nope", "-d", url])
    assert result.exit_code != 0 and "No projection named 'nope'" in str(result.exception)
    result = runner.invoke(app, ["projections", "rebuild", "-d", url])
    assert result.exit_code != 0 and "--all" in str(result.exception)
    result = runner.invoke(app, ["projections", "rebuild", "memory", "--all", "-d", url])
    assert result.exit_code != 0 and "not both" in str(result.exception)


def test_exports_jsonl_and_csv(ledger: ChatLedger, tmp_path: Path) -> None:
    history(ledger)
    url = ledger.settings.database_url
    jsonl, table = tmp_path / "all.jsonl", tmp_path / "user.csv"
    result = runner.invoke(app, ["export", "transcripts", "--out", str(jsonl), "-d", url])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 31
    assert lines[0]["role"] == "user" and lines[0]["at"].endswith("Z")

    result = runner.invoke(
        app, ["export", "transcripts", "--out", str(table), "--user", "user-1", "-d", url]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(table.open()))
    assert rows and {r["user_id"] for r in rows} == {"user-1"}
    assert [r["text"] for r in rows] == [m.text for m in ledger.transcript(user_id="user-1").messages]

    result = runner.invoke(app, ["export", "transcripts", "--out", str(tmp_path / "x.xml"), "-d", url])
    assert result.exit_code != 0 and "Cannot export" in str(result.exception)


def report_html(ledger: ChatLedger, tmp_path: Path) -> Path:
    history(ledger)
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "--out", str(out), "-d", ledger.settings.database_url])
    assert result.exit_code == 0, result.output
    return out


CHARTS = ("chart-sessions-per-day", "chart-duration", "chart-end-reasons", "chart-returning")


def test_report_is_self_contained_and_has_its_charts(ledger: ChatLedger, tmp_path: Path) -> None:
    html = report_html(ledger, tmp_path).read_text()
    for chart in CHARTS:
        assert f'<figure id="{chart}">' in html
    assert html.count("<svg") == 4
    assert not re.search(r"<script|https?://(?!www\.w3\.org/2000/svg)", html)  # no CDN, no JS
    analytics = ledger.analytics()
    per_day = re.search(r'id="chart-sessions-per-day".*?</figure>', html, re.DOTALL)
    assert per_day is not None
    values = [int(v) for v in re.findall(r'class="bar"[^>]*data-value="(\d+)"', per_day.group(0))]
    assert values == list(analytics.sessions_per_day.values()) and sum(values) == 16
    ends = re.search(r'id="chart-end-reasons".*?</figure>', html, re.DOTALL)
    assert ends is not None
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', ends.group(0))) == 16


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium is not installed")
def test_report_opens_in_headless_chromium(sqlite_url: str, ledger: ChatLedger, tmp_path: Path) -> None:
    out = report_html(ledger, tmp_path)
    command = [
        find_chromium() or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        out.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<h1>Conversation analytics</h1>" in dom
    for chart in CHARTS:
        assert f'id="{chart}"' in dom
    assert dom.count('class="bar"') >= 9
    assert "Uncaught" not in done.stderr and "ERR_FILE_NOT_FOUND" not in done.stderr


CHILD = textwrap.dedent(
    """
    import sys
    from chatledger import ChatLedger
    from chatledger.projections import DEFAULT_READ_MODELS
    from chatledger.projections.runner import ProjectionRunner

    def pausing(cls, at):
        seen = [0]
        class Pausing(cls):
            name = cls.name
            def process_event(self, event, tracking):
                super().process_event(event, tracking)
                seen[0] += 1
                if seen[0] == at:  # mid-batch, with uncommitted rows written
                    self.flush()
                    print("inside a batch", flush=True)
                    sys.stdin.readline()  # wait here to be killed
        return Pausing

    ledger = ChatLedger.open(sys.argv[1])
    projector = ProjectionRunner(ledger.name, ledger.recorder, ledger.mapper, ledger.projector.engine,
                          [pausing(cls, 40) for cls in DEFAULT_READ_MODELS])
    projector.catch_up(batch_size=15)
    """
)


def test_a_runner_killed_with_sigkill_mid_batch_resumes_exactly(
    ledger: ChatLedger, tmp_path: Path
) -> None:
    history(ledger)
    head = ledger.projector.head()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env: dict[str, Any] = {**os.environ}
    child = subprocess.Popen(
        [sys.executable, str(script), ledger.settings.database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inside a batch"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    position = ledger.projector.position("conversation_log")
    # Whole batches of 15 committed; the one it died in left nothing behind.
    assert 0 < position < head and position % 15 == 0
    ledger.catch_up()
    assert {s.position for s in ledger.projection_status()} == {head}
    resumed = dump(ledger)
    assert len(resumed["conversation_messages"]) == 31
    assert rebuilt(ledger) == resumed
    assert ledger.analytics(as_of=at(10_000)).sessions == 16
