"""Randomized storage faults: write failures injected at random points of appends (a write, a half write, an
fsync, a new segment file at rotation, its directory), of archival and of compaction (a half-written Parquet
file, its fsync, its rename, the catalog commit), between random rotations and job runs with several streams
appending at once. After every run, and again after a restart: every acknowledged tick is stored exactly once
with the values it was appended with, nothing else is stored, seq runs 1..n per stream, no temp file is left,
`verify` is clean and the next append continues at n + 1.

The oracle is what each append was told (its `AppendResult`, or its error). The default run does a few seeds;
`-m slow` runs many more and longer.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import StorageError, StorageWriteError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store import archive as archive_module
from ib_stream.store.layout import temp_path
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, T0, quote, seconds, trade
from tests.support.faulty_io import FaultyIO

STREAMS = (StreamKey(CONTRACT, TickType.LAST), StreamKey(CONTRACT, TickType.BID_ASK), StreamKey(7, TickType.LAST))
APPEND_FAULTS = (
    ("write", errno.ENOSPC, False),
    ("write", errno.ENOSPC, True),
    ("write", errno.EIO, True),
    ("fsync", errno.EIO, False),
    ("fsync", errno.ENOSPC, False),
    ("open", errno.ENOSPC, False),
    ("dir", errno.EIO, False),
)
JOB_FAULTS = ("parquet", "fsync", "rename", "catalog")


class Scenario:
    """One seeded run: appends, faults, rotations and jobs on a real store; `acked` is the oracle."""

    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = ManualClock(T0)
        self.config = StorageConfig(
            data_root=root,
            fsync_interval_ms=self.rng.choice([0, 1, 20]),
            compaction_delay_seconds=0,
            retired_file_grace_seconds=0,
            write_retry_seconds=0.005,
            write_retry_max_seconds=0.02,
        )
        self.store = TickStore(self.config, self.clock).open()
        self.io = FaultyIO()
        self.store.buffer.io = self.io
        self.acked: dict[StreamKey, dict[int, float]] = {s: {} for s in STREAMS}  # seq -> the tick's unique size
        self.serial = 0

    def tick(self, stream: StreamKey) -> dict[str, Any]:
        self.serial += 1
        ts = self.clock.now_ns() - seconds(self.rng.choice([0, 0, 0, 1, 30, 4000]))  # some late ticks
        make = trade if stream.tick_type == TickType.LAST else quote
        field = "size" if stream.tick_type == TickType.LAST else "bid_size"
        return make(ts, self.serial, **{field: float(self.serial)})

    async def appends(self) -> None:
        if self.rng.random() < 0.5:
            op, err, partial = self.rng.choice(APPEND_FAULTS)
            self.io.arm(op, err, at=self.rng.randint(1, 6), times=self.rng.choice([1, 2, None]), partial=partial)
        submitted = []
        for _ in range(self.rng.randint(1, 12)):
            stream = self.rng.choice(STREAMS)
            ticks = [self.tick(stream) for _ in range(self.rng.randint(1, 300))]
            try:
                future = self.store.buffer.submit(stream.contract_id, stream.tick_type, ticks)
            except StorageWriteError:
                continue  # refused at once during an outage
            submitted.append((stream, ticks, asyncio.wrap_future(future)))
            if self.rng.random() < 0.15:
                self.clock.advance(self.rng.choice([1, 60, 15 * 60]))  # rotation inside a group
        for stream, ticks, waiting in submitted:
            try:
                result = await asyncio.wait_for(waiting, 10)
            except StorageWriteError:
                continue
            assert result.count == len(ticks)
            field = "size" if stream.tick_type == TickType.LAST else "bid_size"
            for seq, tick in zip(range(result.first_seq, result.last_seq + 1), ticks, strict=True):
                assert seq not in self.acked[stream], f"{stream}: seq {seq} acknowledged twice"
                self.acked[stream][seq] = tick[field]
        self.io.disarm()
        for _ in range(2000):
            if self.store.buffer.outage is None:
                break
            await asyncio.sleep(0.005)
        assert self.store.buffer.outage is None, "the store did not recover once the disk did"

    def job(self, name: str) -> None:
        run = {"archive": self.store.run_archival, "compact": self.store.run_compaction}[name]
        fault = self.rng.choice(JOB_FAULTS) if self.rng.random() < 0.6 else None
        with pytest.MonkeyPatch.context() as mp:
            if fault is not None:
                inject_job_fault(mp, self.store, fault, self.rng.randint(1, 3))
            try:
                run()
            except StorageError:
                assert fault is not None, f"{name} failed without a fault"
        assert list(self.store.layout.temp_files()) == [], f"{name} left temp files ({fault})"

    async def run(self, steps: int) -> None:
        for _ in range(steps):
            action = self.rng.choices(["append", "rotate", "archive", "compact"], weights=[6, 2, 2, 1])[0]
            if action == "append":
                await self.appends()
            elif action == "rotate":
                self.clock.advance(self.rng.choice([30, 15 * 60, 3600]))
            else:
                self.job(action)
            assert verify(self.config).ok, verify(self.config).problems

    async def check(self, store: TickStore) -> None:
        for stream in STREAMS:
            frame = await StorageQuery(store.engine).query_range(stream.contract_id, stream.tick_type, 0, 2**62)
            field = "size" if stream.tick_type == TickType.LAST else "bid_size"
            got = sorted(zip(frame["seq"].astype(int), frame[field], strict=True))
            want = sorted(self.acked[stream].items())
            assert got == want, f"{stream}: stored ticks differ from the acknowledged ones"
            assert [s for s, _ in want] == list(range(1, len(want) + 1)), f"{stream}: seq has a gap"


def inject_job_fault(mp: pytest.MonkeyPatch, store: TickStore, fault: str, at: int) -> None:
    archive_dir = str(store.layout.archive_dir)
    calls = {"n": 0}

    def nth() -> bool:
        calls["n"] += 1
        return calls["n"] == at

    if fault == "parquet":
        real = archive_module.write_parquet_atomic

        def write(table: Any, final: Path, **kwargs: Any) -> tuple[int, str]:
            if nth():
                final.parent.mkdir(parents=True, exist_ok=True)
                temp_path(final).write_bytes(b"PAR1 and then the disk was full")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(table, final, **kwargs)

        mp.setattr(archive_module, "write_parquet_atomic", write)
    elif fault == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if archive_dir in os.readlink(f"/proc/self/fd/{fd}") and nth():
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        mp.setattr(os, "fsync", fsync)
    elif fault == "rename":
        real_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            if archive_dir in str(target) and nth():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            real_replace(source, target)

        mp.setattr(os, "replace", replace)
    else:
        for method in ("register", "replace"):
            real_method = getattr(store.index, method)

            def failing(*args: Any, _real: Any = real_method, **kwargs: Any) -> Any:
                if nth():
                    raise StorageError("catalog update failed") from sqlite3.OperationalError(
                        "database or disk is full"
                    )
                return _real(*args, **kwargs)

            mp.setattr(store.index, method, failing)


async def fault_run(root: Path, seed: int, steps: int) -> None:
    scenario = Scenario(root, seed)
    try:
        await scenario.run(steps)
        await scenario.check(scenario.store)
    finally:
        scenario.store.close()
    with TickStore(scenario.config, scenario.clock) as store:  # after a restart
        await scenario.check(store)
        scenario.clock.advance(4 * 3600)
        store.run_archival()
        store.run_compaction()
        await scenario.check(store)
        for stream in STREAMS:
            result = store.append_batch_sync(stream.contract_id, stream.tick_type, [scenario.tick(stream)])
            assert result.first_seq == len(scenario.acked[stream]) + 1, f"{stream}: a seq was reused or skipped"
        assert store.gaps.gaps() == [], "a fault that lost nothing must record no lost range"
    assert verify(scenario.config).ok


@pytest.mark.parametrize("seed", range(3))
async def test_random_storage_faults(tmp_path: Path, seed: int) -> None:
    await fault_run(tmp_path / "root", seed, steps=30)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 125))
async def test_random_storage_faults_soak(tmp_path: Path, seed: int) -> None:
    await fault_run(tmp_path / "root", seed, steps=150)
