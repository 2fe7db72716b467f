"""Keys outside the database: content keys wrapped by a master key provider (issue 17)."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from chatledger import ChatLedger, ConfigurationError, ManualClock, SessionPolicy
from chatledger.application.key_management import KeyStatus, key_status, rotate_keys
from chatledger.domain.erasure import ERASED_TEXT
from chatledger.infrastructure.key_providers import (
    LEGACY_PREFIX,
    MASTER_PREFIX,
    VAULT_PREFIX,
    MasterKeyProvider,
    MasterKeys,
    VaultKeyProvider,
    new_master_key,
)
from chatledger.infrastructure.wrapped_keys import open_wrapped
from chatledger.infrastructure.ledger_recorders import as_ledger_recorder

from .audit_helpers import RawDB
from .fixtures import store_story

K1 = new_master_key("k1")
K2 = new_master_key("k2")


def stored_keys(url: str) -> dict[str, tuple[str, bytes]]:
    """``kid -> (visitor, stored bytes)`` of ``chatledger_keys``, by raw SQL (what a backup holds)."""
    rows = RawDB(url).execute("SELECT kid, visitor_id, key FROM chatledger_keys")
    return {r[0]: (r[1], bytes(r[2])) for r in rows}


def texts(ledger: ChatLedger, session_id: Any) -> list[str]:
    return [m.text for m in ledger.session(session_id).messages]


def opener(url: str, **settings: Any) -> Any:
    """The key codec of a ledger opened with ``settings`` (its recorder)."""
    ledger = ChatLedger.open(url, **settings)
    recorder = as_ledger_recorder(ledger.recorder)
    assert recorder is not None
    return ledger, recorder


def test_content_keys_are_stored_wrapped_and_need_the_master_key(
    database_url: str, tmp_path: Path
) -> None:
    vault = str(tmp_path / "keys.vault")
    with ChatLedger.open(database_url, master_key=K1, key_vault=vault, key_vault_create=True) as ledger:
        sid = ledger.receive("v-1", "wrapped-secret hello").session_id
        ledger.reply(sid, "hi there")
    rows = stored_keys(database_url)
    assert len(rows) == 1
    ((_, stored),) = rows.values()
    assert stored.startswith(VAULT_PREFIX) and len(stored) > 32
    # Without the master key the store does not open its content (a clear error, no plaintext).
    with (
        ChatLedger.open(database_url) as bare,
        pytest.raises(ConfigurationError, match="CHATLEDGER_MASTER_KEY"),
    ):
        bare.session(sid)
    # With another master key the vault does not open either.
    with (
        ChatLedger.open(database_url, master_key=K2, key_vault=vault) as wrong,
        pytest.raises(ConfigurationError, match="'k1'"),
    ):
        wrong.session(sid)
    with ChatLedger.open(database_url, master_key=K1, key_vault=vault) as again:
        assert texts(again, sid) == ["wrapped-secret hello", "hi there"]
        assert again.verify().ok
    assert "k1:" not in repr(MasterKeys(K1)) and K1.split(":")[1] not in repr(MasterKeys(K1))


def test_a_backup_taken_before_an_erasure_cannot_open_the_erased_content(
    database_url: str, tmp_path: Path
) -> None:
    """The key rows a backup holds (copied before the erasure) open the other visitor's
    key, but no longer the erased one's: the vault forgot its wrapping key."""
    vault = str(tmp_path / "keys.vault")
    ledger, recorder = opener(database_url, master_key=K1, key_vault=vault, key_vault_create=True)
    with ledger:
        a = ledger.receive("v-a", "alpha-secret address").session_id
        ledger.link_identity("v-a", "user-a")
        b = ledger.receive("v-b", "bravo-secret hello").session_id
        backup = stored_keys(database_url)  # the key table as a backup taken now holds it
        kid_a = next(k for k, (v, _) in backup.items() if v == "v-a")
        kid_b = next(k for k, (v, _) in backup.items() if v == "v-b")
        before = recorder.open_keys({k: s for k, (_, s) in backup.items()})
        assert set(before) == {kid_a, kid_b}
        receipt = ledger.erase(user_id="user-a")
        assert kid_a in receipt.key_ids
        # The backup's rows with today's provider: the erased key is gone for good.
        after = recorder.open_keys({k: s for k, (_, s) in backup.items()})
        assert set(after) == {kid_b} and after[kid_b] == before[kid_b]
        assert texts(ledger, a) == [ERASED_TEXT]
        assert texts(ledger, b) == ["bravo-secret hello"]
        assert ledger.verify().ok
    # A fresh process with the same vault: the same.
    fresh, recorder2 = opener(database_url, master_key=K1, key_vault=vault)
    with fresh:
        assert set(recorder2.open_keys({k: s for k, (_, s) in backup.items()})) == {kid_b}


def test_the_master_key_alone_cannot_forget(tmp_path: Path) -> None:
    """Without a vault, a backup taken before an erasure still opens with the master key
    (documented in docs/compliance.md): the provider has nothing to forget."""
    provider = MasterKeyProvider(MasterKeys(K1))
    wrapped = provider.wrap({"kid-1": b"\x07" * 32})
    provider.forget(["kid-1"])
    assert provider.unwrap(wrapped) == {"kid-1": b"\x07" * 32}
    vault = VaultKeyProvider(MasterKeys(K1), tmp_path / "v", create=True)
    wrapped = vault.wrap({"kid-1": b"\x07" * 32})
    vault.forget(["kid-1"])
    assert vault.unwrap(wrapped) == {}
    assert b"\x07" * 32 not in (tmp_path / "v").read_bytes()


@pytest.mark.parametrize("with_vault", [True, False], ids=["vault", "master-key-only"])
def test_master_key_rotation_keeps_every_event_readable(
    database_url: str, tmp_path: Path, with_vault: bool
) -> None:
    vault: dict[str, Any] = (
        {"key_vault": str(tmp_path / "keys.vault"), "key_vault_create": True} if with_vault else {}
    )
    with ChatLedger.open(database_url, master_key=K1, **vault) as ledger:
        sessions = [ledger.receive(f"v-{i}", f"secret-{i} hello").session_id for i in range(5)]
        ledger.set_slot(sessions[0], "name", "Ana", scope="user")
        ledger.catch_up()
        seen = [texts(ledger, s) for s in sessions]
        ledger.seal()
        anchor = ledger.anchor()
        assert anchor is not None
    before = stored_keys(database_url)
    # The new master key first, the old one still listed: rotate.
    with ChatLedger.open(database_url, master_key=f"{K2},{K1}", **vault) as ledger:
        done = rotate_keys(ledger)
        assert done.keys_wrapped == (0 if with_vault else 5)
        assert done.provider_rewrapped == (5 if with_vault else 0)
    after = stored_keys(database_url)
    assert set(after) == set(before)
    if not with_vault:
        assert all(after[k][1] != before[k][1] for k in after)
    # The old master key removed: everything still reads, verifies, replays.
    with ChatLedger.open(database_url, master_key=K2, **vault) as ledger:
        assert [texts(ledger, s) for s in sessions] == seen
        assert ledger.session(sessions[0]).slots["name"] == "Ana"
        assert ledger.verify(anchor=anchor).ok
        assert [e.text for e in ledger.transcript(sessions[1]).messages] == ["secret-1 hello"]
        sid = ledger.receive("v-new", "after rotation").session_id
        assert texts(ledger, sid) == ["after rotation"]
        assert rotate_keys(ledger).keys_wrapped == 0  # nothing left to do


def test_rotation_wraps_the_keys_of_an_old_store(tmp_path: Path) -> None:
    """A 0.4.0 store's keys are stored unwrapped; it opens with a master key configured,
    and ``keys rotate`` wraps them: it then reads exactly as before and verifies."""
    store = Path(__file__).resolve().parent / "fixtures" / "stores" / "0.4.0"
    recorded = json.loads((store / "expected.json").read_text())
    db = tmp_path / "chatledger.sqlite"
    shutil.copyfile(store / "chatledger.sqlite", db)
    url = f"sqlite:///{db}"
    clock = ManualClock(datetime.fromisoformat(recorded["clock"]))
    policy = SessionPolicy(**store_story.POLICY)  # type: ignore[arg-type]
    settings = {"master_key": K1, "key_vault": str(tmp_path / "vault"), "key_vault_create": True}
    assert all(len(s) == 32 for _, s in stored_keys(url).values())
    with ChatLedger.open(url, policy=policy, clock=clock, **settings) as ledger:
        seen = store_story.observe(ledger, recorded["ids"])
        result = rotate_keys(ledger)
    assert result.keys_wrapped == len(stored_keys(url)) > 0
    assert all(s.startswith(VAULT_PREFIX) for _, s in stored_keys(url).values())
    with ChatLedger.open(url, policy=policy, clock=clock, **settings) as ledger:
        assert store_story.observe(ledger, recorded["ids"]) == seen
        assert seen["verify_ok"] is True


def test_bad_master_key_settings_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    for bad in ("k1", "k1:abc", ":" + K1.split(":")[1], "k-1:" + K1.split(":")[1]):
        with pytest.raises(ConfigurationError, match="master_key"):
            ChatLedger.open(url, master_key=bad)
    with pytest.raises(ConfigurationError, match="needs master_key"):
        ChatLedger.open(url, key_vault=str(tmp_path / "v"))
    key_file = tmp_path / "master.key"
    key_file.write_text(K1 + "\n")
    with ChatLedger.open(url, master_key_file=str(key_file)) as ledger:
        ledger.receive("v", "from a key file")
    assert stored_keys(url).popitem()[1][1].startswith(MASTER_PREFIX)


def test_adding_a_vault_to_a_master_key_store_keeps_it_readable_and_rotate_moves_the_keys(
    database_url: str, tmp_path: Path
) -> None:
    """Each provider marks its rows with its own prefix: a store wrapped by the master key
    alone still reads once a vault is configured, and ``rotate`` moves its keys into the
    vault, after which an erasure reaches a copy of the key table taken before it."""
    with ChatLedger.open(database_url, master_key=K1) as ledger:
        a = ledger.receive("v-a", "alpha-secret").session_id
        b = ledger.receive("v-b", "bravo-secret").session_id
    assert all(s.startswith(MASTER_PREFIX) for _, s in stored_keys(database_url).values())
    vault = {"key_vault": str(tmp_path / "keys.vault"), "key_vault_create": True}
    ledger, recorder = opener(database_url, master_key=K1, **vault)
    with ledger:
        assert texts(ledger, a) == ["alpha-secret"] and texts(ledger, b) == ["bravo-secret"]
        assert ledger.verify().ok
        done = rotate_keys(ledger)
        assert done.keys_wrapped == 2
        rows = stored_keys(database_url)
        assert all(s.startswith(VAULT_PREFIX) for _, s in rows.values())
        assert texts(ledger, a) == ["alpha-secret"]
        ledger.erase(visitor_id="v-a")
        assert set(recorder.open_keys({k: s for k, (_, s) in rows.items()})) == {
            k for k, (v, _) in rows.items() if v == "v-b"
        }
        assert texts(ledger, b) == ["bravo-secret"]
        assert ledger.verify().ok
    # Master key only again: the vault's rows are refused with a clear error, not read as erased.
    with (
        ChatLedger.open(database_url, master_key=K1) as bare,
        pytest.raises(ConfigurationError, match="CHATLEDGER_KEY_VAULT"),
    ):
        bare.session(b)


def test_rows_of_0_5_with_the_shared_prefix_open_with_the_provider_that_wrote_them(
    tmp_path: Path,
) -> None:
    """Before each provider had its own prefix both wrote ``clw1:``: a vault row is 60 bytes
    after the prefix, a master-key row longer; each opens through its own provider."""
    master = MasterKeys(K1)
    key = b"\x05" * 32
    master_row = LEGACY_PREFIX + MasterKeyProvider(master).wrap({"kid-m": key})["kid-m"]
    vault = VaultKeyProvider(master, tmp_path / "v", create=True)
    vault_row = LEGACY_PREFIX + vault.wrap({"kid-v": key})["kid-v"]
    assert open_wrapped(vault, {"kid-m": master_row, "kid-v": vault_row}) == {
        "kid-m": key,
        "kid-v": key,
    }
    assert open_wrapped(MasterKeyProvider(master), {"kid-m": master_row}) == {"kid-m": key}
    with pytest.raises(ConfigurationError, match="CHATLEDGER_KEY_VAULT"):
        open_wrapped(MasterKeyProvider(master), {"kid-v": vault_row})
    vault.close()


def test_a_mistyped_vault_path_is_refused_not_created(sqlite_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "typo.vault"
    with pytest.raises(ConfigurationError, match="does not exist"):
        ChatLedger.open(sqlite_url, master_key=K1, key_vault=str(missing))
    assert not missing.exists()
    with ChatLedger.open(sqlite_url, master_key=K1, key_vault=str(missing), key_vault_create=True) as ledger:
        ledger.receive("v", "hi")
    assert missing.exists()
    with ChatLedger.open(sqlite_url, master_key=K1, key_vault=str(missing)) as ledger:
        assert ledger.current_session("v") is not None


@pytest.mark.slow
def test_content_keys_rotate_moves_a_master_key_store_into_a_new_vault_only_when_asked(
    tmp_path: Path,
) -> None:
    from .test_backups import cli

    url = f"sqlite:///{tmp_path}/c.db"
    with ChatLedger.open(url, master_key=K1) as ledger:
        sid = ledger.receive("v", "kept-secret").session_id
    env = {"CHATLEDGER_MASTER_KEY": K1, "CHATLEDGER_KEY_VAULT": str(tmp_path / "new.vault")}
    refused = cli("content-keys", "rotate", "--database", url, env=env)
    assert refused.returncode == 1 and "does not exist" in refused.stderr
    assert not (tmp_path / "new.vault").exists()
    done = cli("content-keys", "rotate", "--create-vault", "--database", url, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["keys_wrapped"] == 1
    assert all(s.startswith(VAULT_PREFIX) for _, s in stored_keys(url).values())
    with ChatLedger.open(url, master_key=K1, key_vault=env["CHATLEDGER_KEY_VAULT"]) as ledger:
        assert texts(ledger, sid) == ["kept-secret"]


def test_two_concurrent_rotations_lose_no_key(database_url: str, tmp_path: Path) -> None:
    """Two processes' ``content-keys rotate`` at once, moving a master-key store into the
    vault: each wraps every key anew, one compare-and-set per row wins. The vault never
    replaces a kid's wrapping key, so whichever won, the row opens; every key still opens."""
    with ChatLedger.open(database_url, master_key=K1) as ledger:
        sessions = [ledger.receive(f"v-{i}", f"secret-{i}").session_id for i in range(120)]
    vault = {"key_vault": str(tmp_path / "keys.vault"), "key_vault_create": True}
    ledgers = [ChatLedger.open(database_url, master_key=K1, **vault) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def rotate(ledger: ChatLedger) -> None:
        start.wait()
        try:
            rotate_keys(ledger)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=rotate, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ledger in ledgers:
        ledger.close()
    assert not errors
    assert all(s.startswith(VAULT_PREFIX) for _, s in stored_keys(database_url).values())
    ledger, recorder = opener(database_url, master_key=K1, **vault)
    with ledger:
        rows = stored_keys(database_url)
        assert set(recorder.open_keys({k: s for k, (_, s) in rows.items()})) == set(rows)
        assert [texts(ledger, s) for s in sessions] == [[f"secret-{i}"] for i in range(120)]
        assert ledger.verify().ok


def test_a_process_without_the_master_key_stores_no_raw_key_in_a_wrapped_store(
    database_url: str,
) -> None:
    with ChatLedger.open(database_url) as bare:
        bare.receive("v-old", "stored before any master key")
    with ChatLedger.open(database_url, master_key=K1) as ledger:
        ledger.receive("v-new", "a wrapped key")
        assert not key_status(ledger).ok  # the old raw key: rotate has not run
        assert key_status(ledger) == KeyStatus(wrapped=1, unwrapped=1)
        rotate_keys(ledger)
        assert key_status(ledger).ok
    before = stored_keys(database_url)
    with ChatLedger.open(database_url) as bare:
        with pytest.raises(ConfigurationError, match="unwrapped"):
            bare.receive("v-third", "would store a raw key")
        assert bare.current_session("v-third") is None
    assert stored_keys(database_url) == before


def test_rotation_leaves_no_raw_key_bytes_in_the_sqlite_files(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    with ChatLedger.open(url) as bare:
        bare.receive("v-old", "stored before any master key")
    ((_, raw),) = stored_keys(url).values()
    with ChatLedger.open(url, master_key=K1) as ledger:
        rotate_keys(ledger)
        dump = RawDB(url).dump()
        assert raw not in dump
