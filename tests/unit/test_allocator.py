"""Memory freed after a large answer goes back to the system (ib_stream.api.allocator), in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, os
    import pyarrow as pa
    import numpy as np
    from ib_stream.api.allocator import limit_arenas, release_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    limit_arenas()
    pool = pa.default_memory_pool().backend_name
    base = rss_mb()
    # many mid-sized Arrow buffers, as a query's columns are: freed, they stay in the allocator's free lists
    tables = [pa.table({"x": np.arange(i, i + 40_000, dtype=np.float64)}) for i in range(400)]
    held = rss_mb()
    keep = tables[-1]  # one buffer high in the heap: without a trim nothing below it is returned
    del tables
    freed = rss_mb()
    release_memory()
    print(json.dumps({"pool": pool, "base": base, "held": held, "freed": freed, "trimmed": rss_mb()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux-only")
def test_release_memory_gives_freed_arrow_memory_back() -> None:
    env = {"PATH": "/usr/bin:/bin"}  # no ARROW_DEFAULT_MEMORY_POOL from the caller's environment
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    figures = json.loads(out.stdout)
    assert figures["pool"] == "mimalloc"  # pyarrow's default on Linux: its freed pages are given back too
    grown = figures["held"] - figures["base"]
    assert grown > 100  # 400 x 320 kB of columns
    assert figures["freed"] - figures["base"] > grown * 0.9, figures  # freeing alone returns (almost) nothing
    assert figures["trimmed"] - figures["base"] < grown / 2, figures  # the trim returns most of it
