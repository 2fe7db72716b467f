"""The key path's smaller review findings (issue 17): an erasure whose key provider fails
still finishes its cleanup; the vault's files are owner-only; the PostgreSQL insert
function pins its search_path."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from chatledger import ChatLedger
from chatledger.application.erasure import ErasureIncompleteError
from chatledger.application.key_management import rotate_keys
from chatledger.domain.erasure import ERASED_TEXT
from chatledger.infrastructure.key_providers import VaultKeyProvider, new_master_key
from chatledger.infrastructure.ledger_recorders import as_ledger_recorder

from .audit_helpers import RawDB

K1 = new_master_key("k1")


class FailingForget(VaultKeyProvider):
    """A vault that is unreachable when the erasure asks it to forget."""

    failing = True

    def forget(self, kids: object) -> None:
        if self.failing:
            raise OSError("the vault's file system is gone")
        super().forget(kids)  # type: ignore[arg-type]


def test_an_erasure_whose_vault_fails_finishes_its_cleanup_and_rotate_repeats_the_forget(
    database_url: str, tmp_path: Path
) -> None:
    options = {"master_key": K1, "key_vault": str(tmp_path / "vault"), "key_vault_create": True}
    with ChatLedger.open(database_url, **options) as ledger:
        sid = ledger.receive("v-a", "alpha-secret").session_id
        ledger.catch_up()
        recorder = as_ledger_recorder(ledger.recorder)
        assert recorder is not None and isinstance(recorder.key_provider, VaultKeyProvider)
        recorder.key_provider.close()
        failing = FailingForget(recorder.key_provider.master, options["key_vault"])
        recorder.key_provider = failing
        rows = RawDB(database_url).execute("SELECT kid, key FROM chatledger_keys")
        backup = {r[0]: bytes(r[1]) for r in rows}
        with pytest.raises(ErasureIncompleteError, match="content-keys rotate") as raised:
            ledger.erase(visitor_id="v-a")
        assert raised.value.receipt.key_ids == tuple(backup)
        # The cleanup ran: read models blanked, this process's caches forgot the key.
        assert [m.text for m in ledger.transcript(sid).messages] == [ERASED_TEXT]
        assert [m.text for m in ledger.session(sid).messages] == [ERASED_TEXT]
        assert set(recorder.open_keys(backup)) == set(backup)  # the vault still holds it
        failing.failing = False
        assert rotate_keys(ledger).keys_forgotten == 1
        assert recorder.open_keys(backup) == {}
        assert ledger.verify().ok


def test_the_vault_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.vault"
    with ChatLedger.open(
        f"sqlite:///{tmp_path}/c.db", master_key=K1, key_vault=str(path), key_vault_create=True
    ) as ledger:
        ledger.receive("v", "hi")
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert len(files) == 3
        assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


@pytest.mark.postgres
def test_the_postgres_insert_function_pins_its_search_path(postgres_url: str) -> None:
    with ChatLedger.open(postgres_url) as ledger:
        ledger.receive("v", "hi")
    rows = RawDB(postgres_url).execute(
        "SELECT p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'chatledger_insert_events_v1' AND n.nspname = current_schema()"
    )
    assert rows and rows[0][0] == ["search_path=pg_catalog, pg_temp"]
