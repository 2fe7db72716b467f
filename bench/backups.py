"""Cost of leaving the read models out of backups (issue 17): backup size, create and
restore time, against a plain copy of the store's file (the raw baseline), SQLite.

``python bench/backups.py [--sessions 1000] [--rounds 3]``

One store of ``--sessions`` sessions (4 messages and a slot each) is built once; each
round copies it with ``shutil.copyfile`` (baseline), runs ``create_backup`` (online copy,
read models dropped, ``VACUUM``) and ``restore_backup`` (copy, rebuild of the read
models from the log, verify). Reports min/median seconds and the ratio to the
baseline copy of the same round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from chatledger import ChatLedger
from chatledger.application.backups import create_backup, restore_backup


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    folder = tempfile.mkdtemp()
    try:
        db = f"{folder}/chat.db"
        with ChatLedger.open(f"sqlite:///{db}") as ledger:
            for i in range(args.sessions):
                sid = ledger.receive(f"v-{i}", f"hello, I am visitor {i}").session_id
                ledger.reply(sid, "hi, how can I help?")
                ledger.set_slot(sid, "name", f"Name {i}", scope="user")
                ledger.receive(f"v-{i}", "my order is late", session_id=sid)
                ledger.reply(sid, "let me check")
            ledger.catch_up()
        times: dict[str, list[float]] = {"copy": [], "create": [], "restore": [], "no rebuild": []}
        sizes: dict[str, int] = {}
        for n in range(args.rounds):
            started = time.perf_counter()
            shutil.copyfile(db, f"{folder}/plain-{n}.db")
            times["copy"].append(time.perf_counter() - started)
            sizes["store file"] = os.path.getsize(db)
            with ChatLedger.open(f"sqlite:///{db}") as ledger:
                started = time.perf_counter()
                create_backup(ledger, f"{folder}/b-{n}")
                times["create"].append(time.perf_counter() - started)
            sizes["backup"] = os.path.getsize(f"{folder}/b-{n}/store.sqlite")
            started = time.perf_counter()
            check = restore_backup(f"{folder}/b-{n}", f"sqlite:///{folder}/r-{n}/chat.db")
            times["restore"].append(time.perf_counter() - started)
            assert check.ok, check.problems
            started = time.perf_counter()
            restore_backup(f"{folder}/b-{n}", f"sqlite:///{folder}/s-{n}/chat.db", rebuild=False)
            times["no rebuild"].append(time.perf_counter() - started)
        for name, size in sizes.items():
            print(f"{name:10} {size / 1e6:8.2f} MB")
        for name, found in times.items():
            ratio = statistics.median(t / c for t, c in zip(found, times["copy"], strict=True))
            print(
                f"{name:10} min {min(found):7.3f} s  median {statistics.median(found):7.3f} s  "
                f"x{ratio:7.1f} the plain copy"
            )
    finally:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
