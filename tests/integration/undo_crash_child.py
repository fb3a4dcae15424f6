"""Child process of the undo crash test: undo imports on a data root until it is killed (`kill -9`).

    python -m tests.integration.undo_crash_child <data_root> <clock_ns> <import_id> [<import_id> ...]

It opens a `TickStore` at a `ManualClock` standing at `clock_ns` and undoes the imports one after the other.
Before each catalog swap of a rewritten partition and each buffer segment rewrite it prints a marker
(`M commit <n>` / `M segment <n>`, after the new file is written) and pauses 30 ms, so the parent can aim its
kill between writing a file and committing it; `M undone <id>` follows each finished undo.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ib_stream.clock import ManualClock
from ib_stream.importers.undo import undo_import
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store import rewrite
from ib_stream.store.index import PartitionIndex

PAUSE_SECONDS = 0.03
_markers = {"commit": 0, "segment": 0}


def _mark(kind: str) -> None:
    _markers[kind] += 1
    print(f"M {kind} {_markers[kind]}", flush=True)
    time.sleep(PAUSE_SECONDS)


def main(data_root: Path, clock_ns: int, import_ids: list[int]) -> None:
    replace, rewrite_segment = PartitionIndex.replace, rewrite._rewrite_segment

    def paused_replace(self: PartitionIndex, *args: Any) -> None:
        _mark("commit")
        replace(self, *args)

    def paused_segment(*args: Any) -> int:
        _mark("segment")
        return rewrite_segment(*args)

    PartitionIndex.replace = paused_replace  # type: ignore[method-assign]
    rewrite._rewrite_segment = paused_segment
    config = StorageConfig(data_root=data_root, fsync_interval_ms=0, compaction_delay_seconds=0,
                           retired_file_grace_seconds=0)  # fmt: skip
    with TickStore(config, ManualClock(clock_ns)) as store:
        print("ready", flush=True)
        for import_id in import_ids:
            undo_import(store, import_id)
            print(f"M undone {import_id}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), [int(a) for a in sys.argv[3:]])
