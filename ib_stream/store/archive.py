"""Cold tier: sealed segments → hourly Parquet parts → one compacted file per partition.

Every step is temp file → fsync → rename → catalog commit → only then retire the input, so a
crash anywhere is repaired by running the step again, and running it again never duplicates.
A step that fails (a full disk, an I/O error, a catalog that cannot commit) removes its temp file
and the files it wrote but could not catalogue, and raises: the job runs again at its next interval.
Archival also notices acknowledged seqs that no segment holds any more (`on_lost`) before its
watermark passes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ib_stream.clock import NS_PER_SECOND, Clock
from ib_stream.domain import StreamKey
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig
from ib_stream.store.buffer import TickBuffer
from ib_stream.store.index import ArchiveFile, PartitionIndex, utc_now_iso
from ib_stream.store.layout import DAY_NS, HOUR_NS, Layout, Partition, Segment, temp_path
from ib_stream.store.schema import (
    META_JSONL_BYTES,
    META_SOURCES,
    read_parquet,
    read_segment_file,
    segment_last_seq,
    sort_table,
    write_parquet_atomic,
)
from ib_stream.store.segment_io import write_error
from ib_stream.store.seqmarks import LostRange
from ib_stream.store.statistics import StatisticsUpdater, date_of

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
ChangeListener = Callable[[StreamKey, int, int], None]
_EVERY_CHUNK = 1 << 62  # an eviction horizon no chunk is newer than
LostListener = Callable[[LostRange], None]


@dataclass(slots=True)
class ArchiveReport:
    """What one run of a job did."""

    segments: int = 0
    ticks: int = 0
    files_written: int = 0
    files_removed: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


class Archiver:
    """Moves sealed buffer segments into the Parquet archive and keeps the archive tidy."""

    def __init__(
        self,
        config: StorageConfig,
        layout: Layout,
        index: PartitionIndex,
        buffer: TickBuffer,
        clock: Clock,
        on_change: ChangeListener | None = None,
        on_lost: LostListener | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.index = index
        self.buffer = buffer
        self.clock = clock
        self.on_change = on_change or (lambda stream, lo, hi: None)
        self.on_lost = on_lost or (lambda lost: None)
        self._lock = threading.Lock()  # one archive job at a time
        self.last_durations: dict[str, float] = {}
        self.statistics = StatisticsUpdater(layout, index)

    # ---- archival --------------------------------------------------------------------------------
    def pending_segments(self) -> list[Segment]:
        """Sealed segments whose ticks are not all archived yet, oldest first per stream."""
        archived = self.index.archived_seqs()
        pending: list[Segment] = []
        for stream in sorted(set(self.layout.buffered_streams())):
            for segment in self.buffer.sealed_segments(stream):
                if segment_last_seq(segment.path, segment.stream.tick_type) > archived.get(stream, 0):
                    pending.append(segment)
        return pending

    def archive_sealed(self, progress: Progress | None = None) -> ArchiveReport:
        """Archive every sealed, unarchived segment; safe to re-run at any time."""
        with self._lock:
            started = time.perf_counter()
            report = ArchiveReport()
            touched: set[tuple[StreamKey, str]] = set()
            failed: dict[StreamKey, StorageError] = {}
            for segment in self.pending_segments():
                if segment.stream in failed:
                    continue  # later segments of a stream wait for the bad one: seq order is kept
                try:
                    ticks, dates = self._archive_segment(segment, report)
                except StorageError as e:
                    failed[segment.stream] = e
                    report.details.append(f"{segment.path}: {e.message}")
                    log.error("cannot archive %s: %s", segment.path, e.message)
                    continue
                report.segments += 1
                report.ticks += ticks
                touched |= {(segment.stream, d) for d in dates}
                if progress:
                    progress(ticks)
            self.statistics.refresh(touched)
            self._evict_hot()
            if failed:
                raise next(iter(failed.values()))
            report.seconds = time.perf_counter() - started
            self.last_durations["archive"] = report.seconds
            return report

    def archive_now(self, streams: Iterable[StreamKey]) -> ArchiveReport:
        """Archive every buffered tick of `streams`, the open segments' included, and drop them from the hot tier, so
        a rewrite of the archive (`store.rewrite`) sees all of them there; safe to re-run, like `archive_sealed`."""
        with self._lock:
            report = ArchiveReport()
            touched: set[tuple[StreamKey, str]] = set()
            for stream in streams:
                for segment in self.layout.segments(stream):
                    if segment_last_seq(segment.path, stream.tick_type) > self.index.archived_seqs().get(stream, 0):
                        ticks, dates = self._archive_segment(segment, report)
                        report.segments += 1
                        report.ticks += ticks
                        touched |= {(stream, d) for d in dates}
                hot = self.buffer.hot(stream)
                if hot is not None:
                    hot.evict(self.index.archived_seqs().get(stream, 0), _EVERY_CHUNK)
            self.statistics.refresh(touched)
            return report

    def _archive_segment(self, segment: Segment, report: ArchiveReport) -> tuple[int, set[str]]:
        stream = segment.stream
        archived = self.index.archived_seqs().get(stream, 0)
        table, lengths = read_segment_file(segment.path, stream.tick_type)
        seq = table.column("seq").to_numpy()
        keep = seq > archived
        if not keep.all():
            table, lengths, seq = table.filter(pa.array(keep)), lengths[keep], seq[keep]
        if table.num_rows == 0:
            return 0, set()
        ts = table.column("ts").to_numpy().view(np.int64)
        if int(seq[0]) > archived + 1:  # the watermark would pass seqs no segment holds: name them first
            self.on_lost(LostRange(stream, archived + 1, int(seq[0]) - 1, int(ts[0]), int(ts[0]), "found by archival"))
        starts = ts - ts % self.layout.partition_ns
        files: list[ArchiveFile] = []
        try:
            for part_start in np.unique(starts):
                mask = starts == part_start
                partition = Partition(stream, int(part_start), int(part_start) + self.layout.partition_ns)
                files.append(self._write_part(partition, table.filter(pa.array(mask)), int(lengths[mask].sum())))
            self.index.register(files, {stream: int(seq[-1])})
        except StorageError:
            self._remove_uncatalogued(files)  # parts above the watermark: no catalog row can name them
            raise
        report.files_written += len(files)
        for f in files:
            self.on_change(stream, f.start_time, f.end_time)
        return table.num_rows, {date_of(f.partition_start) for f in files}

    def _write_part(self, partition: Partition, table: pa.Table, jsonl_bytes: int) -> ArchiveFile:
        table = sort_table(table)
        seq = table.column("seq")
        first, last = pc.min(seq).as_py(), pc.max(seq).as_py()
        path = self.layout.part_path(partition, first, last)
        return self._write_file(partition, table, path, jsonl_bytes, "part", [])

    def _write_file(
        self, partition: Partition, table: pa.Table, path: Path, jsonl_bytes: int, kind: str, sources: list[str]
    ) -> ArchiveFile:
        final = path
        metadata = {META_JSONL_BYTES: str(jsonl_bytes).encode(), META_SOURCES: orjson.dumps(sources)}
        try:
            size, checksum = write_parquet_atomic(
                table,
                final,
                compression=self.config.archive_compression,
                compression_level=self.config.archive_compression_level,
                row_group_size=self.config.archive_row_group_size,
                metadata=metadata,
            )
        except OSError as e:  # a full disk, an I/O error: no temp file (nor uncatalogued file) is left behind
            temp_path(final).unlink(missing_ok=True)
            if not self.index.has_file(self.layout.relative(final)):
                final.unlink(missing_ok=True)  # renamed, then its directory could not be made durable
            retry = self.config.index_update_interval_seconds
            raise write_error(e, f"writing {kind} {final}", retry, "the job runs again at its next interval") from e
        return describe_file(self.layout, partition, table, final, size, checksum, jsonl_bytes, kind)

    def _remove_uncatalogued(self, files: list[ArchiveFile]) -> None:
        for f in files:
            try:
                self.layout.absolute(f.file_path).unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot remove %s, written but not catalogued: %s", f.file_path, e)

    # ---- compaction ------------------------------------------------------------------------------
    def compact(self, progress: Progress | None = None) -> ArchiveReport:
        """Merge the files of each closed partition into one file (sorted by ts, seq)."""
        with self._lock:
            started = time.perf_counter()
            report = ArchiveReport()
            closed_before = self.clock.now_ns() - self.config.compaction_delay_seconds * NS_PER_SECOND
            for stream, part_start in self.index.partitions_to_compact(closed_before, self.layout.partition_ns):
                partition = Partition(stream, part_start, part_start + self.layout.partition_ns)
                olds = self.index.partition_files(stream, part_start)
                if len(olds) < 2:
                    continue
                self._remove_crashed_outputs(partition, olds)
                tables = [read_parquet(self.layout.absolute(f.file_path), stream.tick_type) for f in olds]
                merged = sort_table(pa.concat_tables([t.replace_schema_metadata(None) for t in tables]))
                seq = merged.column("seq").to_numpy()
                if len(np.unique(seq)) != len(seq):
                    raise StorageError(f"partition {self.layout.partition_dir(partition)} holds duplicate seqs")
                path = self.layout.compacted_path(partition, int(seq.min()), int(seq.max()), len(seq))
                sources = [f.file_path for f in olds]
                new = self._write_file(partition, merged, path, sum(f.jsonl_bytes for f in olds), "compacted", sources)
                try:
                    self.index.replace(new, sources, self.clock.now_ns())
                except StorageError:
                    if new.file_path not in sources:
                        self._remove_uncatalogued([new])
                    raise
                self.on_change(stream, new.start_time, new.end_time)
                report.files_written += 1
                report.files_removed += len(olds)
                report.ticks += merged.num_rows
                if progress:
                    progress(merged.num_rows)
            self.reap_retired()
            report.seconds = time.perf_counter() - started
            self.last_durations["compact"] = report.seconds
            return report

    def rewrite_partition(self, partition: Partition, drop: Callable[[pa.Table], np.ndarray]) -> int:
        """Rewrite a partition without the rows `drop` marks: its files are merged as compaction merges them, the
        rest is written as one file (none when nothing is left) and swapped in for them in one catalog transaction
        (temp → fsync → rename → commit; the replaced files are retired). Return the rows dropped (0: nothing
        changed). A crash at any step leaves the old files or the new one catalogued; running it again finishes."""
        with self._lock:
            stream = partition.stream
            olds = self.index.partition_files(stream, partition.start_ns)
            self._remove_crashed_outputs(partition, olds)
            if not olds:
                return 0
            tables = [read_parquet(self.layout.absolute(f.file_path), stream.tick_type) for f in olds]
            merged = sort_table(pa.concat_tables([t.replace_schema_metadata(None) for t in tables]))
            dropped = np.asarray(drop(merged), dtype=bool)
            count = int(dropped.sum())
            if not count:
                return 0
            kept = merged.filter(pa.array(~dropped))
            sources = [f.file_path for f in olds]
            new = None
            if kept.num_rows:
                seq = kept.column("seq").to_numpy()
                path = self.layout.compacted_path(partition, int(seq.min()), int(seq.max()), len(seq))
                jsonl_bytes = sum(f.jsonl_bytes for f in olds) * kept.num_rows // merged.num_rows
                # (It can have the name of one of them, holding the same rows: it never lists itself as replaced.)
                replaced = [f for f in sources if f != self.layout.relative(path)]
                new = self._write_file(partition, kept, path, jsonl_bytes, "compacted", replaced)
            self.index.replace(new, sources, self.clock.now_ns())
            self.on_change(stream, min(f.start_time for f in olds), max(f.end_time for f in olds))
            return count

    def _remove_crashed_outputs(self, partition: Partition, catalogued: list[ArchiveFile]) -> None:
        # A compacted file in a partition that the catalog does not list (and did not retire) can
        # only be the output of a compaction that crashed before its catalog swap: it is superseded.
        known = {f.file_path for f in catalogued} | {path for path, _ in self.index.retired()}
        directory = self.layout.partition_dir(partition)
        for path in directory.glob("hour-*.parquet"):
            if self.layout.relative(path) not in known:
                log.warning("removing %s, left by an interrupted compaction", path)
                path.unlink(missing_ok=True)

    def reap_retired(self, force: bool = False) -> int:
        """Delete retired files no reader can still need; return how many were deleted."""
        now = self.clock.now_ns()
        # The grace period covers readers in other processes; the registry covers this process's readers.
        grace = 0 if force else self.config.retired_file_grace_seconds * NS_PER_SECOND
        done = []
        for path, retired_at in self.index.retired():
            if retired_at + grace > now or not self.index.readers.may_delete(path):
                continue
            absolute = self.layout.absolute(path)
            absolute.unlink(missing_ok=True)
            _remove_empty_dirs(absolute.parent, self.layout.archive_dir)
            done.append(path)
        if done:
            self.index.forget_retired(done)
        return len(done)

    # ---- retention -------------------------------------------------------------------------------
    def apply_retention(self) -> ArchiveReport:
        """Delete archived buffer segments past buffer retention and archive files past archive retention."""
        with self._lock:
            started = time.perf_counter()
            report = ArchiveReport()
            now = self.clock.now_ns()
            archived = self.index.archived_seqs()
            segment_limit = now - int(self.config.buffer_retention_hours * HOUR_NS)
            for stream in self.layout.buffered_streams():
                for segment in self.buffer.sealed_segments(stream):
                    if segment.end_ns <= segment_limit and segment_last_seq(
                        segment.path, segment.stream.tick_type
                    ) <= archived.get(stream, 0):
                        segment.path.unlink()
                        report.files_removed += 1
            archive_limit = now - int(self.config.archive_retention_days * DAY_NS)
            expired = [f for f in self.index.files() if f.partition_start + self.layout.partition_ns <= archive_limit]
            if expired:
                self.index.replace(None, [f.file_path for f in expired], now)
                for stream, start in {(f.stream, f.partition_start) for f in expired}:
                    partition = Partition(stream, start, start + self.layout.partition_ns)
                    self._remove_crashed_outputs(partition, [])
                for f in expired:
                    self.on_change(f.stream, f.start_time, f.end_time)
                self.statistics.refresh({(f.stream, date_of(f.partition_start)) for f in expired})
                report.files_removed += len(expired)
            self.reap_retired()
            report.seconds = time.perf_counter() - started
            return report

    def cleanup_temp_files(self) -> int:
        """Remove temp files left by an interrupted write (call before any writer starts)."""
        count = 0
        for path in self.layout.temp_files():
            path.unlink(missing_ok=True)
            count += 1
        return count

    def _evict_hot(self) -> None:
        archived = self.index.archived_seqs()
        keep_after = self.clock.now_ns() - self.config.buffer_duration_minutes * 60 * NS_PER_SECOND
        for stream, seq in archived.items():
            hot = self.buffer.hot(stream)
            if hot is not None:
                hot.evict(seq, keep_after)


def describe_file(
    layout: Layout,
    partition: Partition,
    table: pa.Table,
    path: Path,
    size: int,
    checksum: str,
    jsonl_bytes: int,
    kind: str,
) -> ArchiveFile:
    """Build the catalog row of an archive file from its (sorted) contents."""
    ts = table.column("ts").to_numpy().view(np.int64)
    seq = table.column("seq").to_numpy()
    stream = partition.stream
    return ArchiveFile(
        contract_id=stream.contract_id,
        tick_type=stream.tick_type.value,
        start_time=int(ts.min()),
        end_time=int(ts.max()),
        first_seq=int(seq.min()),
        last_seq=int(seq.max()),
        file_path=layout.relative(path),
        tick_count=table.num_rows,
        file_size_bytes=size,
        jsonl_bytes=jsonl_bytes,
        compression_ratio=round(jsonl_bytes / size, 3) if size else 0.0,
        checksum=checksum,
        partition_start=partition.start_ns,
        kind=kind,
        created_at=utc_now_iso(),
    )


def _remove_empty_dirs(current: Path, root: Path) -> None:
    while current != root and root in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent
