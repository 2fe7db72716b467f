"""Issue 9's fuzz, on the command line: hostile arguments to the installed
``chatledger`` console script (a real subprocess). Every run exits 0, 1 (a
chatledger error: one ``error:`` line) or 2 (a usage error), never with a
traceback, and a command that failed appended nothing; afterwards the store
still verifies.

What argv can carry is what the fuzz sends: any text without NUL, including
lone surrogates ``\\udc80``-``\\udcff``, which reach the process as bytes that
are not UTF-8 (``os.fsencode``), and 100 kB arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chatledger import ChatLedger, ManualClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import examples, log_head

argv_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=3),  # not UTF-8
    st.sampled_from(["", " ", "-", "--", "--help", "-1", "0", "nan", "2026-13-45", "yesterday", "x" * 100_000]),
)


def commands(db: str, out: str) -> st.SearchStrategy[list[str]]:
    d = ["--database", db]
    return st.one_of(
        argv_text.map(lambda x: ["session", "show", x, *d]),
        argv_text.map(lambda x: ["session", "show", "00000000-0000-4000-8000-000000000000", "--as-of", x, *d]),
        argv_text.map(lambda x: ["export", "transcripts", "--user", x, "--out", out, *d]),
        argv_text.map(lambda x: ["audit", "replay", x, *d]),
        argv_text.map(lambda x: ["audit", "export", "--user", x, "--out", out, *d]),
        argv_text.map(lambda x: ["erase", "--user", x, *d]),
        argv_text.map(lambda x: ["projections", "rebuild", x, *d]),
        argv_text.map(lambda x: ["events", "follow", "--once", "--after", x, *d]),
        argv_text.map(lambda x: ["worker", "--once", "--batch-size", x, *d]),
        st.lists(argv_text, max_size=4).map(lambda xs: [*xs, *d]),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-fuzz") / "chat.db"
    with ChatLedger.open(f"sqlite:///{path}", clock=ManualClock()) as ledger:
        turn = ledger.receive("v-1", "hello")
        ledger.reply(turn.session_id, "hi there")
        ledger.link_identity("v-1", "u-1")
    return path


def _script() -> str:
    found = shutil.which("chatledger", path=str(Path(sys.executable).parent))
    assert found, "pip install -e . first"
    return found


def _head(path: Path) -> int:
    with ChatLedger.open(f"sqlite:///{path}") as ledger:
        return log_head(ledger)


@pytest.mark.slow
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_arguments_never_end_in_a_traceback(store: Path, tmp_path: Path, data: st.DataObject) -> None:
    args = data.draw(commands(f"sqlite:///{store}", str(tmp_path / "out.jsonl")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")} | {"COLUMNS": "200"}
    before = _head(store)
    done = subprocess.run(
        [_script(), *[os.fsencode(a) for a in args]], env=env, capture_output=True, timeout=120, check=False
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert done.returncode in (0, 1, 2), (done.returncode, stderr[-3000:])
    if done.returncode != 0:
        assert _head(store) == before, f"{args[:3]} failed with {done.returncode} after appending"
        if done.returncode == 1:
            assert "error:" in stderr


@pytest.mark.slow
def test_after_the_cli_fuzz_the_store_verifies(store: Path) -> None:
    done = subprocess.run([_script(), "audit", "verify", "--database", f"sqlite:///{store}"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
