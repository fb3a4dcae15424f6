"""Reconciling the buffer with what was acknowledged: torn tails, segment seq bounds, and lost seq ranges.

Within a stream, segments hold contiguous seq ranges in window order (seq and the arrival clock both only
grow), and every acknowledged seq above the archived watermark is in some segment. So the acknowledged seqs
that are on no disk any more are the holes in

    archived + 1 .. acked  (the stream's high-water mark)

not covered by a segment. `find_holes` names them with the event times either side; start-up, the buffer
check of the maintenance job, archival and `ib-stream verify` use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

import orjson

from ib_stream.domain import StreamKey
from ib_stream.store.layout import Segment
from ib_stream.store.schema import read_segment_file
from ib_stream.store.seqmarks import LostRange, Mark

_TAIL_BYTES = 65_536
_READ_STEPS = (4096, _TAIL_BYTES)  # a tick's line is a few hundred bytes: the first read almost always does


@dataclass(frozen=True, slots=True)
class SegmentBounds:
    """The first and last complete tick of a segment file: seq and event time."""

    segment: Segment
    first_seq: int
    first_ts: int
    last_seq: int
    last_ts: int


def segment_bounds(segment: Segment) -> SegmentBounds | None:
    """Read a segment's first and last complete lines; None when it holds none or is gone."""
    try:
        with open(segment.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            for step in _READ_STEPS:
                whole = size <= step  # the head and the tail read are the whole file
                handle.seek(0)
                head = handle.read(step)
                handle.seek(max(0, size - step))
                tail = handle.read(step)
                end = tail.rfind(b"\n")
                if end < 0 and whole:
                    return None  # not one complete line
                first_end, last_start = head.find(b"\n"), tail.rfind(b"\n", 0, max(end, 0)) + 1
                if end >= 0 and first_end >= 0 and (whole or last_start > 0):
                    return _bounds(segment, head[:first_end], tail[last_start:end])
    except FileNotFoundError:
        return None
    return _bounds(segment, b"", b"")  # lines longer than the reads: parse the file


def bounds_above(segments: Sequence[Segment], archived: int) -> list[SegmentBounds]:
    """The bounds of the segments that may hold seqs above `archived`, in window order.

    Seqs only grow from one segment to the next, so the newest segments are read first and the walk stops
    at the first one starting at or below `archived + 1`: the older ones (kept for retention) are not read.
    """
    found: list[SegmentBounds] = []
    for segment in reversed(segments):
        b = segment_bounds(segment)
        if b is None:
            continue
        found.append(b)
        if b.first_seq <= archived + 1:
            break
    return found[::-1]


def find_holes(
    stream: StreamKey,
    bounds: Sequence[SegmentBounds],
    archived: int,
    acked: Mark | None,
    before_ts: int | None = None,
) -> list[LostRange]:
    """The acknowledged seqs above `archived` that no segment holds, with the event times either side.

    `before_ts` is the event time of the last archived tick, when known (the start of a hole right above it).
    """
    holes: list[LostRange] = []
    expected = archived + 1
    previous_ts = before_ts
    for b in bounds:
        if b.last_seq >= expected:
            if b.first_seq > expected:
                holes.append(_hole(stream, expected, b.first_seq - 1, previous_ts, b.first_ts))
            expected = b.last_seq + 1
        previous_ts = b.last_ts
    if acked is not None and acked.seq >= expected:
        holes.append(_hole(stream, expected, acked.seq, previous_ts, acked.ts))
    return holes


def unrecorded(holes: Iterable[LostRange], recorded: Iterable[LostRange]) -> list[LostRange]:
    """The parts of `holes` that no recorded range of the same stream covers."""
    known = sorted((r.first_seq, r.last_seq) for r in recorded)
    out: list[LostRange] = []
    for hole in holes:
        pieces = [(hole.first_seq, hole.last_seq)]
        for lo, hi in known:
            pieces = [p for a, b in pieces for p in ((a, min(b, lo - 1)), (max(a, hi + 1), b)) if p[0] <= p[1]]
        out += [LostRange(hole.stream, a, b, hole.start_ns, hole.end_ns, hole.detail, hole.gap_id) for a, b in pieces]
    return out


def truncate_torn_tail(path: os.PathLike[str]) -> tuple[int, int] | None:
    """Cut a segment back to its last complete line (fsynced); return (bytes kept, size) when it was torn."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        keep = _last_newline_end(handle, size)
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return keep, size


def _bounds(segment: Segment, first_line: bytes, last_line: bytes) -> SegmentBounds | None:
    try:
        first, last = orjson.loads(first_line), orjson.loads(last_line)
        return SegmentBounds(segment, int(first["seq"]), int(first["ts"]), int(last["seq"]), int(last["ts"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        table, _ = read_segment_file(segment.path, segment.stream.tick_type)  # raises CorruptFileError naming it
        if table.num_rows == 0:
            return None
        seq, ts = table.column("seq"), table.column("ts").cast("int64")
        return SegmentBounds(
            segment, int(seq[0].as_py()), int(ts[0].as_py()), int(seq[-1].as_py()), int(ts[-1].as_py())
        )


def _hole(stream: StreamKey, first: int, last: int, before_ts: int | None, after_ts: int) -> LostRange:
    start = after_ts if before_ts is None else min(before_ts, after_ts)
    end = after_ts if before_ts is None else max(before_ts, after_ts)
    return LostRange(stream, first, last, start, end)


def _last_newline_end(handle: IO[bytes], size: int) -> int:
    position = size
    while position > 0:
        step = min(_TAIL_BYTES, position)
        position -= step
        handle.seek(position)
        found = handle.read(step).rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0
