"""A fresh process that rebuilds sessions from a store and prints their states.

Reads lines ``URL<TAB>NOW_ISO<TAB>ID,ID,...`` on stdin; answers one JSON line
each: ``{session_id: state}``. Used by the replay property test.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from chatledger import ChatLedger, ManualClock


def main() -> None:
    for line in sys.stdin:
        url, now, ids = line.rstrip("\n").split("\t")
        clock = ManualClock(datetime.fromisoformat(now))
        with ChatLedger.open(url, clock=clock, cache_size=0) as ledger:
            states = {
                sid: ledger.session(sid).model_dump(mode="json") for sid in ids.split(",") if sid
            }
        print(json.dumps(states), flush=True)


if __name__ == "__main__":
    main()
