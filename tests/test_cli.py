"""The command line, through the real entry point on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chatledger import ChatLedger
from chatledger.entrypoints.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_demo_tells_the_timeout_returning_visitor_and_login_story(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    result = runner.invoke(app, ["demo", "--database", url])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert "Welcome back!" in out
    assert "TimedOut" in out and "IdentityLinked" in out
    assert "status timed_out at 09:32 (idle)" in out
    assert "returning True" in out and "user user-ana" in out
    with ChatLedger.open(url) as ledger:
        assert ledger.recorder.max_notification_id() and ledger.recorder.max_notification_id() > 10


def test_session_show_prints_the_rebuilt_state_and_a_past_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    with ChatLedger.open(url) as ledger:
        turn = ledger.receive("v-1", "first words")
        t = ledger.session(turn.session_id).last_activity_at
        ledger.reply(turn.session_id, "later words")
    result = runner.invoke(app, ["session", "show", str(turn.session_id), "--database", url])
    assert result.exit_code == 0, result.output
    assert "first words" in result.output and "later words" in result.output
    past = runner.invoke(
        app, ["session", "show", str(turn.session_id), "--database", url, "--as-of", t.isoformat(), "--json"]
    )
    assert past.exit_code == 0, past.output
    assert "first words" in past.output and "later words" not in past.output


def test_errors_are_one_red_line_and_exit_code_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/err.db"
    ChatLedger.open(url).close()  # an existing (empty) store: read-only commands refuse a missing file
    proc = subprocess.run(
        [sys.executable, "-c", "from chatledger.entrypoints.cli import main; main()",
         "session", "show", "00000000-0000-4000-8000-000000000000", "--database", url],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: No session 00000000-0000-4000-8000-000000000000 exists")
