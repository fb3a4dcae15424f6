"""Hot tier in memory: each stream's recent ticks as Arrow chunks, a contiguous seq suffix."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ib_stream.domain import TickType
from ib_stream.store.schema import empty_table, jsonl_to_table

_TAIL_ROWS = 65_536  # rows kept as JSON lines before they are parsed into one Arrow chunk
_MAX_CHUNKS = 64  # more chunks than this are merged so a query touches few arrays
_CONVERTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ib-stream-hot")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Converted ticks with the summary a query or an eviction needs without looking inside."""

    table: pa.Table
    first_seq: int
    last_seq: int
    min_ts: int
    max_ts: int
    max_recv_ts: int


@dataclass(frozen=True, slots=True)
class HotSnapshot:
    """What a query sees of a stream's hot tier: every tick with seq >= lower_seq."""

    lower_seq: int
    chunks: tuple[Chunk, ...]

    def select(self, start_ns: int, end_ns: int, tick_type: TickType) -> pa.Table:
        """Return the held ticks with start_ns <= ts < end_ns (unsorted)."""
        parts = []
        for chunk in self.chunks:
            if chunk.max_ts < start_ns or chunk.min_ts >= end_ns:
                continue
            if start_ns <= chunk.min_ts and chunk.max_ts < end_ns:
                parts.append(chunk.table)
                continue
            ts = chunk.table.column("ts").to_numpy().view(np.int64)
            mask = (ts >= start_ns) & (ts < end_ns)
            if mask.any():
                parts.append(chunk.table.filter(pa.array(mask)))
        if not parts:
            return empty_table(tick_type)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


class HotStream:
    """One stream's hot tier. Appended from the writer thread, read from query threads."""

    def __init__(self, tick_type: TickType, lower_seq: int) -> None:
        self.tick_type = tick_type
        self._lock = threading.Lock()
        self._lower_seq = lower_seq  # the first seq held (everything below is archived)
        self._chunks: list[Chunk] = []
        self._tail: list[tuple[bytes, int]] = []  # JSON lines not yet parsed, with their row counts
        self._tail_rows = 0
        self._generation = 0  # bumped when the tail is converted in line, so a background result is dropped
        self._scheduled = False

    @property
    def lower_seq(self) -> int:
        with self._lock:
            return self._lower_seq

    def add(self, encoded: bytes, rows: int) -> None:
        """Append durable ticks as the JSON lines the buffer wrote (seq-contiguous with what is held).

        They are parsed into Arrow in bulk on a converter thread by Arrow's JSON reader, which runs
        without the GIL: neither the appending threads nor the buffer's writer wait for it.
        """
        with self._lock:
            self._tail.append((encoded, rows))
            self._tail_rows += rows
            if self._tail_rows >= _TAIL_ROWS and not self._scheduled:
                self._scheduled = True
                _CONVERTER.submit(self._convert_in_background)

    def _convert_in_background(self) -> None:
        with self._lock:
            taken, generation = list(self._tail), self._generation
        try:
            table = jsonl_to_table(b"".join(blob for blob, _ in taken), self.tick_type)
        except Exception:  # the snapshot path converts (and reports) in line instead
            log.exception("hot tier conversion failed")
            with self._lock:
                self._scheduled = False
            return
        with self._lock:
            self._scheduled = False
            if generation != self._generation:
                return  # a query converted the tail meanwhile
            del self._tail[: len(taken)]
            self._tail_rows -= sum(rows for _, rows in taken)
            self._chunks.append(_chunk(table))
            self._merge_if_many()
            if self._tail_rows >= _TAIL_ROWS:
                self._scheduled = True
                _CONVERTER.submit(self._convert_in_background)

    def add_table(self, table: pa.Table) -> None:
        """Append an already converted table (warm-up from segment files)."""
        if table.num_rows:
            with self._lock:
                self._convert_tail()
                self._chunks.append(_chunk(table))
                self._merge_if_many()

    def snapshot(self) -> HotSnapshot:
        with self._lock:
            self._convert_tail()
            return HotSnapshot(self._lower_seq, tuple(self._chunks))

    def evict(self, archived_seq: int, keep_after_recv_ns: int) -> int:
        """Drop leading chunks that are archived and older than the hot window; return rows dropped."""
        dropped = 0
        with self._lock:
            self._convert_tail()
            while self._chunks:
                head = self._chunks[0]
                if head.last_seq > archived_seq or head.max_recv_ts >= keep_after_recv_ns:
                    break
                self._chunks.pop(0)
                self._lower_seq = head.last_seq + 1
                dropped += head.table.num_rows
        return dropped

    def _convert_tail(self) -> None:
        if self._tail:
            self._chunks.append(_chunk(jsonl_to_table(b"".join(blob for blob, _ in self._tail), self.tick_type)))
            self._tail = []
            self._tail_rows = 0
            self._generation += 1
            self._merge_if_many()

    def _merge_if_many(self) -> None:
        if len(self._chunks) > _MAX_CHUNKS:
            # Merge the older half; keep recent chunks small so eviction stays fine-grained.
            half = len(self._chunks) // 2
            merged = pa.concat_tables([c.table for c in self._chunks[:half]]).combine_chunks()
            self._chunks[:half] = [_chunk(merged)]


def _chunk(table: pa.Table) -> Chunk:
    seq = table.column("seq").to_numpy()
    ts = table.column("ts").to_numpy().view(np.int64)
    recv = table.column("recv_ts").to_numpy().view(np.int64)
    return Chunk(table, int(seq[0]), int(seq[-1]), int(ts.min()), int(ts.max()), int(recv.max()))
