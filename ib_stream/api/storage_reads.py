"""Blocking reads behind `/v3/storage/*` (what IB-Studies' `v3-info` and `v3-files` commands ask): the files the
store holds — Parquet archive files from the catalog, JSON-lines buffer segments from the buffer directory — with
their sizes and times, and a summary of how well the archive compresses the buffer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ib_stream.domain import StreamKey, TickType
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_us

MB: Final = 1024 * 1024
FILE_FORMATS: Final = ("all", "parquet", "json")  # json: the JSON-lines buffer segments


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file of the store as `/v3/storage/files` lists it."""

    stream: StreamKey
    kind: str  # "archive" (Parquet) or "buffer" (JSON lines)
    relative_path: str
    size_bytes: int
    modified_ns: int
    ticks: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "relative_path": self.relative_path,
            "tick_type": self.stream.tick_type.value,
            "kind": self.kind,
            "format": "parquet" if self.kind == "archive" else "json",
            "size_bytes": self.size_bytes,
            "size_mb": self.size_bytes / MB,
            "modified": iso_us(self.modified_ns),
            "ticks": self.ticks,
        }


def stored_files(store: TickStore, streams: Iterable[StreamKey], fmt: str = "all") -> list[StoredFile]:
    """The archive files (`parquet`), buffer segments (`json`) or both of `streams`, newest first."""
    layout = store.layout
    root = layout.archive_dir.parent
    found: list[StoredFile] = []
    for stream in streams:
        if fmt in ("all", "parquet"):
            for f in store.index.files(stream):
                path = layout.absolute(f.file_path)
                modified = _mtime_ns(path)
                if modified is not None:  # retired by compaction since the catalog was read
                    found.append(
                        StoredFile(stream, "archive", _relative(path, root), f.file_size_bytes, modified, f.tick_count)
                    )
        if fmt in ("all", "json"):
            for segment in layout.segments(stream):
                try:
                    stat = segment.path.stat()
                except FileNotFoundError:  # retired while we listed
                    continue
                found.append(
                    StoredFile(stream, "buffer", _relative(segment.path, root), stat.st_size, stat.st_mtime_ns, None)
                )
    return sorted(found, key=lambda f: (f.modified_ns, f.relative_path), reverse=True)


def storage_stats(store: TickStore) -> dict[str, Any]:
    """Totals per stream and over the store, and the `optimization_summary` IB-Studies prints."""
    streams = sorted(set(store.index.streams()) | set(store.layout.buffered_streams()))
    files = store.index.files()
    per_stream = []
    for stream in streams:
        mine = [f for f in files if f.stream == stream]
        segments = store.layout.segments(stream)
        per_stream.append(
            {
                "contract_id": stream.contract_id,
                "tick_type": stream.tick_type.value,
                "archive_files": len(mine),
                "archive_ticks": sum(f.tick_count for f in mine),
                "archive_size_mb": sum(f.file_size_bytes for f in mine) / MB,
                "buffer_segments": len(segments),
                "buffer_size_mb": sum(_size(s.path) for s in segments) / MB,
            }
        )
    archive_bytes = sum(f.file_size_bytes for f in files)
    archive_ticks = sum(f.tick_count for f in files)
    jsonl_bytes = sum(f.jsonl_bytes for f in files)
    buffer_bytes = sum(_size(s.path) for stream in streams for s in store.layout.segments(stream))
    buffer_files = sum(len(store.layout.segments(stream)) for stream in streams)
    return {
        "total_files": len(files) + buffer_files,
        "total_size_mb": (archive_bytes + buffer_bytes) / MB,
        "streams": per_stream,
        "optimization_summary": {
            "archive_format": "parquet (zstd, sorted by ts and seq, hourly partitions)",
            "buffer_format": "json lines (15-minute segments)",
            "archive_files": len(files),
            "archive_size_mb": archive_bytes / MB,
            "archive_ticks": archive_ticks,
            "bytes_per_tick": round(archive_bytes / archive_ticks, 3) if archive_ticks else None,
            "compression_ratio_vs_json": round(jsonl_bytes / archive_bytes, 3) if archive_bytes else None,
            "buffer_segments": buffer_files,
            "buffer_size_mb": buffer_bytes / MB,
            "contracts": len({s.contract_id for s in streams}),
            "tick_types": sorted({s.tick_type.value for s in streams}, key=[t.value for t in TickType].index),
        },
    }


def _relative(path: os.PathLike[str], root: os.PathLike[str]) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive (the archive moved by a setting)
        return os.fspath(path)


def _mtime_ns(path: os.PathLike[str]) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
