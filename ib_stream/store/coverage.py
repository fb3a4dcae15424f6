"""Coverage of a stream: the time intervals held (archive files + hot tier), the holes between them, and the
gap ledger's account of why data is missing. Used by `GET /v2/contracts/{id}/coverage` and `ib-stream coverage`.

Works on any `QueryEngine` — the service's, or `open_readonly_engine()` against a data root another
process writes. Coverage is exact for the hot tier (from tick times) and known per archive file (one
file per stream and partition hour) for the archive: a hole inside one archived hour is not seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey
from ib_stream.store.gaps import GapLedger, gap_summary
from ib_stream.store.hotcache import Chunk
from ib_stream.store.query import QueryEngine
from ib_stream.times import iso_us

GAP_REASON_NO_DATA: Final = "no data"
GAP_REASONS_NOTE: Final = (
    "`gaps` are holes in the data longer than min_gap (reason 'no data', or the ledger's reason when a recorded "
    "gap overlaps); `recorded_gaps` is the gap ledger: disconnects (with the IB code), stale feeds, an unreachable "
    "broker, service downtime and crashes, refused subscriptions, each with its backfill state"
)


@dataclass(slots=True)
class Holding:
    """What the store holds of one stream: archive and hot tier, and the time intervals covered."""

    stream: StreamKey
    archive_files: int = 0
    archive_ticks: int = 0
    hot_ticks: int = 0  # hot ticks not (yet) in the archive
    first_ns: int | None = None
    last_ns: int | None = None
    last_seq: int = 0
    archive_range: tuple[int, int] | None = None
    hot_range: tuple[int, int] | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)  # [first tick, last tick] per file / hot run

    @property
    def tick_count(self) -> int:
        return self.archive_ticks + self.hot_ticks

    def summary(self) -> dict[str, Any]:
        return {
            "tick_type": self.stream.tick_type.value,
            "tick_count": self.tick_count,
            "first_tick": _iso_or_none(self.first_ns),
            "last_tick": _iso_or_none(self.last_ns),
            "last_seq": self.last_seq,
            "archive": {"files": self.archive_files, "ticks": self.archive_ticks, **_range(self.archive_range)},
            "hot": {"ticks": self.hot_ticks, **_range(self.hot_range)},
        }


def stream_holding(engine: QueryEngine, stream: StreamKey, gap_ns: int | None = None) -> Holding:
    """Read the catalog and the hot tier of one stream (blocking: run it in the store's executor).

    With `gap_ns`, `spans` also lists the runs of not-yet-archived hot ticks, split at holes of at
    least `gap_ns` (exact: from their timestamps); archive files count as one span each.
    """
    holding = Holding(stream)
    files = engine.index.files(stream)
    catalog_last = max((f.last_seq for f in files), default=0)
    holding.archive_files = len(files)
    holding.archive_ticks = sum(f.tick_count for f in files)
    holding.spans = [(f.start_time, f.end_time) for f in files]
    if files:
        holding.archive_range = (min(f.start_time for f in files), max(f.end_time for f in files))
    chunks = engine.hot.snapshot(stream).chunks
    if chunks:
        # Hot seqs are contiguous, so the ticks past the catalog's last seq are counted exactly.
        holding.hot_ticks = sum(max(0, c.last_seq - max(catalog_last, c.first_seq - 1)) for c in chunks)
        holding.hot_range = (min(c.min_ts for c in chunks), max(c.max_ts for c in chunks))
        if gap_ns is not None:
            holding.spans += hot_spans(chunks, catalog_last, gap_ns)
    holding.last_seq = max(catalog_last, chunks[-1].last_seq if chunks else 0)
    ranges = [r for r in (holding.archive_range, holding.hot_range) if r is not None]
    if ranges:
        holding.first_ns = min(lo for lo, _ in ranges)
        holding.last_ns = max(hi for _, hi in ranges)
    return holding


def hot_spans(chunks: Sequence[Chunk], after_seq: int, gap_ns: int) -> list[tuple[int, int]]:
    """[first, last] tick time of each run of hot ticks with seq > after_seq, split at holes >= gap_ns."""
    parts = []
    for chunk in chunks:
        if chunk.last_seq > after_seq:
            offset = max(0, after_seq - chunk.first_seq + 1)
            parts.append(chunk.table.column("ts").slice(offset).to_numpy().view(np.int64))
    if not parts:
        return []
    ts = np.sort(np.concatenate(parts))
    cuts = np.flatnonzero(np.diff(ts) >= gap_ns)
    firsts, lasts = ts[np.concatenate(([0], cuts + 1))], ts[np.concatenate((cuts, [len(ts) - 1]))]
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def merge_spans(spans: list[tuple[int, int]], min_gap_ns: int) -> list[tuple[int, int]]:
    """Merge [lo, hi] spans that overlap, touch or are separated by less than `min_gap_ns`."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo - merged[-1][1] < max(min_gap_ns, 1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def stream_coverage(engine: QueryEngine, ledger: GapLedger | None, stream: StreamKey, gap_ns: int) -> dict[str, Any]:
    """The coverage of one stream: what is held, the merged intervals, the holes and the recorded gaps."""
    holding = stream_holding(engine, stream, gap_ns)
    intervals = merge_spans(holding.spans, gap_ns)
    recorded = ledger.gaps(stream.contract_id, tick_type=stream.tick_type) if ledger is not None else []
    holes = []
    for (_, prev_hi), (lo, _) in itertools.pairwise(intervals):
        why = [g for g in recorded if g.overlaps(prev_hi, lo)]
        holes.append(
            {
                "start": iso_us(prev_hi),
                "end": iso_us(lo),
                "duration_seconds": (lo - prev_hi) / NS_PER_SECOND,
                "reason": ", ".join(sorted({g.reason for g in why})) or GAP_REASON_NO_DATA,
                "recorded_gaps": [g.id for g in why],
            }
        )
    return {
        **holding.summary(),
        "intervals": [
            {"start": iso_us(lo), "end": iso_us(hi), "duration_seconds": (hi - lo) / NS_PER_SECOND}
            for lo, hi in intervals
        ],
        "gaps": holes,
        "recorded_gaps": [gap_summary(g) for g in recorded],
    }


def _range(span: tuple[int, int] | None) -> dict[str, Any]:
    first, last = span if span is not None else (None, None)
    return {"first_tick": _iso_or_none(first), "last_tick": _iso_or_none(last)}


def _iso_or_none(ns: int | None) -> str | None:
    return None if ns is None else iso_us(ns)
