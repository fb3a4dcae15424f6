"""Buffer segments that vanish (an operator's `rm`, a bad disk): acknowledged seqs are never given again, and
the range that is on no disk any more is reported once — logged, a `storage_lost` gap in the ledger with its
time span and seqs, a `lost` problem in `verify` — whether it is found at start-up, by the buffer check of the
maintenance / archive jobs, or by archival. An open segment removed under the writer is copied back from the
open file, losing nothing.

Each test writes three 15-minute segments of ten trades (seqs 1-10, 11-20, 21-30) and removes one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.gaps import GapReason
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, T0_NS, seconds, trade

LAST = StreamKey(CONTRACT, TickType.LAST)
SEGMENTS = ("20250110T1400.jsonl", "20250110T1415.jsonl", "20250110T1430.jsonl")


def segment(config: StorageConfig, name: str) -> Path:
    return config.buffer_dir / str(CONTRACT) / "last" / name


async def three_segments(store: TickStore, clock: ManualClock) -> None:
    for k in range(3):
        base = clock.now_ns()
        await store.append_batch(CONTRACT, "last", [trade(base + seconds(i), 10 * k + i) for i in range(10)])
        if k < 2:
            clock.advance(15 * 60)


async def seqs(store: TickStore) -> list[int]:
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(7200))
    return [int(s) for s in frame["seq"]]


def lost_gaps(store: TickStore) -> list[Any]:
    return [g for g in store.gaps.gaps(CONTRACT, tick_type=TickType.LAST) if g.reason == GapReason.STORAGE_LOST]


def lost_problems(config: StorageConfig) -> list[str]:
    return [p.detail for p in verify(config).problems if p.kind == "lost"]


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def test_newest_segment_removed_while_stopped_its_seqs_are_reported_and_never_reused(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    store.close()
    segment(config, SEGMENTS[2]).unlink()
    assert any("21..30" in d and "not recorded yet" in d for d in lost_problems(config))

    store = TickStore(config, clock).open()
    try:
        result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns() + seconds(20), 99)])
        assert result.first_seq == 31, "seqs 21-30 were acknowledged: they must never be given to other ticks"
        assert await seqs(store) == [*range(1, 21), 31]
        (gap,) = lost_gaps(store)
        assert "seqs 21..30 (10 ticks)" in gap.detail and "start-up" in gap.detail
        # From the last tick still held (seq 20, 14:15:09) to the last one acknowledged (seq 30, 14:30:09).
        assert (gap.start_ns, gap.end_ns) == (T0_NS + seconds(15 * 60 + 9), T0_NS + seconds(30 * 60 + 9))
        assert [(r.first_seq, r.last_seq, r.gap_id) for r in store.marks.lost()] == [(21, 30, gap.id)]
        assert store.buffer.stats.lost_ticks == 10
    finally:
        store.close()
    problems = lost_problems(config)
    assert len(problems) == 1 and "21..30" in problems[0] and "not recorded yet" not in problems[0]

    with TickStore(config, clock) as again:  # found again at the next start, recorded once
        assert len(lost_gaps(again)) == 1
        assert (await again.append_batch(CONTRACT, "last", [trade(clock.now_ns(), 1)])).first_seq == 32


async def test_a_middle_segment_removed_while_stopped_is_reported_once_even_after_archival(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    store.close()
    segment(config, SEGMENTS[1]).unlink()
    store = TickStore(config, clock).open()
    try:
        assert await seqs(store) == [*range(1, 11), *range(21, 31)]
        (gap,) = lost_gaps(store)
        assert "seqs 11..20" in gap.detail
        assert (gap.start_ns, gap.end_ns) == (T0_NS + seconds(9), T0_NS + seconds(30 * 60))
        clock.advance(3600)
        store.run_archival()  # the watermark passes the hole: already recorded, not recorded again
        assert store.index.archived_seqs()[LAST] == 30
        assert len(lost_gaps(store)) == 1
        assert (await store.append_batch(CONTRACT, "last", [trade(clock.now_ns(), 1)])).first_seq == 31
        assert await seqs(store) == [*range(1, 11), *range(21, 32)]
    finally:
        store.close()
    assert len(lost_problems(config)) == 1


async def test_a_sealed_segment_removed_while_serving_is_found_by_the_maintenance_check(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    segment(config, SEGMENTS[1]).unlink()
    assert store.run_maintenance() == 0
    (gap,) = lost_gaps(store)
    assert "seqs 11..20" in gap.detail and "buffer check" in gap.detail
    # The hot tier still held the lost ticks: the span is theirs exactly.
    assert (gap.start_ns, gap.end_ns) == (T0_NS + seconds(15 * 60), T0_NS + seconds(15 * 60 + 9))
    assert store.check_buffer() == []  # once
    result = await store.append_batch(CONTRACT, "last", [trade(clock.now_ns() + seconds(30), 1)])
    assert result.first_seq == 31
    store.close()
    with TickStore(config, clock) as again:
        assert len(lost_gaps(again)) == 1
        assert (await again.append_batch(CONTRACT, "last", [trade(clock.now_ns(), 1)])).first_seq == 32


async def test_archival_records_a_hole_before_its_watermark_passes_it(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    segment(config, SEGMENTS[0]).unlink()
    clock.advance(3600)
    store.archiver.archive_sealed()  # archival alone, without the buffer check of the job
    (gap,) = lost_gaps(store)
    assert "seqs 1..10" in gap.detail and "archival" in gap.detail
    assert store.index.archived_seqs()[LAST] == 30
    assert store.check_buffer() == []
    assert len(lost_problems(config)) == 1


async def test_an_open_segment_removed_under_the_writer_is_restored_from_the_open_file(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    newest = segment(config, SEGMENTS[2])
    content = newest.read_bytes()
    newest.unlink()
    wait_until(lambda: store.buffer.stats.segments_restored == 1)
    assert newest.read_bytes() == content
    assert store.check_buffer() == []
    await store.append_batch(CONTRACT, "last", [trade(clock.now_ns() + seconds(20), 1)])
    store.close()
    with TickStore(config, clock) as again:
        assert await seqs(again) == list(range(1, 32))
        assert lost_gaps(again) == []
    assert verify(config).ok


async def test_a_whole_stream_directory_removed_under_the_writer_is_restored(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    await three_segments(store, clock)
    directory = segment(config, SEGMENTS[2]).parent
    content = segment(config, SEGMENTS[2]).read_bytes()
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    wait_until(lambda: store.buffer.stats.segments_restored == 1)
    assert segment(config, SEGMENTS[2]).read_bytes() == content
    found = store.check_buffer()
    assert [(f.first_seq, f.last_seq) for f in found] == [(1, 20)]


@pytest.mark.parametrize("gone", ["catalogued", "buffer"])
async def test_nothing_is_reported_when_what_vanished_was_archived(
    store: TickStore, clock: ManualClock, config: StorageConfig, gone: str
) -> None:
    # Segments retention may delete (archived) are no loss; the watermark covers them.
    await three_segments(store, clock)
    clock.advance(3600)
    store.run_archival()
    for name in SEGMENTS:
        segment(config, name).unlink()
    assert store.check_buffer() == []
    store.close()
    with TickStore(config, clock) as again:
        assert lost_gaps(again) == []
        assert (await again.append_batch(CONTRACT, "last", [trade(clock.now_ns(), 1)])).first_seq == 31
    assert verify(config).ok


async def test_many_appends_racing_the_check_find_nothing(store: TickStore, clock: ManualClock) -> None:
    async def producer() -> None:
        for i in range(200):
            await store.append_batch(CONTRACT, "last", [trade(clock.now_ns() + i, i)])
            if i % 50 == 49:
                clock.advance(15 * 60)

    task = asyncio.create_task(producer())
    while not task.done():
        assert await asyncio.to_thread(store.check_buffer) == []
    await task
    assert lost_gaps(store) == []
