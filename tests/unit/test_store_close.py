"""Closing a store while its workers still use the catalog (a scheduled job, a query) waits for them: a SQLite
connection closed under a running statement crashes the process (seen as a segfault of the test run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from ib_stream.clock import SystemClock
    from ib_stream.settings import StorageConfig
    from ib_stream.storage import TickStore

    store = TickStore(StorageConfig(data_root=Path(sys.argv[1])), SystemClock()).open()
    started = threading.Event()
    done = []

    def job():
        started.set()
        for _ in range(3000):
            store.index.archived_seqs()
            store.gaps.gaps()
        done.append(True)

    running = store.executor.submit(job)
    started.wait()
    store.close()
    running.result()
    print("finished" if done else "cut short")
    """
)


def test_close_waits_for_the_workers_using_the_catalog(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "storage")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "finished"
