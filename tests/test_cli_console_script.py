"""The installed ``chatledger`` console script, run in a subprocess (issue 9, items 1, 2, 10, 11).

``CliRunner`` calls the typer app directly and hides what the real entry point
does with exit codes and usage errors, so every test here runs a script: the one
of this environment (fast), and the one of a fresh virtual environment holding
only the base install (no test extras, which could pull ``click`` in and hide a
missing dependency; built once per session, so ``slow``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from chatledger import ChatLedger

from .audit_helpers import RawDB
from .conftest import IN_CI, POSTGRES_CONNINFO
from .helpers import slow_except

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    "pyproject.toml", "README.md", "__init__.py", "__main__.py", "py.typed",
    "aio.py", "application", "domain", "projections", "infrastructure", "entrypoints", "adapters",
)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Install:
    python: Path
    script: Path  # the ``chatledger`` console script
    postgres: bool = True  # the [postgres] extra (psycopg) is installed


@pytest.fixture(scope="session")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """A venv with ``pip install <copy of the repo>``: the base dependencies only."""
    work = tmp_path_factory.mktemp("base-install")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if done.returncode != 0:
        message = f"pip install of the base package failed:\n{done.stderr[-3000:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Install(python, venv / "bin" / "chatledger", postgres=False)


@pytest.fixture(params=["this-env", pytest.param("base-install", marks=pytest.mark.slow)])
def cli(request: pytest.FixtureRequest) -> Install:
    if request.param == "base-install":
        install: Install = request.getfixturevalue("base_install")
        return install
    found = shutil.which("chatledger", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no chatledger console script next to {sys.executable}; pip install -e . first")
    return Install(Path(sys.executable), Path(found))


def run(
    install: Install,
    args: Sequence[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    module: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the script (or ``python -m chatledger``) in ``cwd``, with a clean environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base = {k: v for k, v in base.items() if not k.startswith("CHATLEDGER_")}
    base["COLUMNS"] = "500"  # long paths stay on one line
    command = [str(install.python), "-m", "chatledger"] if module else [str(install.script)]
    return subprocess.run(
        [*command, *args], cwd=cwd, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=120, check=False,
    )


def refused_without_the_postgres_extra(cli: Install, args: Sequence[str], cwd: Path) -> bool:
    """In the base install (no [postgres] extra), a PostgreSQL store is refused with one clear
    line that names the extra, nothing else; True when that was checked."""
    if cli.postgres:
        return False
    done = run(cli, args, cwd)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "chatledger[postgres]" in flat(done.stderr), done.stderr
    return True


def flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def no_files(folder: Path) -> list[str]:
    """The files in ``folder``, less the SQLite schema lock's side file
    (``<db>.lock``, made by whoever opened the database to create tables)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".db.lock"))


# ------------------------------------------------------------------ item 2: usage errors, --version


@pytest.mark.parametrize(
    "module", slow_except([pytest.param(False, id="script"), pytest.param(True, id="python-m")], "script")
)
def test_version(cli: Install, tmp_path: Path, module: bool) -> None:
    done = run(cli, ["--version"], tmp_path, module=module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"chatledger {version('chatledger')}"
    assert "Traceback" not in done.stderr


def test_python_dash_m_runs_the_same_command_line(cli: Install, tmp_path: Path) -> None:
    done = run(cli, ["sesion"], tmp_path, module=True)
    assert done.returncode == 2 and "No such command 'sesion'" in flat(done.stderr)
    assert "Traceback" not in done.stderr


USAGE_ERRORS = [
    pytest.param(["session", "show"], "Missing argument", id="missing-argument"),
    pytest.param(["sesion", "show"], "No such command 'sesion'", id="typo-command"),
    pytest.param(["worker", "--onse"], "No such option", id="typo-option"),  # wording varies by click
    pytest.param(["projections", "catch-up", "--batch-size", "0"], "'--batch-size'", id="batch-size-0"),
    pytest.param(
        ["session", "show", UNKNOWN, "--as-of", "yesterday"],
        "Invalid value for '--as-of': 'yesterday' is not an ISO-8601 time (e.g. 2026-03-02T14:03:00Z)",
        id="as-of-yesterday",
    ),
    pytest.param(
        ["export", "transcripts", "--out", "t.jsonl", "--since", "soon"],
        "Invalid value for '--since': 'soon' is not an ISO-8601 time",
        id="since-soon",
    ),
    pytest.param(["audit", "export", "--out", "a.jsonl"], "Give exactly one of --user or --session", id="export-no-subject"),
    pytest.param(["erase"], "Give exactly one of --user or --visitor", id="erase-no-subject"),
    pytest.param(["report", "--out", "no/such/dir/r.html"], "Invalid value for '--out'", id="out-folder-missing"),
]


@pytest.mark.parametrize(("args", "message"), slow_except(USAGE_ERRORS, "missing-argument", "typo-option"))
def test_usage_errors_show_usage_and_a_hint_and_exit_2(
    cli: Install, tmp_path: Path, args: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    ChatLedger.open(url).close()
    done = run(cli, args, tmp_path, env={"CHATLEDGER_DATABASE_URL": url})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    err = flat(done.stderr)
    assert "Usage: chatledger" in err and "--help' for help." in err
    assert message in err
    if "--onse" in args:
        assert "--onse" in err and "--once" in err  # the option given, and the one meant
    assert no_files(tmp_path) == ["chat.db"]  # a usage error opens nothing, writes nothing


# ------------------------------------------------------------------ item 1: exit codes


def tampered_store(url: str) -> UUID:
    with ChatLedger.open(url) as ledger:
        sid = ledger.receive("v-1", "hello").session_id
        ledger.reply(sid, "hi")
        ledger.receive("v-2", "someone else")
    raw = RawDB(url)
    state = json.loads(raw.state(sid, 2))
    state["occurred_at"] = "2025-12-31T23:59:00Z"
    raw.set_state(sid, 2, json.dumps(state).encode())
    return sid


@pytest.mark.slow
def test_audit_verify_exits_1_on_a_broken_chain(cli: Install, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    sid = tampered_store(url)
    done = run(cli, ["audit", "verify", "-d", url], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "altered event" in flat(done.stdout)
    assert "Traceback" not in done.stderr
    ok = run(cli, ["audit", "verify", "-d", url, "--session", str(sid)], tmp_path)
    assert ok.returncode == 1  # the altered session's own chain
    # The bundle records the break; the export exits 1 as well.
    out = tmp_path / "bundle.jsonl"
    export = run(cli, ["audit", "export", "--session", str(sid), "--out", str(out), "-d", url], tmp_path)
    assert export.returncode == 1 and out.exists()
    assert json.loads(out.read_text().splitlines()[-1])["ok"] is False


@pytest.mark.postgres
def test_ctrl_c_exits_130_without_a_traceback(cli: Install, tmp_path: Path, postgres_url: str) -> None:
    """Interrupted while it waits (for the schema lock another process holds)."""
    if refused_without_the_postgres_extra(cli, ["projections", "catch-up", "-d", postgres_url], tmp_path):
        return
    schema = postgres_url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"chatledger-ddl:{schema}",))
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        name = f"chatledger-ctrl-c-{schema}"  # libpq names the child's connections so
        base["PGAPPNAME"] = name
        child = subprocess.Popen(
            [str(cli.script), "projections", "catch-up", "-d", postgres_url],
            cwd=tmp_path, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                waiting = holder.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (name,),
                ).fetchone()
                if waiting and waiting[0]:
                    break
                assert child.poll() is None, child.communicate()
                time.sleep(0.1)
            else:
                pytest.fail("the command never waited for the lock")
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr


# ------------------------------------------------------------------ item 10: a missing SQLite file

READ_ONLY = [
    pytest.param(["session", "show", UNKNOWN], id="session-show"),
    pytest.param(["projections", "status"], id="projections-status"),
    pytest.param(["export", "transcripts", "--out", "OUT/t.jsonl"], id="export-transcripts"),
    pytest.param(["report", "--out", "OUT/r.html"], id="report"),
    pytest.param(["audit", "verify"], id="audit-verify"),
    pytest.param(["audit", "replay", UNKNOWN], id="audit-replay"),
    pytest.param(["audit", "export", "--session", UNKNOWN, "--out", "OUT/a.jsonl"], id="audit-export"),
    pytest.param(["events", "follow", "--once"], id="events-follow"),
    pytest.param(["events", "dead-letters", "--name", "crm"], id="events-dead-letters"),
    pytest.param(["erase", "--user", "u-1"], id="erase"),  # writes, but nothing to erase in no store
]


@pytest.mark.parametrize("args", slow_except(READ_ONLY, "audit-verify", "events-follow"))
def test_read_only_commands_refuse_a_missing_sqlite_file_and_create_nothing(
    cli: Install, tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "OUT").mkdir()
    args = [a.replace("OUT", str(tmp_path / "OUT")) for a in args]
    missing = tmp_path / "typo" / "deeper" / "chat.db"
    done = run(cli, [*args, "--database", f"sqlite:///{missing}"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: No SQLite database at {missing}")
    assert no_files(tmp_path) == ["OUT"] and no_files(tmp_path / "OUT") == []


@pytest.mark.parametrize("args", slow_except(READ_ONLY, "export-transcripts", "report", "erase"))
def test_read_only_commands_write_no_tables_into_a_sqlite_file_that_is_no_store(
    cli: Install, tmp_path: Path, args: list[str]
) -> None:
    """Another application's SQLite file (or an empty one) is not a chatledger store:
    read-only commands refuse it instead of creating tables in it and reporting OK."""
    import sqlite3

    (tmp_path / "OUT").mkdir()
    args = [a.replace("OUT", str(tmp_path / "OUT")) for a in args]
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (n INTEGER)")
    before = other.read_bytes()
    done = run(cli, [*args, "--database", f"sqlite:///{other}"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert flat(done.stderr).startswith(f"error: No chatledger store in the SQLite file {other}")
    assert other.read_bytes() == before and no_files(tmp_path / "OUT") == []


@pytest.mark.postgres
@pytest.mark.parametrize("args", READ_ONLY[:6])
def test_read_only_commands_refuse_a_postgres_schema_without_a_store_and_create_nothing(
    cli: Install, tmp_path: Path, postgres_url: str, args: list[str]
) -> None:
    """The PostgreSQL twin of a mistyped SQLite path: a mistyped ``?schema=``."""
    (tmp_path / "OUT").mkdir()
    args = [a.replace("OUT", str(tmp_path / "OUT")) for a in args]
    if refused_without_the_postgres_extra(cli, [*args, "--database", postgres_url], tmp_path):
        return
    schema = postgres_url.rsplit("schema=", 1)[1]
    done = run(cli, [*args, "--database", postgres_url], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert flat(done.stderr).startswith(f"error: No chatledger store in schema '{schema}'")
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    assert no_files(tmp_path / "OUT") == []
    with ChatLedger.open(postgres_url):  # once there is a store, they read it
        pass
    assert run(cli, ["audit", "verify", "--database", postgres_url], tmp_path).returncode == 0


@pytest.mark.slow
def test_the_setting_and_the_default_database_are_checked_too_and_memory_is_fine(
    cli: Install, tmp_path: Path
) -> None:
    missing = tmp_path / "typo" / "chat.db"
    done = run(cli, ["audit", "verify"], tmp_path, env={"CHATLEDGER_DATABASE_URL": f"sqlite:///{missing}"})
    assert done.returncode == 1 and done.stderr.startswith(f"error: No SQLite database at {missing}")
    done = run(cli, ["projections", "status"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: No SQLite database at {tmp_path / 'chatledger.db'}")
    assert no_files(tmp_path) == []
    memory = run(cli, ["projections", "status", "-d", "sqlite:///:memory:"], tmp_path)
    assert memory.returncode == 0, memory.stderr
    assert no_files(tmp_path) == []


# ------------------------------------------------------------------ item 11: a new user's view


@pytest.mark.slow
def test_exports_of_an_unknown_id_fail_and_leave_no_file(cli: Install, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        ledger.receive("v-1", "hello")
        ledger.link_identity("v-1", "u-1")
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["export", "transcripts", "--user", "nobody"], "No user 'nobody'", "t.jsonl"),
        (["export", "transcripts", "--session", UNKNOWN], f"No session {UNKNOWN}", "t.csv"),
        (["audit", "export", "--user", "nobody"], "No user 'nobody'", "a.jsonl"),
        (["audit", "export", "--session", UNKNOWN], f"No session {UNKNOWN}", "a.jsonl"),
    ]
    for args, message, name in cases:
        done = run(cli, [*args, "--out", str(out / name), "-d", url], tmp_path)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(f"error: {message}") and "Traceback" not in done.stderr
        assert no_files(out) == [], args  # no 0-byte file, no temporary file
    # A failed export leaves an earlier file as it was.
    (out / "a.jsonl").write_text("earlier\n")
    done = run(cli, ["audit", "export", "--user", "nobody", "--out", str(out / "a.jsonl"), "-d", url], tmp_path)
    assert done.returncode == 1 and (out / "a.jsonl").read_text() == "earlier\n"
    assert no_files(out) == ["a.jsonl"]
    # A known user still exports.
    done = run(cli, ["export", "transcripts", "--user", "u-1", "--out", str(out / "u.jsonl"), "-d", url], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "u.jsonl").read_text())["text"] == "hello"


def test_catch_up_shows_a_progress_bar_over_events(cli: Install, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        for i in range(5):
            turn = ledger.receive(f"v-{i}", "hello")
            ledger.reply(turn.session_id, "hi")
        head = ledger.recorder.max_notification_id()
        models = len(ledger.projector.projections)
    done = run(cli, ["projections", "catch-up", "-d", url, "--batch-size", "3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"^\d+/\d+$", done.stderr, re.MULTILINE)  # no bare counter lines
    assert "catch-up" in done.stderr and "━" in done.stderr and "events/s" in done.stderr
    assert f"{head}/{head}" in done.stderr  # log events, not events x read models
    assert f"/{head * models}" not in done.stderr


@pytest.mark.slow
def test_demo_honours_the_database_url_setting(cli: Install, tmp_path: Path) -> None:
    env_db, flag_db = tmp_path / "from-env.db", tmp_path / "from-flag.db"
    done = run(cli, ["demo"], tmp_path, env={"CHATLEDGER_DATABASE_URL": f"sqlite:///{env_db}"})
    assert done.returncode == 0, done.stderr
    assert env_db.exists() and not (tmp_path / "chatledger-demo.db").exists()
    assert f"--database sqlite:///{env_db}" in flat(done.stdout)
    done = run(
        cli, ["demo", "-d", f"sqlite:///{flag_db}"], tmp_path,
        env={"CHATLEDGER_DATABASE_URL": f"sqlite:///{env_db}"},
    )
    assert done.returncode == 0, done.stderr
    assert flag_db.exists() and not (tmp_path / "chatledger-demo.db").exists()


@pytest.mark.slow
def test_session_show_of_an_erased_session_prints_erased(cli: Install, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        sid = ledger.receive("v-1", "my card is 4242").session_id
        ledger.set_slot(sid, "card", "4242")
        ledger.reply(sid, "noted")
        other = ledger.receive("v-2", "keep [b]me[/b]").session_id  # printed, never read as markup
        ledger.set_slot(other, "kept", None)
        ledger.erase(visitor_id="v-1")
    done = run(cli, ["session", "show", str(sid), "-d", url], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "slots {'card': '[erased]'}" in done.stdout and "None}" not in done.stdout
    texts = [line.split(maxsplit=3)[3] for line in lines if re.match(r"\s+\d+ \d\d:\d\d (user|bot)", line)]
    assert texts == ["[erased]", "[erased]"]
    assert "4242" not in done.stdout
    kept = run(cli, ["session", "show", str(other), "-d", url], tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "slots {'kept': None}" in kept.stdout and "keep [b]me[/b]" in kept.stdout  # not erased


@pytest.mark.parametrize(
    "args",
    slow_except([
        pytest.param(["projections", "rebuild", "--all", "--batch-size", str(2**70)], id="rebuild-batch-2**70"),
        pytest.param(["projections", "catch-up", "--batch-size", str(2**63)], id="catch-up-batch-2**63"),
        pytest.param(["projections", "run", "--interval", "-1"], id="run-interval-negative"),
        pytest.param(["projections", "run", "--interval", "nan"], id="run-interval-nan"),
        pytest.param(["export", "transcripts", "--out", "t.jsonl", "--since", "0001-01-01T00:00:00+05:00"],
                     id="export-since-year-1"),
        pytest.param(["export", "transcripts", "--out", "t.jsonl", "--until", "9999-12-31T23:00:00-05:00"],
                     id="export-until-year-9999"),
    ], "catch-up-batch-2**63", "export-since-year-1"),
)
def test_out_of_range_values_are_refused_before_any_read_model_is_touched(
    cli: Install, tmp_path: Path, args: list[str]
) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        ledger.receive("v-1", "hello")
        ledger.catch_up()
        head = ledger.projection_status()[0].head
    done = run(cli, [*args, "-d", url], tmp_path)
    assert "Traceback" not in done.stderr
    if "--batch-size" in args:  # a usage error of the option
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Invalid value for '--batch-size'" in flat(done.stderr)
    else:
        flag = next(a for a in args if a in ("--interval", "--since", "--until"))
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.startswith(f"error: {flag}=")
    assert not (tmp_path / "t.jsonl").exists()
    with ChatLedger.open(url) as ledger:  # a rebuild refused dropped nothing
        assert all(row.position == head for row in ledger.projection_status())


def test_an_altered_ciphertext_is_one_error_line_not_a_traceback(cli: Install, tmp_path: Path) -> None:
    """A stored envelope edited by hand fails authentication when it is opened: the
    commands that open it say so on one line and exit 1 (verify reports the break)."""
    url = f"sqlite:///{tmp_path}/chat.db"
    with ChatLedger.open(url) as ledger:
        sid = ledger.receive("v-1", "a secret").session_id
    raw = RawDB(url)
    state = json.loads(raw.state(sid, 2))  # the MessageReceived
    sealed = state["text"]["$enc"]
    state["text"]["$enc"] = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    raw.set_state(sid, 2, json.dumps(state).encode())
    for args in (["session", "show", str(sid)], ["events", "follow", "--once", "--content"]):
        done = run(cli, [*args, "-d", url], tmp_path)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert flat(done.stderr).startswith(f"error: An encrypted field of {sid} version 2 failed authentication")
    assert run(cli, ["audit", "verify", "-d", url], tmp_path).returncode == 1


@pytest.mark.parametrize(
    "where", slow_except([pytest.param(w, id=w) for w in ("a-folder", "not-a-database", "under-a-file")], "not-a-database")
)
def test_a_sqlite_path_that_cannot_be_a_database_is_one_error_line(cli: Install, tmp_path: Path, where: str) -> None:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    path = {"a-folder": "a-folder", "not-a-database": "notes.txt", "under-a-file": "notes.txt/chat.db"}[where]
    for args in (["projections", "catch-up"], ["demo"]):
        done = run(cli, [*args, "-d", f"sqlite:///{tmp_path / path}"], tmp_path)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert flat(done.stderr).startswith(f"error: Cannot open the SQLite database at {tmp_path / path}")
    assert (tmp_path / "notes.txt").read_text() == "not a database\n" * 100


@pytest.mark.parametrize("days", slow_except([pytest.param(d, id=d) for d in ("nan", "1e300", "-1")], "nan"))
def test_worker_refuses_a_retention_that_is_no_number_of_days(cli: Install, tmp_path: Path, days: str) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    done = run(cli, ["worker", "--once", "--retention-days", days, "-d", url], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: Retention of ")
