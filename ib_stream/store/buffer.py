"""Hot tier on disk: durable JSON-lines segments per stream, with group commit and gap-free seq.

Appends are validated and sequenced on the caller's thread, then handed to one writer thread
that writes them to the stream's current 15-minute segment and fsyncs at most every
`fsync_interval_ms`; an append's future resolves only after its ticks are durable (and the
stream's seq high-water mark is recorded), at which point they also enter the in-memory hot cache.

A group is acknowledged whole or not at all. When a write, an fsync or the high-water record fails
(ENOSPC, EIO, ...), every segment the group touched is cut back to its size before the group and
fsynced, every unacknowledged append fails at once with `StorageFullError` / `StorageWriteError`,
and each stream's next seq goes back to the first seq not acknowledged. New appends are refused
promptly while the writer retries (`write_retry_seconds`, doubling up to `write_retry_max_seconds`):
a probe write that succeeds ends the outage by itself. The writer also notices an open segment
removed under it and copies it back from the open file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa

from ib_stream.clock import Clock
from ib_stream.domain import StreamKey, TickType, TickValidator
from ib_stream.errors import StorageError, TickValidationError, ValidationError
from ib_stream.settings import StorageConfig
from ib_stream.store.hotcache import HotStream
from ib_stream.store.layout import Layout, Segment
from ib_stream.store.recovery import bounds_above, find_holes, truncate_torn_tail
from ib_stream.store.schema import read_segment_file
from ib_stream.store.segment_io import SegmentIO
from ib_stream.store.seqmarks import LostRange, Mark, SeqMarks
from ib_stream.store.writer import STOP, AppendResult, BufferStats, Outage, SegmentWriter, Write, drain

__all__ = ["AppendResult", "BufferStats", "OnError", "Outage", "TickBuffer"]
log = logging.getLogger(__name__)
OnError = Literal["reject", "skip"]


class TickBuffer:
    """Durable JSON-lines buffer + hot cache; one instance owns the buffer directory."""

    def __init__(self, config: StorageConfig, layout: Layout, clock: Clock) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.stats = BufferStats()
        self.lost_on_open: list[LostRange] = []  # acknowledged ranges recovery found on no disk
        self._validators = {t: TickValidator(t) for t in TickType}
        self._next_seq: dict[StreamKey, int] = {}
        self._acked: dict[StreamKey, Mark] = {}  # highest acknowledged seq per stream
        self._open_paths: dict[StreamKey, Path] = {}  # each stream's segment the writer holds open
        self._hot: dict[StreamKey, HotStream] = {}
        self._lock = threading.Lock()  # seq assignment + enqueue order + outage state
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inflight: collections.deque[int] = collections.deque()  # recv_ts of unacknowledged writes
        self._last_recv = 0
        self._outage: Outage | None = None
        self._writer = SegmentWriter(config, layout, clock, self._queue, self.stats, self)
        self._thread: threading.Thread | None = None
        # Called from the writer thread, in seq order, with each batch once durable and visible.
        self.listeners: list[Callable[[StreamKey, list[dict[str, Any]]], None]] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def open(
        self, last_seqs: dict[StreamKey, int], archived_seqs: dict[StreamKey, int], marks: SeqMarks | None = None
    ) -> None:
        """Recover every stream (torn tails, lost ranges, next seq, hot cache) and start the writer thread."""
        self.layout.buffer_dir.mkdir(parents=True, exist_ok=True)
        self._writer.marks = marks
        known = marks.marks() if marks is not None else {}
        streams = set(self.layout.buffered_streams()) | set(last_seqs) | set(archived_seqs) | set(known)
        for stream in sorted(streams):
            self._recover_stream(stream, last_seqs.get(stream, 0), archived_seqs.get(stream, 0), known.get(stream))
        raised = {s: m for s, m in self._acked.items() if s not in known or known[s].seq < m.seq}
        if marks is not None and raised:
            marks.acknowledge(raised)
        self._thread = threading.Thread(target=self._writer.run, name="ib-stream-buffer-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush and fsync everything queued, then stop the writer."""
        if self._thread is not None:
            self._queue.put(STOP)
            self._thread.join()
            self._thread = None

    @property
    def io(self) -> SegmentIO:
        """The writer's file operations (a seam: a test swaps in one that fails on purpose)."""
        return self._writer.io

    @io.setter
    def io(self, io: SegmentIO) -> None:
        self._writer.io = io

    # ---- appends ---------------------------------------------------------------------------------
    async def append(self, contract_id: int, tick_type: TickType | str, tick: Any, source: str = "api") -> AppendResult:
        """Append one tick; return once it is durable."""
        return await self.append_batch(contract_id, tick_type, [tick], source)

    async def append_batch(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str = "api",
        on_error: OnError = "reject",
    ) -> AppendResult:
        """Append a batch to one stream; return once every tick of it is durable.

        `on_error="reject"` (default) stores nothing of a batch holding an invalid tick and raises
        the first error; `"skip"` stores the valid ticks and reports the invalid ones in `rejected`.
        A failed write raises `StorageFullError` / `StorageWriteError`: nothing of the batch is stored.
        """
        return await asyncio.wrap_future(self.submit(contract_id, tick_type, ticks, source, on_error))

    def submit(
        self,
        contract_id: int,
        tick_type: TickType | str,
        ticks: Sequence[Any],
        source: str = "api",
        on_error: OnError = "reject",
    ) -> Future[AppendResult]:
        """Validate, sequence and enqueue a batch from any thread; the future resolves when durable."""
        if self._writer.failed is not None:
            raise StorageError(f"buffer writer stopped after an error: {self._writer.failed}")
        if self._thread is None:
            raise StorageError("buffer is not open")
        stream = StreamKey(
            _contract_id(contract_id), TickType.parse(tick_type) if isinstance(tick_type, str) else tick_type
        )
        validator = self._validators[stream.tick_type]
        with self._lock:
            if self._outage is not None:  # refused at once while the writer waits for the disk
                self.stats.refused_ticks += len(ticks)
                raise self._outage.refusal()
            recv_ts = max(self.clock.now_ns(), self._last_recv)
            self._last_recv = recv_ts
            first = self._next_seq.get(stream, 1)
            try:
                records, rejected = _canonical_batch(validator, ticks, first, recv_ts, source, on_error)
            except TickValidationError:
                self.stats.rejected_ticks += len(ticks)
                raise
            self.stats.rejected_ticks += len(rejected)
            future: Future[AppendResult] = Future()
            # Once submitted an append cannot be un-written: a running future cannot be cancelled, so
            # a caller cancelled while waiting (shutdown) never breaks the writer's acknowledgement.
            future.set_running_or_notify_cancel()
            if not records:
                future.set_result(AppendResult(stream, first, first - 1, 0, rejected))
                return future
            data = b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records])
            self._next_seq[stream] = first + len(records)
            if stream not in self._hot:
                self._hot[stream] = HotStream(stream.tick_type, first)
            result = AppendResult(stream, first, first + len(records) - 1, len(records), rejected)
            self._inflight.append(recv_ts)
            self._queue.put(Write(stream, self.layout.segment_start(recv_ts), data, records, future, result))
        return future

    # ---- what the archiver and queries need -------------------------------------------------------------
    def streams(self) -> list[StreamKey]:
        return sorted(set(self._hot) | set(self._next_seq))

    def next_seq(self, stream: StreamKey) -> int:
        return self._next_seq.get(stream, 1)

    def hot(self, stream: StreamKey) -> HotStream | None:
        return self._hot.get(stream)

    def sealed_before_ns(self) -> int:
        """Segments ending at or before this instant are complete and durable."""
        with self._lock:
            oldest_inflight = self._inflight[0] if self._inflight else None
        now = self.clock.now_ns()
        return self.layout.segment_start(min(now, oldest_inflight) if oldest_inflight is not None else now)

    def sealed_segments(self, stream: StreamKey) -> list[Segment]:
        """A stream's segments whose window has closed and whose writes are all durable."""
        limit = self.sealed_before_ns()
        return [s for s in self.layout.segments(stream) if s.end_ns <= limit]

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive and has not stopped for good (it may be waiting for the disk)."""
        return self._writer.failed is None and self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """Why appends fail now: the storage outage, or the error that stopped the writer."""
        outage = self._outage
        return outage.error if outage is not None else self._writer.failed

    @property
    def outage(self) -> Outage | None:
        """The storage outage the writer is waiting out, if any."""
        return self._outage

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._inflight)

    def acked(self) -> dict[StreamKey, Mark]:
        """Each stream's highest acknowledged seq (recovered at open, then raised by every commit)."""
        with self._lock:
            return dict(self._acked)

    # ---- lost ranges while running -------------------------------------------------------------------
    def find_lost(self, archived_seqs: Callable[[], dict[StreamKey, int]]) -> list[LostRange]:
        """Acknowledged seqs above the archived watermark that no segment holds now (segments removed).

        A stream whose open segment is missing is skipped: the writer copies that one back from the open file.
        """
        with self._lock:
            acked, open_paths = dict(self._acked), dict(self._open_paths)
        before = archived_seqs()
        listed = {}
        for stream in acked:
            path = open_paths.get(stream)
            if path is None or path.exists():
                listed[stream] = bounds_above(self.layout.segments(stream), before.get(stream, 0))
        archived = archived_seqs()  # read again after listing: retention deletes only archived segments
        holes = [h for s, b in listed.items() for h in find_holes(s, b, archived.get(s, 0), acked[s])]
        return [self._span_from_hot(h) for h in holes]

    def _span_from_hot(self, hole: LostRange) -> LostRange:
        hot = self._hot.get(hole.stream)
        if hot is None:
            return hole
        stamps = []
        for chunk in hot.snapshot().chunks:
            if chunk.last_seq >= hole.first_seq and chunk.first_seq <= hole.last_seq:
                seq = chunk.table.column("seq").to_numpy()
                ts = chunk.table.column("ts").to_numpy().view(np.int64)
                stamps.append(ts[(seq >= hole.first_seq) & (seq <= hole.last_seq)])
        held = np.concatenate(stamps) if stamps else np.empty(0, np.int64)
        if not held.size:
            return hole
        return LostRange(hole.stream, hole.first_seq, hole.last_seq, int(held.min()), int(held.max()))

    # ---- recovery ------------------------------------------------------------------------------------
    def _recover_stream(self, stream: StreamKey, catalog_last: int, archived: int, mark: Mark | None) -> None:
        segments = self.layout.segments(stream)
        for segment in segments:
            torn = truncate_torn_tail(segment.path)
            if torn is not None:
                self.stats.torn_lines_truncated += 1
                self.stats.torn_files.append(str(segment.path))
                log.warning("truncated a torn last line in %s (%d bytes kept of %d)", segment.path, *torn)
        bounds = bounds_above(segments, archived)
        self.lost_on_open += find_holes(stream, bounds, archived, mark)
        on_disk = Mark(bounds[-1].last_seq, bounds[-1].last_ts, 0) if bounds else None
        acked = max((m for m in (mark, on_disk) if m is not None), key=lambda m: m.seq, default=None)
        if acked is not None:
            self._acked[stream] = acked
        # Never reuse a seq: continue after the highest ever acknowledged, even when its segment is gone.
        self._next_seq[stream] = max(catalog_last, archived, acked.seq if acked else 0) + 1
        # Warm the hot tier with what only the buffer holds (seq > archived): parsing JSON is the
        # slow part of a restart, and archived ticks are answered from Parquet just as exactly.
        hot = HotStream(stream.tick_type, archived + 1)
        for b in bounds:
            if b.last_seq <= archived:
                continue
            table, _ = read_segment_file(b.segment.path, stream.tick_type)
            seq = table.column("seq").to_numpy()
            if seq.size and seq[0] > archived + 1 and hot.snapshot().chunks == ():
                hot = HotStream(stream.tick_type, int(seq[0]))  # the seqs below are lost (reported above)
            hot.add_table(table.filter(pa.array(seq > archived)))
        self._hot[stream] = hot

    # ---- the writer thread's host (WriterHost) ---------------------------------------------------------
    def acknowledged(self, writes: list[Write], marks: Mapping[StreamKey, Mark]) -> None:
        """A group is durable and its marks recorded: into the hot cache, to the listeners, then resolved."""
        for item in writes:
            self._hot[item.stream].add(item.data, item.result.count)
            for listener in self.listeners:
                try:
                    listener(item.stream, item.records)
                except Exception:  # a listener must never stop the writer
                    log.exception("buffer listener failed")
            self.stats.ticks_written += item.result.count
            self.stats.batches_written += 1
        with self._lock:
            for _ in writes:
                self._inflight.popleft()
            self._acked.update(marks)
        for item in writes:
            item.future.set_result(item.result)

    def refuse_all(self, outage: Outage, unwritten: list[Write]) -> list[Any]:
        """Enter an outage: drain the queue and rewind each stream's next seq to its first unacknowledged one."""
        with self._lock:
            failed: list[Any] = unwritten + drain(self._queue, None)
            for item in sorted((w for w in failed if w is not STOP), key=lambda w: -w.result.first_seq):
                self._next_seq[item.stream] = item.result.first_seq  # ends at each stream's lowest: gap-free
            self._inflight.clear()  # everything unacknowledged is in `failed`
            self._outage = outage
        return failed

    def update_outage(self, outage: Outage) -> None:
        with self._lock:
            self._outage = outage

    def resume(self) -> None:
        with self._lock:
            self._outage = None

    def segment_opened(self, stream: StreamKey, path: Path | None) -> None:
        with self._lock:
            if path is None:
                self._open_paths.pop(stream, None)
            else:
                self._open_paths[stream] = path


def _canonical_batch(
    validator: TickValidator, ticks: Iterable[Any], first: int, recv_ts: int, source: str, on_error: OnError
) -> tuple[list[dict[str, Any]], tuple[TickValidationError, ...]]:
    canonical = validator.canonical
    records: list[dict[str, Any]] = []
    rejected: list[TickValidationError] = []
    seq = first
    for index, tick in enumerate(ticks):
        try:
            records.append(canonical(tick, seq, recv_ts, source, index))
        except TickValidationError as e:
            if on_error == "reject":
                raise
            rejected.append(e)
            continue
        seq += 1
    return records, tuple(rejected)


def _contract_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise ValidationError("contract_id", value, "must be an integer") from None
    return value
