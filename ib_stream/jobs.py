"""Scheduler wiring only: when the store's background jobs run (the jobs are plain `TickStore` methods).

    job id        TickStore method    every
    archive       run_archival        storage.index_update_interval_seconds (60 s)
    compact       run_compaction      5 minutes
    retention     run_retention       1 hour
    maintenance   run_maintenance     10 minutes
    snapshots     run_snapshots       1 minute
    rollups       run_rollups         5 minutes

The derived-file jobs (snapshots, rollups) also run once `CATCH_UP_DELAY_SECONDS` after the start, so
ticks recorded or imported while the service was down get their rollups and snapshots then, not an
interval later: until they exist, bars and books over those ranges are computed from the ticks, at
the cost of reading them (see docs/howto/operate.md, sizing).

Each run goes through `run_job`: the work happens on the store's worker threads (never on the
event loop), a failure is logged and the job simply runs again at its next interval, at most one
instance of a job runs at a time and runs missed while busy collapse into one.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from ib_stream.settings import StorageConfig
from ib_stream.store.tickstore import TickStore

log = logging.getLogger(__name__)

COMPACTION_INTERVAL_SECONDS = 5 * 60
RETENTION_INTERVAL_SECONDS = 60 * 60
MAINTENANCE_INTERVAL_SECONDS = 10 * 60
SNAPSHOT_INTERVAL_SECONDS = 60
ROLLUP_INTERVAL_SECONDS = 5 * 60
CATCH_UP_DELAY_SECONDS = 2
CATCH_UP_JOBS = ("snapshots", "rollups")


def job_intervals(settings: StorageConfig) -> dict[str, int]:
    """Return the interval in seconds of each job, keyed by job id (= `TickStore.run_in_background` name)."""
    return {
        "archive": settings.index_update_interval_seconds,
        "compact": COMPACTION_INTERVAL_SECONDS,
        "retention": RETENTION_INTERVAL_SECONDS,
        "maintenance": MAINTENANCE_INTERVAL_SECONDS,
        "snapshots": SNAPSHOT_INTERVAL_SECONDS,
        "rollups": ROLLUP_INTERVAL_SECONDS,
    }


def build_scheduler(store: TickStore, settings: StorageConfig) -> AsyncIOScheduler:
    """Return a scheduler (not started) that runs the store's jobs; start it inside the running event loop."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    catch_up = datetime.now(UTC) + timedelta(seconds=CATCH_UP_DELAY_SECONDS)
    for job, seconds in job_intervals(settings).items():
        first = {"next_run_time": catch_up} if job in CATCH_UP_JOBS else {}
        scheduler.add_job(
            run_job,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            args=(store, job),
            id=job,
            name=f"ib-stream {job}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a run delayed by a busy loop still happens (once, thanks to coalesce)
            replace_existing=True,
            **first,
        )
    return scheduler


async def run_job(store: TickStore, job: str) -> Any:
    """Run one store job off the event loop; log a failure instead of raising so the scheduler carries on."""
    started = time.perf_counter()
    try:
        result = await store.run_in_background(job)
    except Exception:
        log.exception(
            "job %s failed after %.2fs; it runs again at its next interval", job, time.perf_counter() - started
        )
        return None
    log.debug("job %s finished in %.2fs: %s", job, time.perf_counter() - started, result)
    return result
