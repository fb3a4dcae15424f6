"""A failed buffer write (disk full, I/O error, failed fsync, a high-water record that cannot commit):
the batch fails at once and whole, nothing of it is left in any file, its seqs are given again, appends are
refused promptly while the writer retries, and the store resumes by itself once the disk takes writes again.

Faults come from `tests.support.faulty_io.FaultyIO` (the writer's file-operation seam) on real files
(`test_buffer_fsync_failure.py` fails `os.fsync` itself, below the seam). The oracle is what each append was told: every acknowledged
tick is on disk exactly once after a restart, nothing else is, and seq runs 1..n without a gap.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import StorageError, StorageFullError, StorageWriteError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade
from tests.support.faulty_io import FaultyIO

LAST = StreamKey(CONTRACT, TickType.LAST)
QUOTES = StreamKey(CONTRACT, TickType.BID_ASK)
PROMPT = 2.0  # seconds: a failed append is answered at once, never after a hang


@pytest.fixture
def config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(
        data_root=tmp_path / "storage",
        fsync_interval_ms=1,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
        write_retry_seconds=0.02,
        write_retry_max_seconds=0.1,
    )


@pytest.fixture
def faulty(store: TickStore) -> Iterator[FaultyIO]:
    io = FaultyIO()
    store.buffer.io = io
    yield io
    io.disarm()


def buffer_files(config: StorageConfig) -> dict[str, bytes]:
    root = config.buffer_dir
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stored_seqs(config: StorageConfig, stream: StreamKey) -> list[int]:
    directory = config.buffer_dir / str(stream.contract_id) / stream.tick_type.value
    lines = [line for p in sorted(directory.glob("*.jsonl")) for line in p.read_bytes().splitlines()]
    return [orjson.loads(line)["seq"] for line in lines]


def open_buffer_files(config: StorageConfig) -> list[str]:
    """The files under the buffer directory this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(config.buffer_dir)):
            found.append(target)
    return found


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def trades(store: TickStore, n: int, first: int = 0, tick_type: str = "last") -> Any:
    make = trade if tick_type == "last" else quote
    ticks = [make(T0_NS + seconds(first + i), first + i) for i in range(n)]
    return await asyncio.wait_for(store.append_batch(CONTRACT, tick_type, ticks, source="test"), 10)


async def timed_failure(store: TickStore, n: int, first: int) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(StorageWriteError) as caught:
        await trades(store, n, first)
    return caught.value, time.monotonic() - started


FAULTS = [
    pytest.param("write", errno.ENOSPC, False, False, StorageFullError, id="write-enospc"),
    pytest.param("write", errno.ENOSPC, True, False, StorageFullError, id="half-written-enospc"),
    pytest.param("write", errno.EIO, True, True, StorageWriteError, id="half-written-eio-at-rotation"),
    pytest.param("fsync", errno.EIO, False, False, StorageWriteError, id="fsync-eio"),
    pytest.param("fsync", errno.ENOSPC, False, True, StorageFullError, id="fsync-enospc-at-rotation"),
    pytest.param("open", errno.ENOSPC, False, True, StorageFullError, id="new-segment-enospc"),
    pytest.param("dir", errno.EIO, False, True, StorageWriteError, id="new-segment-dir-eio"),
]


@pytest.mark.parametrize(("op", "err", "partial", "rotate", "expected"), FAULTS)
async def test_a_failed_write_fails_its_batch_at_once_leaves_nothing_and_the_store_recovers(
    store: TickStore,
    faulty: FaultyIO,
    config: StorageConfig,
    clock: ManualClock,
    op: str,
    err: int,
    partial: bool,
    rotate: bool,
    expected: type[StorageWriteError],
) -> None:
    await trades(store, 5)
    if rotate:
        clock.advance(15 * 60)  # the failing batch opens the next segment
    before = buffer_files(config)
    faulty.arm(op, err, partial=partial, times=None)  # the disk stays bad until disarmed

    error, seconds_taken = await timed_failure(store, 2000, 5)
    assert type(error) is expected and error.http_status == (507 if expected is StorageFullError else 503)
    assert error.details["errno"] == err and seconds_taken < PROMPT
    assert buffer_files(config) == before, "the failed batch left bytes (or a new segment) behind"
    assert store.buffer.pending_writes() == 0
    assert store.buffer.outage is not None and not store.write_status()[0]

    # Refused promptly while the disk is bad, whatever the writer is doing.
    error, seconds_taken = await timed_failure(store, 3, 5)
    assert type(error) is expected and seconds_taken < 0.5
    wait_until(lambda: store.buffer.stats.write_retries >= 2)
    assert store.buffer.outage is not None, "a retry must not end the outage while the disk still fails"

    faulty.disarm()
    wait_until(lambda: store.buffer.outage is None)
    assert store.write_status()[0]
    result = await trades(store, 3, 5)
    assert (result.first_seq, result.last_seq) == (6, 8), "the failed seqs are given again: no gap"
    store.close()
    reopened = TickStore(config, clock).open()
    try:
        assert stored_seqs(config, LAST) == list(range(1, 9))
        frame = await StorageQuery(reopened.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(100))
        assert list(frame["seq"]) == list(range(1, 9))
        assert (await trades(reopened, 1, 8)).first_seq == 9
    finally:
        reopened.close()
    assert verify(config).ok


async def test_a_group_spanning_streams_and_segments_is_cut_back_whole(tmp_path: Path, clock: ManualClock) -> None:
    config = StorageConfig(
        data_root=tmp_path / "root", fsync_interval_ms=50, write_retry_seconds=0.02, write_retry_max_seconds=0.05
    )
    store = TickStore(config, clock).open()
    io = FaultyIO()
    store.buffer.io = io
    try:
        await trades(store, 4)
        await trades(store, 4, tick_type="bid_ask")
        before = buffer_files(config)
        clock.advance(15 * 60 - 1)
        io.arm("fsync", errno.EIO, at=2)  # the group's second fsync: one segment was already fsynced
        futures = []
        for i in range(6):  # one group: 50 ms window, two streams, and the clock crosses a segment boundary
            for tick_type, make in (("last", trade), ("bid_ask", quote)):
                futures.append(store.buffer.submit(CONTRACT, tick_type, [make(T0_NS + seconds(10 + i), i)]))
            if i == 2:
                clock.advance(1)
        outcomes = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        assert all(isinstance(o, StorageWriteError) for o in outcomes), outcomes
        assert buffer_files(config) == before
        wait_until(lambda: store.buffer.outage is None)
        assert (await trades(store, 1, 50)).first_seq == 5
        assert (await trades(store, 1, 50, tick_type="bid_ask")).first_seq == 5
        assert len(open_buffer_files(config)) <= 2, "segments the failed group rotated away from stay open"
    finally:
        store.close()
    assert stored_seqs(config, LAST) == stored_seqs(config, QUOTES) == [1, 2, 3, 4, 5]


async def test_a_high_water_record_that_cannot_commit_fails_the_group(
    store: TickStore, config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await trades(store, 3)
    before = buffer_files(config)
    real = store.marks.acknowledge
    calls = {"n": 0}

    def full_once(marks: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("catalog update failed") from sqlite3.OperationalError("database or disk is full")
        real(marks)

    monkeypatch.setattr(store.marks, "acknowledge", full_once)
    error, _ = await timed_failure(store, 10, 3)
    assert isinstance(error, StorageFullError)
    assert buffer_files(config) == before, "data fsynced before the failed record must be cut back"
    wait_until(lambda: store.buffer.outage is None)
    assert (await trades(store, 2, 3)).first_seq == 4


async def test_closing_during_an_outage_returns_promptly(store: TickStore, faulty: FaultyIO) -> None:
    faulty.arm("write", times=None)
    await timed_failure(store, 5, 0)
    started = time.monotonic()
    await asyncio.to_thread(store.close)
    assert time.monotonic() - started < PROMPT


async def test_the_retry_backs_off_up_to_its_maximum(store: TickStore, faulty: FaultyIO) -> None:
    faulty.arm("write", times=None)
    await timed_failure(store, 5, 0)
    wait_until(lambda: store.buffer.stats.write_retries >= 4)
    outage = store.buffer.outage
    assert outage is not None and outage.next_retry_seconds == store.config.write_retry_max_seconds
    assert outage.error.details["retry_after_seconds"] == store.config.write_retry_max_seconds
    assert "STORAGE_FULL" in store.write_status()[1] and "No space left on device" in store.write_status()[1]
