"""A dying disk below every seam: `os.fsync` itself fails for a buffer segment. The batch fails at once, its bytes
are cut back, its seqs are given again, and the writer comes back by itself (with the default retry settings).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ib_stream.clock import ManualClock
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from tests.conftest import CONTRACT, T0_NS, seconds, trade


def buffer_files(config: StorageConfig) -> dict[str, bytes]:
    root = config.buffer_dir
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stored_seqs(config: StorageConfig) -> list[int]:
    directory = config.buffer_dir / str(CONTRACT) / "last"
    return [
        orjson.loads(line)["seq"] for p in sorted(directory.glob("*.jsonl")) for line in p.read_bytes().splitlines()
    ]


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def trades(store: TickStore, n: int, first: int = 0) -> Any:
    ticks = [trade(T0_NS + seconds(first + i), first + i) for i in range(n)]
    return await asyncio.wait_for(store.append_batch(CONTRACT, "last", ticks, source="test"), 10)


async def test_a_failed_fsync_below_the_seam_is_cut_back_and_the_writer_recovers(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No seam and default settings: `os.fsync` itself fails once for a buffer segment, as a dying disk's would.
    config = StorageConfig(data_root=tmp_path / "root", fsync_interval_ms=1)
    store = TickStore(config, clock).open()
    try:
        await _fsync_fails_once(store, config, monkeypatch)
    finally:
        store.close()


async def _fsync_fails_once(store: TickStore, config: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    await trades(store, 3)
    before = buffer_files(config)
    real_fsync = os.fsync
    failed: list[int] = []

    def fsync(fd: int) -> None:
        if not failed and str(config.buffer_dir) in os.readlink(f"/proc/self/fd/{fd}"):
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError):
        await trades(store, 5, 3)
    assert failed and store.buffer.pending_writes() == 0
    wait_until(lambda: store.buffer.outage is None and store.buffer.running)
    assert buffer_files(config) == before
    assert (await trades(store, 2, 3)).first_seq == 4, "the writer must come back, with the failed seqs unused"
    assert stored_seqs(config) == [1, 2, 3, 4, 5]
