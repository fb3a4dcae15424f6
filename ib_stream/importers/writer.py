"""Importers: batch parsed ticks into the store exactly once per file, and count what happened.

A parser hands each tick to the `StreamSink` of its stream and each unusable row to `skip`; the
sink validates the tick, numbers it (its index among the stream's ticks of this file), leaves out
what the ledger says is already stored and appends the rest in batches (see `ledger` for the
protocol that survives a crash between an append and its ledger entry). It also keeps a running
digest of the stream's ticks, so that a file that grew since an earlier import is recognised: its
ticks are held back up to each end of an earlier import's batches and dropped there when the digests
agree (at most one earlier batch is held in memory).
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ib_stream.domain import MAX_TS_NS, MIN_TS_NS, StreamKey, TickValidator
from ib_stream.errors import TickValidationError
from ib_stream.importers.ledger import DONE, PENDING, BatchKey, BatchRow, ImportLedger
from ib_stream.importers.values import BadValue
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore

SOURCE: Final = "import"
DEFAULT_BATCH_TICKS: Final = 10_000
_PROGRESS_EVERY: Final = 1_000
# Fields that identify a tick's content; seq, recv_ts and source are given by the store / the run.
_NOT_CONTENT: Final = frozenset({"seq", "recv_ts", "source"})
Progress = Callable[[int], None]


@dataclass(slots=True)
class ImportReport:
    """What an import did: rows read, ticks stored and already stored per stream, rows skipped by reason."""

    file: str
    file_sha256: str
    rows_read: int = 0
    stored: collections.Counter[StreamKey] = field(default_factory=collections.Counter)
    duplicates: collections.Counter[StreamKey] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first row skipped for it
    grown: dict[StreamKey, int] = field(
        default_factory=dict
    )  # ticks found stored by an import of the file before it grew
    batches: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def ticks_stored(self) -> int:
        return sum(self.stored.values())

    @property
    def ticks_duplicate(self) -> int:
        return sum(self.duplicates.values())


def checked_ts(ns: int) -> int:
    """Return `ns` if it is a plausible event time (1990..2200), else raise BadValue."""
    if not MIN_TS_NS <= ns < MAX_TS_NS:
        raise BadValue("timestamp out of range (not epoch milliseconds?)", ns)
    return ns


class ImportWriter:
    """Batches of one file's ticks into the store, recorded in the import ledger; one per import run."""

    def __init__(
        self,
        store: TickStore,
        file_path: str,
        file_sha256: str,
        batch_size: int = DEFAULT_BATCH_TICKS,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.file_path = file_path
        self.batch_size = batch_size
        self.progress = progress
        self.report = ImportReport(file_path, file_sha256)
        self.ledger = ImportLedger(store.config.index_file)
        self.sinks: dict[StreamKey, StreamSink] = {}
        self._started = time.perf_counter()
        self._unreported_rows = 0

    def sink(self, stream: StreamKey, recipe: str) -> StreamSink:
        """The sink of a stream (created on first use, resuming from the ledger)."""
        found = self.sinks.get(stream)
        if found is None:
            key = BatchKey(self.report.file_sha256, stream, recipe)
            for other in self.ledger.other_recipes(key):
                self.report.warnings.append(
                    f"{self.file_path} was already imported into {stream} with other options (recipe {other[:12]}); "
                    "ticks read differently are stored beside the earlier ones"
                )
            found = self.sinks[stream] = StreamSink(self, key, self.ledger.batches(key))
        return found

    def row_read(self) -> None:
        """Count one row of the file as read (drives the progress bar)."""
        self.report.rows_read += 1
        self._unreported_rows += 1
        if self._unreported_rows >= _PROGRESS_EVERY:
            self._advance()

    def skip(self, reason: str, where: str, value: Any = None) -> None:
        """Count a row (or the part of it for one stream) left out, with the first example per reason."""
        self.report.skipped[reason] += 1
        if reason not in self.report.examples:
            shown = repr(value) if value is not None else ""
            self.report.examples[reason] = f"{where}: {shown[:120]}" if shown else where

    def finish(self) -> ImportReport:
        """Append what remains of every stream and return the report."""
        for sink in self.sinks.values():
            sink.flush()
        self._advance()
        self.report.seconds = time.perf_counter() - self._started
        self.close()
        return self.report

    def close(self) -> None:
        self.ledger.close()

    def _advance(self) -> None:
        if self.progress is not None and self._unreported_rows:
            self.progress(self._unreported_rows)
        self._unreported_rows = 0


class StreamSink:
    """One stream's ticks from the file: numbered, checked against the ledger, appended in batches."""

    def __init__(self, writer: ImportWriter, key: BatchKey, rows: list[BatchRow]) -> None:
        self.writer = writer
        self.key = key
        self.stream = key.stream
        self.validator = TickValidator(key.stream.tick_type)
        done = [r for r in rows if r.state == DONE]
        self.done_upto = max((r.end_tick for r in done), default=0)
        # A batch left pending by an interrupted run: its ticks may or may not be in the store.
        self.pending = [r for r in rows if r.state == PENDING and r.end_tick > self.done_upto]
        self.pending_end = max((r.end_tick for r in self.pending), default=0)
        self._in_store: collections.Counter[tuple[Any, ...]] | None = None
        self.next_index = 0
        self.first = self.done_upto
        self.ticks: list[dict[str, Any]] = []
        self.min_ts = MAX_TS_NS
        self.max_ts = MIN_TS_NS
        self.digest = hashlib.sha256()  # of the stream's ticks [0, next_index)
        # Ends of the batches of an earlier content of this file (it grew): ticks are held until one is reached.
        fresh = not done  # no batch of this content is done yet (a pending one may be)
        self.earlier = writer.ledger.earlier_ends(key, writer.file_path) if fresh else {}
        self.held: list[dict[str, Any]] = []

    def check(self, tick: dict[str, Any]) -> dict[str, Any]:
        """Validate a tick as the store will; raise BadValue naming the field otherwise."""
        try:
            return self.validator.canonical(tick, 0, 0, SOURCE)
        except TickValidationError as e:
            shown = e.value if isinstance(e.value, str) else repr(e.value)
            raise BadValue(f"{e.field} {e.message[len(e.field) + len(shown) + 2 :]}", e.value) from None

    def add(self, tick: dict[str, Any], checked: bool = False) -> None:
        """Take the next tick of the stream; raise BadValue if it is invalid.

        `checked=True` says the parser has already checked every value (the store still validates
        the batch, and a tick it rejects is counted as skipped rather than stopping the import).
        """
        if not checked:
            self.check(tick)
        index = self.next_index
        self.next_index += 1
        self.digest.update(orjson.dumps(tick, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        if self.earlier:
            self._match_earlier(tick)
            return
        self._route(index, tick)
        if len(self.ticks) >= self.writer.batch_size and self.next_index >= self.pending_end:
            self.flush()

    def _route(self, index: int, tick: dict[str, Any]) -> None:
        """Count the tick as already stored (by a done batch, or found in the store for a pending one), or take it."""
        if index < self.done_upto or (index < self.pending_end and self._stored_already(self.check(tick))):
            self.writer.report.duplicates[self.stream] += 1
            return
        self.ticks.append(tick)
        ts = tick["ts"]
        self.min_ts = min(self.min_ts, ts)
        self.max_ts = max(self.max_ts, ts)

    def _match_earlier(self, tick: dict[str, Any]) -> None:
        """Hold the tick until the next end of an earlier content's batch; there, drop what is held when the
        digests agree (those ticks were stored by that import), else stop matching and route it all."""
        self.held.append(tick)
        digests = self.earlier.get(self.next_index)
        if digests is None:
            return
        if self.digest.hexdigest() in digests:
            self.writer.report.duplicates[self.stream] += len(self.held)
            self.writer.report.grown[self.stream] = self.next_index
            self.held = []
            self.first = self.next_index
            if self.next_index >= max(self.earlier):
                self.earlier = {}
            return
        self._release()
        if len(self.ticks) >= self.writer.batch_size and self.next_index >= self.pending_end:
            self.flush()

    def _release(self) -> None:
        """Stop matching: the contents differ before this point, so the held ticks are routed as new (no flush in
        between: a batch's span must cover every tick routed into it)."""
        self.earlier = {}
        held, self.held = self.held, []
        for index, tick in enumerate(held, start=self.next_index - len(held)):
            self._route(index, tick)

    def flush(self) -> None:
        """Append the batch (pending in the ledger first, done once durable)."""
        if self.held:  # the file ends before the earlier content's next batch end
            self._release()
        end = self.next_index
        if end <= self.first:
            return
        writer = self.writer
        writer.report.batches += 1
        ts_range = (self.min_ts, self.max_ts) if self.ticks else None
        writer.ledger.begin(
            self.key,
            (self.first, end),
            writer.report.batches,
            len(self.ticks),
            ts_range,
            writer.file_path,
            self.digest.hexdigest(),
        )
        seqs = None
        if self.ticks:
            stream = self.stream
            result = writer.store.append_batch_sync(stream.contract_id, stream.tick_type, self.ticks, SOURCE, "skip")
            seqs = (result.first_seq, result.last_seq) if result.count else None
            writer.report.stored[stream] += result.count
            for error in result.rejected:  # only ticks a parser passed as checked can get here
                writer.skip(
                    f"{stream.tick_type.value}: rejected by the store", f"batch {writer.report.batches}", error.message
                )
        writer.ledger.commit(self.key, self.first, seqs)
        self.first = end
        self.ticks = []
        self.min_ts, self.max_ts = MAX_TS_NS, MIN_TS_NS

    def _stored_already(self, record: dict[str, Any]) -> bool:
        # Ticks of a pending batch are looked up in the store by content (each stored tick matches once).
        if self._in_store is None:
            self._in_store = self._load_pending()
        content = _content(record)
        if self._in_store[content] > 0:
            self._in_store[content] -= 1
            return True
        return False

    def _load_pending(self) -> collections.Counter[tuple[Any, ...]]:
        ranges = [(r.min_ts, r.max_ts) for r in self.pending if r.min_ts is not None and r.max_ts is not None]
        if not ranges:
            return collections.Counter()
        start = min(lo for lo, _ in ranges)
        end = max(hi for _, hi in ranges) + 1
        table = self.writer.store.engine.read_stream(self.stream, start, end)
        return collections.Counter(_content(r) for r in table_to_records(table) if r["source"] == SOURCE)


def _content(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(v for k, v in record.items() if k not in _NOT_CONTENT)
