"""Backups that verify: ``chatledger backup create`` → ``restore`` → ``audit verify --anchor``,
through the real console script, on SQLite and PostgreSQL (issue 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from chatledger import ChatLedger, ConfigurationError, InvalidCommandError
from chatledger.application.backups import create_backup, restore_backup, verify_backup
from chatledger.domain.erasure import ERASED_TEXT
from chatledger.infrastructure.key_providers import new_master_key
from sqlalchemy.engine import make_url

from .audit_helpers import RawDB
from .conftest import drop_schema

SCRIPT = shutil.which("chatledger", path=str(Path(sys.executable).parent))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT is not None, "pip install -e . first"
    return subprocess.run(
        [SCRIPT, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def other_store(url: str, tmp_path: Path) -> str:
    """A second, empty store of the same backend (a new file, or a new schema)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path}/restored/chat.db"
    return parsed.update_query_dict({"schema": f"t_{uuid4().hex[:16]}"}).render_as_string(
        hide_password=False
    )


def fill(ledger: ChatLedger) -> list[object]:
    sessions = []
    for i in range(6):
        sid = ledger.receive(f"v-{i}", f"secret-{i} hello").session_id
        ledger.reply(sid, f"answer-{i}")
        ledger.set_slot(sid, "name", f"N{i}", scope="user")
        sessions.append(sid)
    ledger.link_identity("v-0", "user-0")
    ledger.catch_up()
    return sessions


def test_backup_restore_verify_round_trip_in_process(database_url: str, tmp_path: Path) -> None:
    with ChatLedger.open(database_url) as ledger:
        sessions = fill(ledger)
        manifest = create_backup(ledger, tmp_path / "b")
        ledger.receive("v-late", "after the backup")
    target = other_store(database_url, tmp_path)
    try:
        check = restore_backup(tmp_path / "b", target)
        assert check.ok, check.problems
        assert check.anchor == manifest.anchor and check.head == manifest.head == manifest.events
        with ChatLedger.open(target) as copy:
            assert copy.verify(anchor=manifest.anchor).ok
            assert [m.text for m in copy.transcript(sessions[0]).messages] == [
                "secret-0 hello",
                "answer-0",
            ]
            assert copy.current_session("v-late") is None
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]


@pytest.mark.slow
def test_backup_restore_verify_round_trip_with_the_console_script(
    database_url: str, tmp_path: Path
) -> None:
    with ChatLedger.open(database_url) as ledger:
        sessions = fill(ledger)
        seen = [[m.text for m in ledger.session(s).messages] for s in sessions]
    folder = tmp_path / "backup-1"
    made = cli("backup", "create", str(folder), "--database", database_url)
    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)
    assert manifest["anchor"] and manifest["events"] == manifest["head"] > 0
    assert json.loads((folder / "manifest.json").read_text())["anchor"] == manifest["anchor"]
    # Writes after the backup are not in it.
    with ChatLedger.open(database_url) as ledger:
        ledger.receive("v-late", "after the backup")
    target = other_store(database_url, tmp_path)
    try:
        restored = cli("backup", "restore", str(folder), "--database", target)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "OK" in restored.stdout and manifest["anchor"] in restored.stdout
        # The published anchor proves the restored store is the one backed up.
        checked = cli(
            "audit", "verify", "--anchor", manifest["anchor"], "--database", target, "--json"
        )
        assert checked.returncode == 0, checked.stdout
        report = json.loads(checked.stdout)
        assert report["ok"] and report["head_position"] == manifest["head"]
        with ChatLedger.open(target) as copy:
            assert [[m.text for m in copy.session(s).messages] for s in sessions] == seen
            assert copy.current_session("v-late") is None
            assert [m.text for m in copy.transcript(sessions[2]).messages] == seen[2]
            copy.receive("v-new", "the restored store takes writes")  # its id sequence moved on
            assert copy.verify().ok
        # Restoring over a store that holds events is refused; nothing is written.
        again = cli("backup", "restore", str(folder), "--database", target)
        assert again.returncode == 1 and (
            "exists" in again.stderr or "already holds" in again.stderr
        )
        # backup verify restores into a scratch store and removes it.
        verified = cli(
            "backup", "verify", str(folder), "--database", database_url,
            "--anchor", manifest["anchor"],
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        other = cli(
            "backup", "verify", str(folder), "--database", database_url, "--anchor", f"{'0' * 64}@1"
        )
        assert other.returncode == 1 and "anchor" in other.stdout
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]


def test_a_changed_backup_file_fails_verification(database_url: str, tmp_path: Path) -> None:
    with ChatLedger.open(database_url) as ledger:
        fill(ledger)
        create_backup(ledger, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    name = max(manifest["files"], key=lambda n: manifest["files"][n]["bytes"])
    path = tmp_path / "b" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    check = verify_backup(tmp_path / "b", database_url)
    assert not check.ok and any("changed file" in p for p in check.problems)
    target = other_store(database_url, tmp_path)
    refused = restore_backup(tmp_path / "b", target)  # nothing is loaded from a changed backup
    assert not refused.ok and refused.restored_to is None
    if target.startswith("sqlite"):
        assert not Path(make_url(target).database or "").exists()


def test_a_backup_whose_rows_were_edited_and_rehashed_fails_the_anchor(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Consistent digests are not enough: an edited copy with a fresh manifest digest
    still fails verify against the anchor the manifest recorded."""
    with ChatLedger.open(sqlite_url) as ledger:
        fill(ledger)
        manifest = create_backup(ledger, tmp_path / "b")
    copy = tmp_path / "b" / "store.sqlite"
    raw = RawDB(f"sqlite:///{copy}")
    raw.execute("DELETE FROM stored_events WHERE rowid = (SELECT max(rowid) FROM stored_events)")
    raw.execute(
        "DELETE FROM chatledger_event_hashes WHERE notification_id = (SELECT max(notification_id) FROM chatledger_event_hashes)"
    )
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    from chatledger.infrastructure.backups import file_digest

    data["files"]["store.sqlite"] = file_digest(copy)
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(data))
    check = verify_backup(tmp_path / "b")
    assert not check.ok and manifest.anchor is not None
    assert any("verify" in p or "head" in p for p in check.problems)


def test_backup_refusals(sqlite_url: str, tmp_path: Path) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive("v", "hi")
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        with pytest.raises(InvalidCommandError, match="not empty"):
            create_backup(ledger, tmp_path / "full")
    with pytest.raises(InvalidCommandError, match="not a finished chatledger backup"):
        restore_backup(tmp_path / "full", f"sqlite:///{tmp_path}/r.db")
    assert not (tmp_path / "r.db").exists()
    result = cli(
        "backup", "restore", str(tmp_path / "nope"), "--database", f"sqlite:///{tmp_path}/r.db"
    )
    assert result.returncode == 1 and "not a finished chatledger backup" in result.stderr


def test_a_restored_backup_of_before_an_erasure_keeps_the_erased_content_unreadable(
    database_url: str, tmp_path: Path
) -> None:
    """With the key vault, the erasure reaches the backup taken before it: restored, the
    erased visitor's content reads as erased (and verify names the forgotten key); the
    others' content reads as it was."""
    settings = {
        "CHATLEDGER_MASTER_KEY": new_master_key("k1"),
        "CHATLEDGER_KEY_VAULT": str(tmp_path / "vault"),
    }
    options = {
        "master_key": settings["CHATLEDGER_MASTER_KEY"],
        "key_vault": settings["CHATLEDGER_KEY_VAULT"],
        "key_vault_create": True,
    }
    with ChatLedger.open(database_url, **options) as ledger:
        a = ledger.receive("v-a", "alpha-secret").session_id
        b = ledger.receive("v-b", "bravo-secret").session_id
        create_backup(ledger, tmp_path / "before")
        ledger.erase(visitor_id="v-a")
    target = other_store(database_url, tmp_path)
    try:
        result = cli(
            "backup", "restore", str(tmp_path / "before"), "--database", target, env=settings
        )
        assert result.returncode == 1 and "forgotten key" in result.stdout
        with ChatLedger.open(target, **options) as copy:
            assert [m.text for m in copy.session(a).messages] == [ERASED_TEXT]
            assert [m.text for m in copy.session(b).messages] == ["bravo-secret"]
        found = RawDB(target).execute("SELECT count(*) FROM chatledger_keys")[0][0]
        assert found == 2  # the backup holds both rows: the vault is what forgot
        # Re-applying the erasure the backup predates puts it on record: verify is green again.
        with ChatLedger.open(target, **options) as copy:
            assert not copy.verify().ok
            with pytest.raises(ConfigurationError, match="Re-run it"):
                copy.receive("v-a", "back before the erasure is re-run")
            copy.erase(visitor_id="v-a")
            assert copy.receive("v-a", "a new key now").session_id
            assert copy.verify().ok
            assert [m.text for m in copy.session(b).messages] == ["bravo-secret"]
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]


def test_an_erasure_reaches_a_backup_taken_before_it(database_url: str, tmp_path: Path) -> None:
    """Master key + vault: back up, erase one visitor, restore the backup elsewhere. The
    erased visitor's content reads as erased through every API (the read models are not in
    the backup: the restore rebuilds them from the log), its plaintext is in no byte of the
    backup or of the restored store; the other visitor's content is intact."""
    options = {
        "master_key": new_master_key("k1"),
        "key_vault": str(tmp_path / "vault"),
        "key_vault_create": True,
    }
    with ChatLedger.open(database_url, **options) as ledger:
        a = ledger.receive("v-a", "alpha-secret-text").session_id
        ledger.reply(a, "alpha-reply-text")
        ledger.set_slot(a, "name", "alpha-slot-value", scope="user")
        ledger.link_identity("v-a", "user-a")
        b = ledger.receive("v-b", "bravo-secret-text").session_id
        ledger.set_slot(b, "name", "bravo-slot-value", scope="user")
        ledger.link_identity("v-b", "user-b")
        ledger.catch_up()
        create_backup(ledger, tmp_path / "before")
        ledger.erase(visitor_id="v-a")
    backup_bytes = b"".join(p.read_bytes() for p in (tmp_path / "before").iterdir())
    for secret in ("alpha-secret-text", "alpha-reply-text", "alpha-slot-value"):
        assert secret.encode() not in backup_bytes, secret
    target = other_store(database_url, tmp_path)
    try:
        check = restore_backup(tmp_path / "before", target, **options)
        assert any("forgotten key" in p for p in check.problems), check.problems
        dump = RawDB(target).dump()
        for secret in ("alpha-secret-text", "alpha-reply-text", "alpha-slot-value"):
            assert secret.encode() not in dump and secret.encode().hex().encode() not in dump
        with ChatLedger.open(target, **options) as copy:
            assert [m.text for m in copy.transcript(a).messages] == [ERASED_TEXT, ERASED_TEXT]
            assert [m.text for m in copy.session(a).messages] == [ERASED_TEXT, ERASED_TEXT]
            assert "alpha-slot-value" not in copy.memory(user_id="user-a").model_dump_json()
            assert [m.text for m in copy.transcript(b).messages] == ["bravo-secret-text"]
            assert copy.memory(user_id="user-b").display_name == "bravo-slot-value"
            user_b = [m.text for m in copy.transcript(user_id="user-b").messages]
            assert user_b == ["bravo-secret-text"]
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]


def test_a_tampered_key_row_is_a_reported_break_and_a_published_anchor_is_checked(
    database_url: str, tmp_path: Path
) -> None:
    """A wrapped key row altered in the backup is reported (``altered key``), not a crash;
    a restored event count that is not the manifest's is reported; and ``anchor=`` (one
    published elsewhere) is checked, not just the manifest next to the copy."""
    options = {
        "master_key": new_master_key("k1"),
        "key_vault": str(tmp_path / "vault"),
        "key_vault_create": True,
    }
    with ChatLedger.open(database_url, **options) as ledger:
        ledger.receive("v-a", "alpha").session_id
        ledger.receive("v-b", "bravo").session_id
        ledger.seal()
        published = ledger.anchor()  # published elsewhere, before the backup
        assert published is not None
        ledger.receive("v-c", "charlie")
        manifest = create_backup(ledger, tmp_path / "b")
    assert manifest.anchor != published
    good = verify_backup(tmp_path / "b", database_url, anchor=published, **options)
    assert good.ok, good.problems
    root, _, position = published.partition("@")
    forged = f"{'0' * 64}@{position}"
    wrong = verify_backup(tmp_path / "b", database_url, anchor=forged, **options)
    assert not wrong.ok and any("anchor" in p for p in wrong.problems)
    # A copy rewritten and re-sealed with a fresh manifest passes the manifest's own anchor,
    # but not the one published before.
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    data["anchor"] = forged
    path.write_text(json.dumps(data))
    assert not verify_backup(tmp_path / "b", database_url, **options).ok
    assert not verify_backup(tmp_path / "b", database_url, anchor=published, **options).ok
    target = other_store(database_url, tmp_path)
    try:
        restore_backup(tmp_path / "b", target, verify=False, **options)
        raw = RawDB(target)
        kid, stored = raw.execute("SELECT kid, key FROM chatledger_keys")[0]
        altered = bytearray(bytes(stored))
        altered[-1] ^= 0x01
        raw.execute("UPDATE chatledger_keys SET key=? WHERE kid=?", (bytes(altered), kid))
        with ChatLedger.open(target, **options) as copy:
            report = copy.verify()
        assert not report.ok and any(b.kind == "altered key" for b in report.breaks)
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]
