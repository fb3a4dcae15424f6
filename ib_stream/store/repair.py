"""Check and repair the catalog against the archive files: `verify` and `index rebuild`.

`verify` also checks seqs against the high-water marks: every acknowledged seq above a stream's archived
watermark must be in a buffer segment; ranges that are not (and those recorded lost before) are `lost`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ib_stream.clock import Clock, SystemClock
from ib_stream.domain import StreamKey
from ib_stream.settings import StorageConfig
from ib_stream.store.archive import describe_file
from ib_stream.store.index import ArchiveFile, PartitionIndex
from ib_stream.store.layout import Layout, Partition
from ib_stream.store.recovery import bounds_above, find_holes, unrecorded
from ib_stream.store.schema import META_JSONL_BYTES, META_SOURCES, file_sha256
from ib_stream.store.seqmarks import SeqMarks
from ib_stream.store.statistics import StatisticsUpdater

Progress = Callable[[int], None]
PROBLEM_KINDS = ("missing", "extra", "size", "row_count", "checksum", "unreadable", "lost")


@dataclass(frozen=True, slots=True)
class Problem:
    """One mismatch between the catalog and the archive files."""

    kind: str  # one of PROBLEM_KINDS
    path: str  # relative to the archive directory (`lost`: the stream's buffer directory)
    detail: str


@dataclass(slots=True)
class VerifyReport:
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class RebuildReport:
    files: int = 0
    ticks: int = 0
    superseded: list[str] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)
    streams: dict[StreamKey, int] = field(default_factory=dict)


def count_archive_files(config: StorageConfig) -> int:
    return sum(1 for _ in Layout.of(config).archive_files())


def verify(config: StorageConfig, *, checksums: bool = True, progress: Progress | None = None) -> VerifyReport:
    """Compare every catalog row with its file and every file with the catalog; report lost seqs."""
    layout = Layout.of(config)
    index = PartitionIndex(layout.index_file, readonly=True)
    report = VerifyReport()
    try:
        catalogued = {f.file_path: f for f in index.files()}
        retired = {path for path, _ in index.retired()}
        report.problems += _lost_seqs(layout, index)
    finally:
        index.close()
    on_disk = {layout.relative(p) for p in layout.archive_files()}
    for path, row in catalogued.items():
        report.files_checked += 1
        _check_file(layout.absolute(path), row, checksums, report)
        if progress:
            progress(1)
    for path in sorted(on_disk - set(catalogued) - retired):
        report.problems.append(Problem("extra", path, "file is in the archive but not in the catalog"))
    return report


def _lost_seqs(layout: Layout, index: PartitionIndex) -> list[Problem]:
    """Recorded lost ranges, and acknowledged seqs above the watermark that no segment holds (not recorded yet)."""
    marks = SeqMarks(layout.index_file, readonly=True)
    try:
        acked, recorded = marks.marks(), marks.lost()
    finally:
        marks.close()
    problems = [
        Problem("lost", _stream_path(layout, r.stream), f"{r.detail} (gap {r.gap_id})" if r.gap_id else r.detail)
        for r in recorded
    ]
    listed = {s: layout.segments(s) for s in sorted(set(acked) | set(layout.buffered_streams()))}
    archived = index.archived_seqs()  # after listing the segments: retention deletes only archived ones
    for stream, segments in listed.items():
        floor = archived.get(stream, 0)
        holes = find_holes(stream, bounds_above(segments, floor), floor, acked.get(stream))
        for hole in unrecorded(holes, [r for r in recorded if r.stream == stream]):
            problems.append(
                Problem(
                    "lost",
                    _stream_path(layout, stream),
                    f"acknowledged seqs {hole.first_seq}..{hole.last_seq} ({hole.count} ticks) are in no segment "
                    "(not recorded yet: the service records them at its next buffer check or start)",
                )
            )
    return problems


def _stream_path(layout: Layout, stream: StreamKey) -> str:
    directory = layout.stream_dir(stream)
    try:
        return directory.relative_to(layout.data_root).as_posix()
    except ValueError:
        return str(directory)


def _check_file(absolute: Path, row: ArchiveFile, checksums: bool, report: VerifyReport) -> None:
    path = row.file_path
    if not absolute.is_file():
        report.problems.append(Problem("missing", path, "catalogued file does not exist"))
        return
    size = absolute.stat().st_size
    if size != row.file_size_bytes:
        report.problems.append(Problem("size", path, f"{size} bytes on disk, {row.file_size_bytes} in the catalog"))
    try:
        rows = pq.read_metadata(absolute).num_rows
    except (OSError, pa.ArrowException, ValueError) as e:  # ValueError covers UnicodeDecodeError
        report.problems.append(Problem("unreadable", path, f"Parquet footer unreadable: {e}"))
        return
    if rows != row.tick_count:
        report.problems.append(Problem("row_count", path, f"{rows} rows in the file, {row.tick_count} in the catalog"))
    if checksums:
        digest = file_sha256(absolute)
        if digest != row.checksum:
            report.problems.append(Problem("checksum", path, f"sha256 {digest[:16]}… differs from the catalog's"))


def rebuild(config: StorageConfig, *, progress: Progress | None = None, clock: Clock | None = None) -> RebuildReport:
    """Recreate the catalog from the archive files alone.

    Files superseded by a compaction (listed as its sources, or whose ticks another file of the
    partition holds entirely, as a compaction interrupted before its catalog swap leaves) are
    retired, not catalogued, so no tick is catalogued twice.
    """
    layout = Layout.of(config)
    report = RebuildReport()
    described: dict[str, tuple[ArchiveFile, list[str], np.ndarray]] = {}
    for absolute in sorted(layout.archive_files()):
        relative = layout.relative(absolute)
        partition = layout.parse_partition(absolute.parent.relative_to(layout.archive_dir).as_posix())
        if partition is None:
            report.unreadable.append(
                Problem("unreadable", relative, "not inside a contract_id=/tick_type=/date=/hour= partition")
            )
            continue
        try:
            described[relative] = _describe(layout, absolute, partition)
        except (OSError, pa.ArrowException, ValueError) as e:
            report.unreadable.append(Problem("unreadable", relative, str(e)))
        if progress:
            progress(1)
    superseded = {src for _, sources, _ in described.values() for src in sources if src in described}
    superseded |= _contained_files({p: (row, seqs) for p, (row, _, seqs) in described.items() if p not in superseded})
    files = [row for path, (row, _, _) in described.items() if path not in superseded]
    archived: dict[StreamKey, int] = {}
    for row in files:
        archived[row.stream] = max(archived.get(row.stream, 0), row.last_seq)
    index = PartitionIndex(layout.index_file)
    try:
        index.reset(files, archived, sorted(superseded), (clock or SystemClock()).now_ns())
        StatisticsUpdater(layout, index).refresh_all()
    finally:
        index.close()
    report.files = len(files)
    report.ticks = sum(f.tick_count for f in files)
    report.superseded = sorted(superseded)
    report.streams = archived
    return report


def _contained_files(files: dict[str, tuple[ArchiveFile, np.ndarray]]) -> set[str]:
    """Files whose every seq is held by a larger file of the same partition (largest files win)."""
    by_partition: dict[tuple[StreamKey, int], list[tuple[str, ArchiveFile, np.ndarray]]] = {}
    for path, (row, seqs) in files.items():
        by_partition.setdefault((row.stream, row.partition_start), []).append((path, row, seqs))
    contained: set[str] = set()
    for members in by_partition.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: (-m[1].tick_count, m[0]))
        kept: list[np.ndarray] = []
        for path, _row, seqs in members:
            if any(np.isin(seqs, other).all() for other in kept):
                contained.add(path)
            else:
                kept.append(seqs)
    return contained


def _describe(layout: Layout, absolute: Path, partition: Partition) -> tuple[ArchiveFile, list[str], np.ndarray]:
    parquet = pq.ParquetFile(absolute)
    meta = parquet.schema_arrow.metadata or {}
    table = parquet.read(columns=["seq", "ts"])
    if table.num_rows == 0:
        raise ValueError("file holds no rows")
    jsonl_bytes = int(meta.get(META_JSONL_BYTES, b"0"))
    sources = [str(s) for s in orjson.loads(meta.get(META_SOURCES, b"[]"))]
    kind = "compacted" if absolute.name.startswith("hour-") else "part"
    size = absolute.stat().st_size
    row = describe_file(layout, partition, table, absolute, size, file_sha256(absolute), jsonl_bytes, kind)
    return row, sources, table.column("seq").to_numpy()
