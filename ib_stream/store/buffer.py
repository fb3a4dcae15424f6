"""Hot tier on disk: durable JSON-lines segments per stream, with group commit and gap-free seq.

Appends are validated and sequenced on the caller's thread, then handed to one writer thread
that writes them to the stream's current 15-minute segment and fsyncs at most every
`fsync_interval_ms`; an append's future resolves only after its ticks are durable, at which
point they also enter the in-memory hot cache.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import pyarrow as pa

from ib_stream.clock import Clock
from ib_stream.domain import StreamKey, TickType, TickValidator
from ib_stream.errors import StorageError, TickValidationError, ValidationError
from ib_stream.settings import StorageConfig
from ib_stream.store.hotcache import HotStream
from ib_stream.store.layout import Layout, Segment, fsync_dir
from ib_stream.store.schema import read_segment_file, segment_last_seq

log = logging.getLogger(__name__)
OnError = Literal["reject", "skip"]
_STOP = object()
_IDLE_WAKE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append stored: the stream, the seq range given to its ticks and what was rejected."""

    stream: StreamKey
    first_seq: int
    last_seq: int
    count: int
    rejected: tuple[TickValidationError, ...] = ()


@dataclass(slots=True)
class BufferStats:
    """Counters of the buffer since start (exposed as metrics by the service)."""

    ticks_written: int = 0
    batches_written: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    rejected_ticks: int = 0
    torn_lines_truncated: int = 0
    torn_files: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Write:
    stream: StreamKey
    segment_start: int
    data: bytes
    records: list[dict[str, Any]]
    future: Future[AppendResult]
    result: AppendResult


class TickBuffer:
    """Durable JSON-lines buffer + hot cache; one instance owns the buffer directory."""

    def __init__(self, config: StorageConfig, layout: Layout, clock: Clock) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.stats = BufferStats()
        self._validators = {t: TickValidator(t) for t in TickType}
        self._next_seq: dict[StreamKey, int] = {}
        self._hot: dict[StreamKey, HotStream] = {}
        self._lock = threading.Lock()  # seq assignment + enqueue order
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inflight: collections.deque[int] = collections.deque()  # recv_ts of unacknowledged writes
        self._last_recv = 0
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        # Called from the writer thread, in seq order, with each batch once durable and visible.
        self.listeners: list[Callable[[StreamKey, list[dict[str, Any]]], None]] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def open(self, last_seqs: dict[StreamKey, int], archived_seqs: dict[StreamKey, int]) -> None:
        """Recover every stream (torn tails, next seq, hot cache) and start the writer thread."""
        self.layout.buffer_dir.mkdir(parents=True, exist_ok=True)
        streams = set(self.layout.buffered_streams()) | set(last_seqs) | set(archived_seqs)
        for stream in sorted(streams):
            self._recover_stream(stream, last_seqs.get(stream, 0), archived_seqs.get(stream, 0))
        self._thread = threading.Thread(target=self._writer, name="ib-stream-buffer-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush and fsync everything queued, then stop the writer."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

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
        if self._failed is not None:
            raise StorageError(f"buffer writer stopped after an error: {self._failed}")
        if self._thread is None:
            raise StorageError("buffer is not open")
        stream = StreamKey(
            _contract_id(contract_id), TickType.parse(tick_type) if isinstance(tick_type, str) else tick_type
        )
        validator = self._validators[stream.tick_type]
        with self._lock:
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
            self._queue.put(_Write(stream, self.layout.segment_start(recv_ts), data, records, future, result))
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
        """Whether appends are accepted: the writer thread is alive and has not failed."""
        return self._failed is None and self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the writer, if one did."""
        return self._failed

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._inflight)

    # ---- recovery ------------------------------------------------------------------------------------
    def _recover_stream(self, stream: StreamKey, catalog_last: int, archived: int) -> None:
        segments = self.layout.segments(stream)
        for segment in segments:
            self._truncate_torn_tail(segment)
        last_seq = max(catalog_last, archived, _last_seq_on_disk(segments))
        self._next_seq[stream] = last_seq + 1
        # Warm the hot tier with what only the buffer holds (seq > archived): parsing JSON is the
        # slow part of a restart, and archived ticks are answered from Parquet just as exactly.
        hot = HotStream(stream.tick_type, archived + 1)
        for segment in segments:
            if segment_last_seq(segment.path, stream.tick_type) <= archived:
                continue
            table, _ = read_segment_file(segment.path, stream.tick_type)
            seq = table.column("seq").to_numpy()
            if seq.size and seq[0] > archived + 1 and hot.snapshot().chunks == ():
                log.error(
                    "stream %s: ticks %d..%d are in neither the archive nor the buffer",
                    stream,
                    archived + 1,
                    seq[0] - 1,
                )
                hot = HotStream(stream.tick_type, int(seq[0]))
            hot.add_table(table.filter(pa.array(seq > archived)))
        self._hot[stream] = hot

    def _truncate_torn_tail(self, segment: Segment) -> None:
        path = segment.path
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = _last_newline_end(handle, size)
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        self.stats.torn_lines_truncated += 1
        self.stats.torn_files.append(str(path))
        log.warning("truncated a torn last line in %s (%d bytes kept of %d)", path, keep, size)

    # ---- writer thread ----------------------------------------------------------------------------
    def _writer(self) -> None:
        interval = self.config.fsync_interval_ms / 1000.0
        handles: dict[StreamKey, tuple[int, IO[bytes]]] = {}
        dirty: dict[int, IO[bytes]] = {}
        pending: list[_Write] = []
        last_fsync = time.monotonic()
        stopping = False
        try:
            while True:
                wait = max(0.0, interval - (time.monotonic() - last_fsync)) if pending else _IDLE_WAKE_SECONDS
                items = _drain(self._queue, None if stopping else wait)
                for item in items:
                    if item is _STOP:
                        stopping = True
                        continue
                    handle = self._handle_for(item, handles, dirty)
                    handle.write(item.data)
                    pending.append(item)
                due = stopping or interval == 0 or time.monotonic() - last_fsync >= interval
                if pending and due:
                    self._commit(pending, dirty)
                    last_fsync = time.monotonic()
                    pending = []
                self._close_ended(handles, dirty)
                if stopping and not pending and self._queue.empty():
                    break
        except BaseException as e:  # a write failure stops the buffer; no append is acknowledged after it
            self._failed = e
            log.exception("buffer writer failed")
            error = StorageError(f"buffer write failed: {e}")
            for item in pending + [i for i in _drain(self._queue, None) if i is not _STOP]:
                item.future.set_exception(error)
        finally:
            for _, handle in handles.values():
                handle.close()

    def _handle_for(
        self, item: _Write, handles: dict[StreamKey, tuple[int, IO[bytes]]], dirty: dict[int, IO[bytes]]
    ) -> IO[bytes]:
        current = handles.get(item.stream)
        if current is not None and current[0] == item.segment_start:
            handle = current[1]
        else:
            if current is not None:
                self._fsync_close(current[1], dirty)
            segment = self.layout.segment(item.stream, item.segment_start)
            created = not segment.path.exists()
            if created:
                _make_dirs_durably(segment.path.parent, self.layout.buffer_dir)
            handle = open(segment.path, "ab")  # noqa: SIM115 - kept open across writes
            if created:
                fsync_dir(segment.path.parent)  # the new file's name survives a power loss
            handles[item.stream] = (item.segment_start, handle)
        dirty[id(handle)] = handle
        return handle

    def _commit(self, pending: list[_Write], dirty: dict[int, IO[bytes]]) -> None:
        started = time.perf_counter()
        for handle in dirty.values():
            handle.flush()
            os.fsync(handle.fileno())
        dirty.clear()
        self.stats.fsync_seconds += time.perf_counter() - started
        self.stats.fsyncs += 1
        for item in pending:
            self._hot[item.stream].add(item.data, item.result.count)
            for listener in self.listeners:
                try:
                    listener(item.stream, item.records)
                except Exception:  # a listener must never stop the writer
                    log.exception("buffer listener failed")
            self.stats.ticks_written += item.result.count
            self.stats.batches_written += 1
        with self._lock:
            for _ in pending:
                self._inflight.popleft()
        for item in pending:
            item.future.set_result(item.result)

    def _close_ended(self, handles: dict[StreamKey, tuple[int, IO[bytes]]], dirty: dict[int, IO[bytes]]) -> None:
        now = self.clock.now_ns()
        for stream, (start, handle) in list(handles.items()):
            if start + self.layout.segment_ns <= now and id(handle) not in dirty:
                handle.close()
                del handles[stream]

    def _fsync_close(self, handle: IO[bytes], dirty: dict[int, IO[bytes]]) -> None:
        # A rotated-away file is closed only after the next commit made it durable.
        if id(handle) in dirty:
            handle.flush()
            os.fsync(handle.fileno())
        dirty.pop(id(handle), None)
        handle.close()


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


def _make_dirs_durably(directory: Path, root: Path) -> None:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


def _drain(q: queue.SimpleQueue[Any], timeout: float | None) -> list[Any]:
    items: list[Any] = []
    try:
        items.append(q.get(timeout=timeout) if timeout is not None else q.get_nowait())
        while True:
            items.append(q.get_nowait())
    except queue.Empty:
        pass
    return items


def _last_newline_end(handle: IO[bytes], size: int) -> int:
    position = size
    while position > 0:
        step = min(65_536, position)
        position -= step
        handle.seek(position)
        found = handle.read(step).rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0


def _last_seq_on_disk(segments: list[Segment]) -> int:
    for segment in reversed(segments):
        with open(segment.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                continue
            start = max(0, size - 65_536)
            handle.seek(start)
            lines = handle.read().rstrip(b"\n").rsplit(b"\n", 1)
            try:
                return int(orjson.loads(lines[-1])["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise StorageError(f"segment {segment.path} ends with an unreadable line: {e}") from e
    return 0


def _contract_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise ValidationError("contract_id", value, "must be an integer") from None
    return value
