"""The writable tick store: owns the data root (a lock file), the buffer, the archiver, the
catalog and the query engine, and exposes the background jobs as plain idempotent methods.

It also keeps seqs honest across what can happen to the files: acknowledged seqs that no segment holds
any more (a segment removed, a bad disk) are found at start-up, by the buffer check of the archive and
maintenance jobs and by archival, logged, and recorded once each — a `storage_lost` gap in the ledger and
a row in `lost_seqs` (which `ib-stream verify` reports); the next seq always follows the highest ever
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from ib_stream.clock import Clock, SystemClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import DataRootLockedError, StorageError
from ib_stream.settings import StorageConfig
from ib_stream.store.archive import Archiver, ArchiveReport
from ib_stream.store.buffer import AppendResult, OnError, TickBuffer
from ib_stream.store.cache import ChangeTracker, QueryCache
from ib_stream.store.depth_rollups import update_depth_rollups
from ib_stream.store.gaps import GapLedger, GapReason
from ib_stream.store.heatmap_rollups import update_heatmap_rollups
from ib_stream.store.hotcache import HotSnapshot
from ib_stream.store.index import PartitionIndex
from ib_stream.store.layout import DAY_NS, Layout, lock_path
from ib_stream.store.provenance import Provenance, batch_sources
from ib_stream.store.query import QueryEngine
from ib_stream.store.recovery import unrecorded
from ib_stream.store.rollups import update_rollups
from ib_stream.store.seqmarks import LostRange, SeqMarks
from ib_stream.store.snapshots import SnapshotReport, SnapshotWriter
from ib_stream.times import iso_us

log = logging.getLogger(__name__)
_EVERYTHING_ARCHIVED = 1 << 62


def make_layout(config: StorageConfig) -> Layout:
    """The layout of `config`'s data root (`Layout.of`)."""
    return Layout.of(config)


class _LiveHot:
    """The hot tier of this process's buffer, kept fresh in the cache by the change tracker."""

    def __init__(self, buffer: TickBuffer) -> None:
        self.buffer = buffer

    def snapshot(self, stream: StreamKey) -> HotSnapshot:
        hot = self.buffer.hot(stream)
        return hot.snapshot() if hot is not None else HotSnapshot(_EVERYTHING_ARCHIVED, ())

    def token(self, streams: Sequence[StreamKey]) -> Hashable:
        return None


class TickStore:
    """Everything that writes to one data root. Open it once per process (`open` takes a lock)."""

    def __init__(self, config: StorageConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.layout = Layout.of(config)
        self.tracker = ChangeTracker()
        self.cache = QueryCache(
            config.query_cache_size,
            config.query_cache_ttl_seconds,
            self.tracker,
            self.clock,
            int(config.query_cache_max_mb * 2**20),
        )
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent_writes, thread_name_prefix="ib-stream-io")
        self._lock_file: IO[str] | None = None
        self.index: PartitionIndex
        self.gaps: GapLedger
        self.marks: SeqMarks
        self.buffer: TickBuffer
        self.archiver: Archiver
        self.engine: QueryEngine
        self.provenance: Provenance
        self.temp_files_removed = 0

    # ---- lifecycle --------------------------------------------------------------------------------
    def open(self) -> TickStore:
        """Lock the data root, recover the buffer and warm the hot cache (blocking; see `aopen`)."""
        self.layout.data_root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock(self.layout.data_root)
        try:
            self.index = PartitionIndex(self.layout.index_file)
            self.gaps = GapLedger(self.layout.index_file)
            self.marks = SeqMarks(self.layout.index_file)
            self.buffer = TickBuffer(self.config, self.layout, self.clock)
            self.buffer.listeners.append(self._track)
            self.archiver = Archiver(
                self.config, self.layout, self.index, self.buffer, self.clock, self.tracker.record, self._lost_found
            )
            self.temp_files_removed = self.archiver.cleanup_temp_files()
            self.buffer.open(self.index.last_seqs(), self.index.archived_seqs(), self.marks)
            self.record_lost(self.buffer.lost_on_open, "at start-up")
            self.provenance = Provenance.open(self.layout, self.index, self.buffer)
            self.engine = QueryEngine(self.layout, self.index, _LiveHot(self.buffer), self.cache, self.clock)
            self.snapshots = SnapshotWriter.for_engine(self.engine)
        except BaseException:
            self._unlock()
            raise
        return self

    @contextlib.contextmanager
    def buffer_paused(self) -> Iterator[None]:
        """Close the buffer — everything queued made durable, every segment file closed — so its segment files can be
        rewritten (`store.rewrite`), then open it again from them: hot tier and next seqs recovered as by `open`.
        No append may be made meanwhile."""
        closed = self.buffer
        closed.close()
        try:
            yield
        finally:
            buffer = TickBuffer(self.config, self.layout, self.clock)
            buffer.listeners.extend(closed.listeners)
            buffer.open(self.index.last_seqs(), self.index.archived_seqs())
            self.buffer = self.archiver.buffer = buffer
            self.engine.hot = _LiveHot(buffer)

    async def aopen(self) -> TickStore:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.open)

    def close(self) -> None:
        """Let running jobs and queries finish, flush and fsync the buffer, close the catalog and release the data
        root. The workers stop first: a catalog connection closed under a running job is a crash in SQLite."""
        self.executor.shutdown(wait=True)
        buffer = getattr(self, "buffer", None)
        if buffer is not None:
            buffer.close()
        for db in (getattr(self, "index", None), getattr(self, "gaps", None), getattr(self, "marks", None)):
            if db is not None:
                db.close()
        self._unlock()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> TickStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------------------
    async def append_batch(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str = "api",
        on_error: OnError = "reject",
    ) -> AppendResult:
        """Append ticks to one stream; return once durable (see `TickBuffer.append_batch`)."""
        self._note_provenance(contract_id, source, ticks)
        return await self.buffer.append_batch(contract_id, tick_type, ticks, source, on_error)

    def append_batch_sync(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str = "api",
        on_error: OnError = "reject",
    ) -> AppendResult:
        """Blocking append for code without an event loop (CLI, importers, benchmarks)."""
        self._note_provenance(contract_id, source, ticks)
        return self.buffer.submit(contract_id, tick_type, ticks, source, on_error).result()

    def _note_provenance(self, contract_id: int, source: str, ticks: Sequence[Any]) -> None:
        # The first ticks of a source other than the simulator in a contract are noted before they are appended
        # (`store.provenance`). Written in line, a few ms once per contract and source in the data root's life:
        # awaited off the loop, a later append could overtake this batch, or a cancelled caller lose it.
        sources = batch_sources(source, ticks)
        if self._lock_file is not None and self.provenance.is_new(contract_id, sources):
            self.provenance.note(contract_id, sources)

    def write_status(self) -> tuple[bool, str]:
        """Whether the store accepts appends, and why not (or how many are pending)."""
        buffer = self.buffer
        outage = buffer.outage
        if outage is not None:
            error = outage.error
            return False, (
                f"{error.code}: appends refused since {iso_us(outage.since_ns)}: {error.details.get('reason')} "
                f"({error.details.get('path') or 'buffer'}); {outage.retries} retries, next in "
                f"{outage.next_retry_seconds:g}s"
            )
        if buffer.failure is not None:
            return False, f"buffer writer stopped after an error: {buffer.failure}"
        if not buffer.running:
            return False, "buffer writer is not running"
        return True, f"{buffer.pending_writes()} writes pending"

    # ---- jobs (plain, idempotent; the scheduler only calls them) ---------------------------------------------
    def run_archival(self) -> ArchiveReport:
        """Check the buffer for lost seqs, then archive every sealed segment (the every-minute archive job)."""
        self.check_buffer()
        return self.archiver.archive_sealed()

    def check_buffer(self) -> list[LostRange]:
        """Find acknowledged seqs no segment holds any more; record each new range once (see `record_lost`)."""
        return self.record_lost(self.buffer.find_lost(self.index.archived_seqs), "by the buffer check")

    def record_lost(self, found: list[LostRange], when: str, *, strict: bool = False) -> list[LostRange]:
        """Log and record (gap ledger `storage_lost`, `lost_seqs`) the ranges not recorded yet; return those.

        A range that cannot be recorded (the catalog cannot commit) is logged and found again by the next check;
        `strict` raises instead (archival must not pass seqs it could not record).
        """
        if not found:
            return []
        recorded = self.marks.lost()
        new: list[LostRange] = []
        for stream in sorted({f.stream for f in found}):
            known = [r for r in recorded if r.stream == stream]
            new += unrecorded([f for f in found if f.stream == stream], known)
        for lost in new:
            before = self.index.end_before(lost.stream, lost.first_seq)
            start = min(lost.start_ns, before) if before is not None else lost.start_ns
            detail = (
                f"acknowledged seqs {lost.first_seq}..{lost.last_seq} ({lost.count} ticks) are on no disk any more "
                f"(found {when}): a buffer segment was removed or lost; these seqs are never given again"
            )
            log.error("stream %s: %s", lost.stream, detail)
            try:
                gap_id = self.gaps.add(lost.stream, start, max(start, lost.end_ns), GapReason.STORAGE_LOST, detail)
                lost = LostRange(lost.stream, lost.first_seq, lost.last_seq, start, lost.end_ns, detail, gap_id)
                self.marks.record_lost(lost, self.clock.now_ns())
            except StorageError as e:
                if strict:
                    raise
                log.error(
                    "stream %s: lost seqs %d..%d cannot be recorded yet: %s",
                    lost.stream,
                    lost.first_seq,
                    lost.last_seq,
                    e,
                )
                continue
            self.buffer.stats.lost_ticks += lost.count
        return new

    def _lost_found(self, lost: LostRange) -> None:
        # Archival met seqs no segment holds: recorded before its watermark passes them (or it fails and retries).
        self.record_lost([lost], "by archival", strict=True)

    def run_compaction(self) -> ArchiveReport:
        return self.archiver.compact()

    def run_retention(self) -> ArchiveReport:
        report = self.archiver.apply_retention()
        cutoff = self.clock.now_ns() - int(self.config.archive_retention_days * DAY_NS)
        report.files_removed += self.snapshots.remove_before(cutoff)
        return report

    def run_rollups(self) -> int:
        """Write the missing and stale 1-second order-flow rollups (trades and quotes, OBI from depth, and the
        heatmap's resting sums of depth) of closed partitions (idempotent); return how many were written."""
        return update_rollups(self.engine) + update_depth_rollups(self.engine) + update_heatmap_rollups(self.engine)

    def run_snapshots(self) -> SnapshotReport:
        """Write the missing and stale L2 book snapshots at partition boundaries (idempotent)."""
        return self.snapshots.update()

    def run_maintenance(self) -> int:
        """Check the buffer for lost seqs; delete files retired by compaction/retention once no reader needs them;
        refresh statistics."""
        self.check_buffer()
        removed = self.archiver.reap_retired()
        self.archiver.statistics.refresh_all()
        return removed

    def _track(self, stream: StreamKey, records: list[dict[str, Any]]) -> None:
        self.tracker.record_ticks(stream, [r["ts"] for r in records])

    async def run_in_background(self, job: str) -> Any:
        """Run a job by name off the event loop."""
        method = {
            "archive": self.run_archival,
            "compact": self.run_compaction,
            "retention": self.run_retention,
            "maintenance": self.run_maintenance,
            "snapshots": self.run_snapshots,
            "rollups": self.run_rollups,
        }[job]
        return await asyncio.get_running_loop().run_in_executor(self.executor, method)

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


@contextlib.contextmanager
def lock_data_root(data_root: os.PathLike[str]) -> Iterator[None]:
    """Hold the data root's writer lock (raises DataRootLockedError when a store or tool holds it)."""
    handle = _lock(data_root)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _lock(data_root: os.PathLike[str]) -> IO[str]:
    path = lock_path(Path(data_root))
    handle = open(path, "a+")  # noqa: SIM115 - held for the life of the store
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise DataRootLockedError(
            f"data root {data_root} is in use by {owner}; stop it or use another data root",
            details={"data_root": str(data_root)},
        ) from None
    except OSError as e:
        handle.close()
        raise StorageError(f"cannot lock data root {data_root}: {e}") from e
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle
