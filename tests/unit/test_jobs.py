"""The scheduler wiring: job ids and intervals come from the settings, jobs run off the loop and survive errors."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from ib_stream.clock import ManualClock
from ib_stream.errors import StorageError
from ib_stream.jobs import (
    CATCH_UP_DELAY_SECONDS,
    CATCH_UP_JOBS,
    COMPACTION_INTERVAL_SECONDS,
    MAINTENANCE_INTERVAL_SECONDS,
    RETENTION_INTERVAL_SECONDS,
    ROLLUP_INTERVAL_SECONDS,
    SNAPSHOT_INTERVAL_SECONDS,
    build_scheduler,
)
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from tests.conftest import CONTRACT, T0_NS, seconds, trade


def test_jobs_and_intervals_follow_the_settings(store: TickStore, config: StorageConfig) -> None:
    settings = config.model_copy(update={"index_update_interval_seconds": 17})
    scheduler = build_scheduler(store, settings)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    expected = {
        "archive": 17,
        "compact": COMPACTION_INTERVAL_SECONDS,
        "retention": RETENTION_INTERVAL_SECONDS,
        "maintenance": MAINTENANCE_INTERVAL_SECONDS,
        "snapshots": SNAPSHOT_INTERVAL_SECONDS,
        "rollups": ROLLUP_INTERVAL_SECONDS,
    }
    assert set(jobs) == set(expected)
    for job_id, interval in expected.items():
        job = jobs[job_id]
        assert isinstance(job.trigger, IntervalTrigger)
        assert job.trigger.interval == timedelta(seconds=interval)
        assert job.args == (store, job_id)
        assert job.max_instances == 1
        assert job.coalesce is True
    assert COMPACTION_INTERVAL_SECONDS == 300
    assert RETENTION_INTERVAL_SECONDS == 3600
    assert MAINTENANCE_INTERVAL_SECONDS == 600


async def test_started_scheduler_archives_sealed_segments(
    store: TickStore, config: StorageConfig, clock: ManualClock
) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(20)], source="test")
    clock.advance(3600)  # the segment's window has closed: it is sealed
    assert store.index.files() == []
    scheduler = build_scheduler(store, config.model_copy(update={"index_update_interval_seconds": 1}))
    scheduler.start()
    try:
        for _ in range(200):
            if store.index.files():
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # the AsyncIOScheduler shuts down on the loop
    files = store.index.files()
    assert [f.tick_count for f in files] == [20]
    assert store.index.archived_seqs()[files[0].stream] == 20


async def test_a_job_runs_on_a_worker_thread(store: TickStore, config: StorageConfig) -> None:
    threads: list[str] = []
    real = store.run_maintenance

    def spy() -> int:
        threads.append(threading.current_thread().name)
        return real()

    store.run_maintenance = spy  # type: ignore[method-assign]
    job = build_scheduler(store, config).get_job("maintenance")
    assert job is not None
    assert await job.func(*job.args) == 0
    assert threads and threads[0] != threading.current_thread().name
    assert threads[0].startswith("ib-stream-io")


async def test_a_failing_job_is_logged_not_raised(
    store: TickStore, config: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise StorageError("disk on fire")

    store.run_archival = broken  # type: ignore[method-assign,assignment]
    job = build_scheduler(store, config).get_job("archive")
    assert job is not None
    with caplog.at_level(logging.ERROR, logger="ib_stream.jobs"):
        assert await job.func(*job.args) is None
    assert "job archive failed" in caplog.text
    assert "disk on fire" in caplog.text


async def test_scheduler_keeps_running_after_a_job_fails(
    store: TickStore, config: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise StorageError("disk on fire")

    store.run_archival = broken  # type: ignore[method-assign,assignment]
    scheduler = build_scheduler(store, config.model_copy(update={"index_update_interval_seconds": 1}))
    scheduler.start()
    try:
        for _ in range(200):
            if calls >= 2:
                break
            await asyncio.sleep(0.05)
        assert scheduler.running
    finally:
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)
    assert calls >= 2


async def test_derived_files_catch_up_soon_after_the_start(store: TickStore, config: StorageConfig) -> None:
    """Ticks recorded while the service was down get rollups and snapshots at start, not an interval later."""
    before = datetime.now(UTC)
    scheduler = build_scheduler(store, config)
    scheduler.start(paused=True)
    try:
        first = {job.id: job.next_run_time - before for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)
    assert set(CATCH_UP_JOBS) == {"snapshots", "rollups"}
    for job_id, wait in first.items():
        if job_id in CATCH_UP_JOBS:
            assert wait <= timedelta(seconds=CATCH_UP_DELAY_SECONDS + 1)
        else:  # the others first run one interval after the start
            assert wait >= timedelta(seconds=min(config.index_update_interval_seconds, SNAPSHOT_INTERVAL_SECONDS) - 1)
