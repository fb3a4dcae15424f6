"""Storage: remove ticks from the store — the archive partitions and buffer segments holding them rewritten without
them, the files derived from them made to be rebuilt, the caches told. `import undo` is built on it.

A `Selection` names, for one stream, seq ranges and a source: the ticks whose seq lies in one of the ranges *and*
whose source is that source are removed (the source guards the ticks of other producers that a range taken too
wide could hold). `TickRemover.prepare` then `remove` work in steps, each atomic, so that a crash anywhere is
repaired by running both again — and running them again removes nothing more:

1. every buffered tick of the streams is archived, the open segments' too, and dropped from the hot tier
   (`Archiver.archive_now`): every tick to remove is then in the archive, and the archived watermark lies above
   all of them (their seqs are never given again);
2. the derived files the removal makes stale without their keys saying so are deleted (see below);
3. each partition holding some of the ticks is rewritten without them, as compaction rewrites a partition:
   temp → fsync → rename → one catalog transaction swapping the new file in (`Archiver.rewrite_partition`);
   the change tracker is told the partition's span, so no cached query answer of it is served again;
4. the buffer segments still holding copies of them are rewritten without those lines (temp → fsync → rename,
   the buffer closed meanwhile), so `index rebuild` cannot bring them back from the buffer;
5. the daily statistics of the touched dates are recomputed, the derived files deleted again, and the replaced
   archive files deleted at once (a later `index rebuild` must not find them).

Derived files. Trade-stream rollups key on the catalog files (path and checksum) of their partition and of the
quotes before it: a rewritten or emptied partition changes that key, so they are recomputed — nothing to do.
Book snapshots and depth rollups (OBI and heatmap) key on seq watermarks, which a removal does not raise: a snapshot at boundary
B is stale when a depth tick with ts < B is removed, a depth rollup when one in or before its partition is
(its opening book). Those of the contract after the first removed depth tick are deleted; the snapshot and
rollup jobs write them again.

Removing ticks leaves holes in a stream's seq numbers: seq stays strictly increasing and is never given twice.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import StorageError
from ib_stream.store.layout import RESTING_KIND, Layout, Partition, Segment, fsync_dir, temp_path
from ib_stream.store.statistics import date_of
from ib_stream.store.tickstore import TickStore

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Selection:
    """Ticks of one stream to remove: seq in one of `ranges` ([first, end)) and source `source`; their event times
    lie in [min_ts, max_ts]."""

    stream: StreamKey
    ranges: tuple[tuple[int, int], ...]
    min_ts: int
    max_ts: int
    source: str

    def holds(self, first_seq: int, last_seq: int) -> bool:
        """Whether a seq range [first_seq, last_seq] meets one of the ranges."""
        return any(first_seq < end and last_seq >= start for start, end in self.ranges)

    def mask(self, table: pa.Table) -> np.ndarray:
        """The rows of a stored table that are selected."""
        seq = table.column("seq").to_numpy()
        inside = np.zeros(len(seq), dtype=bool)
        for start, end in self.ranges:
            inside |= (seq >= start) & (seq < end)
        if not inside.any():
            return inside
        same_source = pc.equal(table.column("source"), self.source).to_numpy(zero_copy_only=False)
        return inside & same_source.astype(bool)


@dataclass(slots=True)
class RemovalPlan:
    """What a removal will rewrite (known once the streams' buffered ticks are archived)."""

    selections: list[Selection]
    partitions: list[tuple[Partition, Selection]]
    segments: list[tuple[Segment, Selection]]

    @property
    def steps(self) -> int:
        return len(self.partitions) + len(self.segments)


@dataclass(slots=True)
class RemovalReport:
    """What a removal did."""

    removed: collections.Counter[StreamKey] = field(default_factory=collections.Counter)
    partitions_rewritten: int = 0
    segments_rewritten: int = 0
    buffer_lines_removed: int = 0
    derived_files_removed: int = 0
    seconds: float = 0.0

    @property
    def ticks_removed(self) -> int:
        return sum(self.removed.values())


class TickRemover:
    """Removes selected ticks from an open, writable store (which nothing else appends to meanwhile)."""

    def __init__(self, store: TickStore) -> None:
        self.store = store
        self.layout: Layout = store.layout

    def prepare(self, selections: Iterable[Selection]) -> RemovalPlan:
        """Archive the streams' buffered ticks (step 1) and find the partitions and segments to rewrite."""
        chosen = [s for s in selections if s.ranges]
        self.store.archiver.archive_now(sorted({s.stream for s in chosen}))
        partitions: dict[Partition, Selection] = {}
        segments: list[tuple[Segment, Selection]] = []
        pn = self.layout.partition_ns
        for selection in chosen:
            for f in self.store.index.plan(selection.stream, selection.min_ts, selection.max_ts + 1):
                if selection.holds(f.first_seq, f.last_seq):
                    partition = Partition(selection.stream, f.partition_start, f.partition_start + pn)
                    partitions[partition] = selection
            for segment in self.layout.segments(selection.stream):
                seqs = _segment_seqs(segment)
                if seqs is not None and selection.holds(*seqs):
                    segments.append((segment, selection))
        return RemovalPlan(chosen, sorted(partitions.items()), segments)

    def remove(self, plan: RemovalPlan, progress: Progress | None = None) -> RemovalReport:
        """Remove the planned ticks (steps 2-5); `progress(1)` after each partition and segment."""
        started = time.perf_counter()
        report = RemovalReport()
        report.derived_files_removed += self._remove_derived(plan.selections)
        archiver = self.store.archiver
        for partition, selection in plan.partitions:
            dropped = archiver.rewrite_partition(partition, selection.mask)
            report.removed[partition.stream] += dropped
            report.partitions_rewritten += dropped > 0
            if progress:
                progress(1)
        if plan.segments:
            with self.store.buffer_paused():
                for segment, selection in plan.segments:
                    removed = _rewrite_segment(segment, selection)
                    report.buffer_lines_removed += removed
                    report.segments_rewritten += removed > 0
                    if progress:
                        progress(1)
        archiver.statistics.refresh({(p.stream, date_of(p.start_ns)) for p, _ in plan.partitions})
        report.derived_files_removed += self._remove_derived(plan.selections)
        archiver.reap_retired(force=True)
        for selection in plan.selections:
            self.store.tracker.record(selection.stream, selection.min_ts, selection.max_ts)
        report.seconds = time.perf_counter() - started
        return report

    def _remove_derived(self, selections: list[Selection]) -> int:
        """Delete the book snapshots and depth rollups after the first selected depth tick of each contract."""
        first_depth: dict[int, int] = {}
        for s in selections:
            if s.stream.tick_type is TickType.DEPTH:
                first_depth[s.stream.contract_id] = min(first_depth.get(s.stream.contract_id, s.min_ts), s.min_ts)
        removed = 0
        pn = self.layout.partition_ns
        for contract_id, min_ts in sorted(first_depth.items()):
            stale: list[Path] = []
            for day_ns, directory in self.layout.snapshot_dates(contract_id):
                stale += [path for boundary, _, path in Layout.snapshot_files(directory, day_ns) if boundary > min_ts]
            depth = StreamKey(contract_id, TickType.DEPTH)
            for kind in ("", RESTING_KIND):  # the OBI rollups and the heatmap rollups of the depth
                stale += [path for start, path in self.layout.rollup_files(depth, kind) if start + pn > min_ts]
            removed += _delete_durably(stale)
        return removed


def _segment_seqs(segment: Segment) -> tuple[int, int] | None:
    """The first and last seq of a segment (None when it holds no complete line)."""
    try:
        with open(segment.path, "rb") as handle:
            head = handle.readline()
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65_536))
            tail = handle.read()
    except OSError as e:
        raise StorageError(f"buffer segment {segment.path} cannot be read: {e}") from e
    if not head.endswith(b"\n"):
        return None
    last_line = tail[: tail.rfind(b"\n")].rsplit(b"\n", 1)[-1]
    try:
        return int(orjson.loads(head)["seq"]), int(orjson.loads(last_line)["seq"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StorageError(f"buffer segment {segment.path} holds an unreadable line: {e}") from e


def _rewrite_segment(segment: Segment, selection: Selection) -> int:
    """Rewrite a segment without the selected lines (temp → fsync → rename → fsync dir); return the lines dropped."""
    path = segment.path
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # a torn last line was truncated when the buffer opened; never keep a partial one
    kept: list[bytes] = []
    dropped = 0
    for line in data[:end].splitlines(keepends=True):
        record = orjson.loads(line)
        seq = record["seq"]
        if record.get("source") == selection.source and any(a <= seq < b for a, b in selection.ranges):
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return 0
    temp = temp_path(path)
    with open(temp, "wb") as handle:
        handle.write(b"".join(kept))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
    return dropped


def _delete_durably(paths: list[Path]) -> int:
    directories = set()
    for path in paths:
        path.unlink(missing_ok=True)
        directories.add(path.parent)
    for directory in directories:
        if directory.is_dir():
            fsync_dir(directory)
    return len(paths)
