"""The buffer's one writer thread: appends each group of batches to its segments, fsyncs, records the seq
high-water marks, then acknowledges the group — whole, or not at all.

When a write, an fsync or the high-water record fails (ENOSPC, EIO, a SQLite error), every segment the
group touched is truncated to its size before the group and fsynced, the host fails every unacknowledged
append and refuses new ones (`WriterHost.refuse_all`), and the writer waits: after `write_retry_seconds`
(doubling up to `write_retry_max_seconds`) it probes the disk with a write of the failed group's size, and
the first probe that succeeds ends the outage (`WriterHost.resume`). Every `_OPEN_CHECK_SECONDS` it also
looks at the segments it holds open: one removed (or moved) under it is copied back from the open file.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ib_stream.clock import Clock
from ib_stream.domain import StreamKey
from ib_stream.errors import StorageError, StorageWriteError, TickValidationError
from ib_stream.settings import StorageConfig
from ib_stream.store.layout import Layout, temp_path
from ib_stream.store.segment_io import SegmentIO, write_error
from ib_stream.store.seqmarks import Mark, SeqMarks

log = logging.getLogger(__name__)
STOP = object()  # put on the queue to flush, fsync and stop the writer
_IDLE_WAKE_SECONDS = 0.5
_OPEN_CHECK_SECONDS = 0.2  # how often the writer looks for an open segment removed under it
_PROBE_BYTES = (64 << 10, 16 << 20)  # the write probe: the failed group's size, within these bounds


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
    write_failures: dict[str, int] = field(default_factory=lambda: {"full": 0, "io": 0})  # groups cut back, by kind
    refused_ticks: int = 0  # ticks not stored because the disk could not take them (cut back or refused)
    write_retries: int = 0  # probes of the disk during outages
    segments_restored: int = 0  # open segments removed under the writer and copied back
    lost_ticks: int = 0  # acknowledged ticks found on no disk (recorded as storage_lost)


@dataclass(slots=True)
class Write:
    """One sequenced batch on its way to disk."""

    stream: StreamKey
    segment_start: int
    data: bytes
    records: list[dict[str, Any]]
    future: Future[AppendResult]
    result: AppendResult


@dataclass(slots=True)
class Outage:
    """Storage refusing writes: the error appends get, since when and how often the writer retried."""

    error: StorageWriteError
    since_ns: int
    retries: int = 0
    next_retry_seconds: float = 0.0

    @property
    def kind(self) -> str:
        return "full" if self.error.code == "STORAGE_FULL" else "io"

    def refusal(self) -> StorageWriteError:
        return type(self.error)(self.error.message, details=dict(self.error.details))


class WriterHost(Protocol):
    """What the writer needs of the buffer it writes for (`TickBuffer`)."""

    def acknowledged(self, writes: list[Write], marks: Mapping[StreamKey, Mark]) -> None:
        """A group is durable and its marks recorded: make it visible and resolve its futures."""

    def refuse_all(self, outage: Outage, unwritten: list[Write]) -> list[Any]:
        """Enter the outage: every unacknowledged write (`unwritten` and the queue, drained: STOP may be among
        them), after rewinding each stream's next seq to the first of them."""

    def update_outage(self, outage: Outage) -> None:
        """A retry failed: what appends are told now."""

    def resume(self) -> None:
        """The outage is over: accept appends again."""

    def segment_opened(self, stream: StreamKey, path: Path | None) -> None:
        """The segment the writer holds open for a stream (None: none)."""


@dataclass(eq=False, slots=True)
class _OpenSegment:
    stream: StreamKey
    start_ns: int
    path: Path
    fd: int


@dataclass(slots=True)
class _Touched:
    segment: _OpenSegment
    size_before: int  # the file's size before the group: a failed group is cut back to it
    created: bool


@dataclass(slots=True)
class _State:
    current: dict[StreamKey, _OpenSegment] = field(default_factory=dict)
    group: dict[Path, _Touched] = field(default_factory=dict)
    pending: list[Write] = field(default_factory=list)
    last_open_check: float = 0.0

    def segments(self) -> list[_OpenSegment]:
        found = {id(s): s for s in self.current.values()}
        found.update({id(t.segment): t.segment for t in self.group.values()})
        return list(found.values())


class SegmentWriter:
    """The body of the buffer's writer thread (`run`) and its failure handling."""

    def __init__(
        self,
        config: StorageConfig,
        layout: Layout,
        clock: Clock,
        inbox: queue.SimpleQueue[Any],
        stats: BufferStats,
        host: WriterHost,
    ) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.inbox = inbox
        self.stats = stats
        self.host = host
        self.io = SegmentIO()  # every file operation goes through it (a seam for tests)
        self.marks: SeqMarks | None = None
        self.delay = config.write_retry_seconds  # the next retry's wait
        self._probe_bytes = _PROBE_BYTES[0]
        self._rollback: list[_Touched] = []  # a cut-back that failed, finished before writing again
        self.failed: BaseException | None = None  # an unexpected error (a bug, not the disk): the writer stopped

    def run(self) -> None:
        """Write until STOP; an unexpected error fails every unacknowledged append and stops for good."""
        interval = self.config.fsync_interval_ms / 1000.0
        state = _State()
        last_fsync = time.monotonic()
        stopping = False
        try:
            while True:
                wait = max(0.0, interval - (time.monotonic() - last_fsync)) if state.pending else _IDLE_WAKE_SECONDS
                items = collections.deque(drain(self.inbox, None if stopping else wait))
                try:
                    self._check_open_segments(state)
                    while items:
                        item = items.popleft()
                        if item is STOP:
                            stopping = True
                            continue
                        state.pending.append(item)
                        segment = self._segment_for(item, state)
                        with _at(segment.path):
                            self.io.write(segment.fd, item.data)
                    due = stopping or interval == 0 or time.monotonic() - last_fsync >= interval
                    if state.pending and due:
                        self._commit(state)
                        last_fsync = time.monotonic()
                    self._close_ended(state)
                except (OSError, StorageError) as e:  # the disk, not a bug: cut back, refuse, retry
                    stopping |= STOP in items
                    stopping |= self._fail_group(e, state, [i for i in items if i is not STOP])
                    if stopping or not self._await_storage(state):
                        break
                    last_fsync = time.monotonic()
                    continue
                if stopping and not state.pending and self.inbox.empty():
                    break
        except BaseException as e:  # no append is acknowledged after it
            self.failed = e
            log.exception("buffer writer failed")
            error = StorageError(f"buffer write failed: {e}")
            for w in state.pending + [i for i in drain(self.inbox, None) if i is not STOP]:
                w.future.set_exception(error)
        finally:
            for segment in state.segments():
                self._close(segment, state)

    # ---- writing ----------------------------------------------------------------------------------------
    def _segment_for(self, item: Write, state: _State) -> _OpenSegment:
        current = state.current.get(item.stream)
        if current is None or current.start_ns != item.segment_start:
            if current is not None and current.path not in state.group:
                self._close(current, state)  # a segment touched by this group is closed after its commit
            path = self.layout.segment(item.stream, item.segment_start).path
            created = not path.exists()
            if created:
                self.io.make_dirs(path.parent)
            current = _OpenSegment(item.stream, item.segment_start, path, self.io.open_append(path))
            state.current[item.stream] = current
            self.host.segment_opened(item.stream, path)
            state.group[path] = _Touched(current, 0 if created else self.io.size(current.fd), created)
            if created:
                self.io.fsync_dir(path.parent)  # the new file's name survives a power loss
        elif current.path not in state.group:
            state.group[current.path] = _Touched(current, self.io.size(current.fd), False)
        return current

    def _commit(self, state: _State) -> None:
        started = time.perf_counter()
        for touched in state.group.values():
            with _at(touched.segment.path):
                self.io.fsync(touched.segment.fd)
        self.stats.fsync_seconds += time.perf_counter() - started
        self.stats.fsyncs += 1
        pending = state.pending
        marks = {w.stream: Mark(w.result.last_seq, w.records[-1]["ts"], w.records[-1]["recv_ts"]) for w in pending}
        if self.marks is not None:
            self.marks.acknowledge(marks)  # from here on the group is acknowledged
        for touched in state.group.values():
            if state.current.get(touched.segment.stream) is not touched.segment:
                self._close(touched.segment, state)  # rotated away: closed once durable
        state.group.clear()
        state.pending = []
        self.delay = self.config.write_retry_seconds
        self.host.acknowledged(pending, marks)

    def _close_ended(self, state: _State) -> None:
        now = self.clock.now_ns()
        for segment in list(state.current.values()):
            if segment.start_ns + self.layout.segment_ns <= now and segment.path not in state.group:
                self._close(segment, state)

    def _close(self, segment: _OpenSegment, state: _State) -> None:
        if state.current.get(segment.stream) is segment:
            del state.current[segment.stream]
            self.host.segment_opened(segment.stream, None)
        if segment.fd >= 0:
            fd, segment.fd = segment.fd, -1
            try:
                self.io.close(fd)
            except OSError as e:  # everything in it was fsynced (or cut back) already
                log.warning("closing %s failed: %s", segment.path, e)

    # ---- failures ---------------------------------------------------------------------------------------
    def _fail_group(self, error: BaseException, state: _State, unwritten: list[Write]) -> bool:
        """Cut the group back, fail every unacknowledged append and refuse new ones; True when asked to stop."""
        failed_error = write_error(error, "buffer write", self.delay)
        touched = list(state.group.values())
        state.group.clear()
        try:
            self._cut_back(touched, state)
            self._release(touched, state)
        except OSError as e:
            self._rollback = touched
            log.error("cutting back %d segment(s) failed (%s): retried before the next write", len(touched), e)
        outage = Outage(failed_error, self.clock.now_ns(), 0, self.delay)
        failed = self.host.refuse_all(outage, state.pending + unwritten)
        stop = any(w is STOP for w in failed)
        failed = [w for w in failed if w is not STOP]
        state.pending = []
        ticks = sum(w.result.count for w in failed)
        self.stats.write_failures[outage.kind] += 1
        self.stats.refused_ticks += ticks
        self._probe_bytes = min(max(sum(len(w.data) for w in failed), _PROBE_BYTES[0]), _PROBE_BYTES[1])
        log.error(
            "buffer write failed (%s, %s): %d append(s) of %d tick(s) cut back and refused, nothing of them kept; "
            "appends are refused until a retry finds the disk writable (next in %gs)",
            failed_error.details["reason"],
            failed_error.details["path"] or "the buffer",
            len(failed),
            ticks,
            self.delay,
        )
        for w in failed:
            w.future.set_exception(outage.refusal())
        return stop

    def _cut_back(self, touched: Iterable[_Touched], state: _State) -> None:
        # Truncate each touched segment to its size before the group and fsync it: nothing of the group survives.
        for t in touched:
            if t.segment.fd < 0:
                continue
            with _at(t.segment.path):
                self.io.truncate(t.segment.fd, t.size_before)
                if not t.created:
                    self.io.fsync(t.segment.fd)
                    continue
            self._close(t.segment, state)  # the group made it: leave no file behind
            try:
                self.io.remove(t.segment.path)
                self.io.fsync_dir(t.segment.path.parent)
            except OSError as e:
                log.warning("removing the segment %s made by the failed group failed: %s", t.segment.path, e)

    def _release(self, touched: Iterable[_Touched], state: _State) -> None:
        # Segments a failed group rotated away from are closed once cut back (the current ones stay open).
        for t in touched:
            if state.current.get(t.segment.stream) is not t.segment:
                self._close(t.segment, state)

    def _await_storage(self, state: _State) -> bool:
        """Retry with backoff until a probe write succeeds (True) or the buffer is closed (False)."""
        probe = temp_path(self.layout.buffer_dir / "write-probe")
        since, retries = self.clock.now_ns(), 0
        while True:
            try:
                item = self.inbox.get(timeout=self.delay)
            except queue.Empty:
                item = None
            if item is STOP:
                if self._rollback:  # one last try, so nothing of the failed group survives the restart
                    with contextlib.suppress(OSError):
                        self._cut_back(self._rollback, state)
                return False
            retries += 1
            self.stats.write_retries += 1
            try:
                if self._rollback:
                    self._cut_back(self._rollback, state)
                    self._release(self._rollback, state)
                    self._rollback = []
                self.io.make_dirs(self.layout.buffer_dir)
                self.io.probe(probe, self._probe_bytes)
            except (OSError, StorageError) as e:
                self.delay = min(self.delay * 2, self.config.write_retry_max_seconds)
                self.host.update_outage(Outage(write_error(e, "buffer write", self.delay), since, retries, self.delay))
                log.warning("storage still refuses writes (%s); next retry in %gs", e, self.delay)
                continue
            self.host.resume()
            log.warning(
                "storage is writable again after %.1fs (%d retries): appends are accepted",
                (self.clock.now_ns() - since) / 1e9,
                retries,
            )
            return True

    # ---- an open segment removed under the writer ----------------------------------------------------------
    def _check_open_segments(self, state: _State) -> None:
        now = time.monotonic()
        if now - state.last_open_check < _OPEN_CHECK_SECONDS:
            return
        state.last_open_check = now
        for segment in state.segments():
            if segment.fd >= 0 and not _still_at_its_path(segment):
                self._restore(segment)

    def _restore(self, segment: _OpenSegment) -> None:
        # Its bytes are still in the open file: copy them back to the segment's path (temp → fsync → rename).
        temp = temp_path(segment.path)
        self.io.make_dirs(segment.path.parent)
        try:
            copied = self.io.copy_out(segment.fd, temp)
            self.io.replace(temp, segment.path)
        except BaseException:
            self.io.remove(temp)
            raise
        self.io.fsync_dir(segment.path.parent)
        fd = self.io.open_append(segment.path)
        old, segment.fd = segment.fd, fd
        self.io.close(old)
        self.stats.segments_restored += 1
        log.error(
            "segment %s was removed while the writer held it open: restored its %d bytes from the open file",
            segment.path,
            copied,
        )


@contextlib.contextmanager
def _at(path: Path) -> Iterator[None]:
    # Name the file in an OSError that does not (write, fsync and truncate errors name none).
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def _still_at_its_path(segment: _OpenSegment) -> bool:
    opened = os.fstat(segment.fd)
    if opened.st_nlink == 0:
        return False
    try:
        at_path = os.stat(segment.path)
    except FileNotFoundError:
        return False
    return (at_path.st_dev, at_path.st_ino) == (opened.st_dev, opened.st_ino)


def drain(inbox: queue.SimpleQueue[Any], timeout: float | None) -> list[Any]:
    """Everything queued (waiting up to `timeout` for the first item; None: do not wait)."""
    items: list[Any] = []
    try:
        items.append(inbox.get(timeout=timeout) if timeout is not None else inbox.get_nowait())
        while True:
            items.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return items
