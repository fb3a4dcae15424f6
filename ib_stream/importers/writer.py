"""Importers: batch parsed ticks into the store exactly once, and count what happened.

A parser hands each tick to the `StreamSink` of its stream, each unusable row to `skip` and each row a
`--where` filter leaves out to `filtered`; the sink validates the tick, numbers it (its index among the
stream's ticks of this file), leaves out what the ledger says is already stored (see `ledger` for the
protocol that survives a crash between an append and its ledger entry), refuses a tick from the future,
leaves out what the store already holds by content (`content`: the same trade from another file or
reading is stored once) and appends the rest in batches, each recorded with the seq range it was given
under the run's import id (what `import undo` removes). It also keeps a running digest of the stream's
ticks, so that a file that grew since an earlier import is recognised: its ticks are held back up to each
end of an earlier import's batches and dropped there when the digests agree (at most one earlier batch is
held in memory).
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import MAX_TS_NS, MIN_TS_NS, StreamKey, TickValidator
from ib_stream.errors import TickValidationError
from ib_stream.importers.content import StoredContent, content_key
from ib_stream.importers.ledger import DONE, BatchDone, BatchKey, BatchRow, ImportLedger, covered_upto
from ib_stream.importers.values import BadValue
from ib_stream.settings import ImportsConfig
from ib_stream.store.tickstore import TickStore
from ib_stream.times import check_event_time, iso_ns

SOURCE: Final = "import"
DEFAULT_BATCH_TICKS: Final = 10_000
FUTURE_SKEW_SETTING: Final = "imports.max_future_skew_seconds"
DEFAULT_FUTURE_SKEW_NS: Final = int(ImportsConfig().max_future_skew_seconds * NS_PER_SECOND)
_PROGRESS_EVERY: Final = 1_000
Progress = Callable[[int], None]


@dataclass(slots=True)
class ImportReport:
    """What an import did: rows read, ticks stored and already stored per stream, rows skipped or filtered out."""

    file: str
    file_sha256: str
    rows_read: int = 0
    stored: collections.Counter[StreamKey] = field(default_factory=collections.Counter)
    duplicates: collections.Counter[StreamKey] = field(default_factory=collections.Counter)
    matched: collections.Counter[StreamKey] = field(default_factory=collections.Counter)  # of duplicates: by content
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first row skipped for it
    filtered: collections.Counter[str] = field(default_factory=collections.Counter)  # rows a --where left out
    filtered_examples: dict[str, str] = field(default_factory=dict)
    grown: dict[StreamKey, int] = field(
        default_factory=dict
    )  # ticks found stored by an import of the file before it grew
    batches: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    import_id: int | None = None  # None: nothing was stored or found stored (a re-run the ledger answered)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def rows_filtered(self) -> int:
        return sum(self.filtered.values())

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


def refuse_future(ts_ns: int, now_ns: int, skew_ns: int) -> None:
    """Raise BadValue when an event time lies more than `skew_ns` after `now_ns`: the shared check of event times
    (`ib_stream.times.check_event_time`) with the imports skew setting, for every tick of every importer."""
    if ts_ns > now_ns + skew_ns:  # the common case costs one comparison
        try:
            check_event_time(ts_ns, now_ns, skew_ns, setting=FUTURE_SKEW_SETTING)
        except TickValidationError as e:
            limit = skew_ns / NS_PER_SECOND
            raise BadValue(
                f"timestamp is in the future (after now + {limit:g} s, {FUTURE_SKEW_SETTING})", iso_ns(ts_ns)
            ) from e


class ImportWriter:
    """Batches of one file's ticks into the store, recorded in the import ledger; one per import run."""

    def __init__(
        self,
        store: TickStore,
        file_path: str,
        file_sha256: str,
        batch_size: int = DEFAULT_BATCH_TICKS,
        progress: Progress | None = None,
        how: str = "",
        future_skew_ns: int = DEFAULT_FUTURE_SKEW_NS,
    ) -> None:
        self.store = store
        self.file_path = file_path
        self.batch_size = batch_size
        self.progress = progress
        self.how = how
        self.report = ImportReport(file_path, file_sha256)
        self.ledger = ImportLedger(store.config.index_file)
        self.sinks: dict[StreamKey, StreamSink] = {}
        self.now_ns = store.clock.now_ns()
        self.future_skew_ns = future_skew_ns
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
                    "ticks read the same either way are matched by content and stored once"
                )
            found = self.sinks[stream] = StreamSink(self, key, self.ledger.batches(key))
        return found

    def import_id(self) -> int:
        """The id of this run's import (recorded on first use: when a batch stores or finds ticks)."""
        if self.report.import_id is None:
            self.report.import_id = self.ledger.start_import(self.file_path, self.report.file_sha256, self.how)
        return self.report.import_id

    def row_read(self) -> None:
        """Count one row of the file as read (drives the progress bar)."""
        self.report.rows_read += 1
        self._unreported_rows += 1
        if self._unreported_rows >= _PROGRESS_EVERY:
            self._advance()

    def skip(self, reason: str, where: str, value: Any = None) -> None:
        """Count a row (or the part of it for one stream) left out, with the first example per reason."""
        _count(self.report.skipped, self.report.examples, reason, where, value)

    def filtered(self, reason: str, where: str, value: Any = None) -> None:
        """Count a row (or the part of it for one stream) a --where filter left out, with the first example."""
        _count(self.report.filtered, self.report.filtered_examples, reason, where, value)

    def finish(self) -> ImportReport:
        """Append what remains of every stream and return the report."""
        for sink in self.sinks.values():
            sink.flush()
        if self.report.import_id is not None:
            self.ledger.finish_import(self.report.import_id)
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


def _count(counter: collections.Counter[str], examples: dict[str, str], reason: str, where: str, value: Any) -> None:
    counter[reason] += 1
    if reason not in examples:
        shown = repr(value) if value is not None else ""
        examples[reason] = f"{where}: {shown[:120]}" if shown else where


class StreamSink:
    """One stream's ticks from the file: numbered, checked against the ledger and the store, appended in batches."""

    def __init__(self, writer: ImportWriter, key: BatchKey, rows: list[BatchRow]) -> None:
        self.writer = writer
        self.key = key
        self.stream = key.stream
        self.validator = TickValidator(key.stream.tick_type)
        self.done_upto = covered_upto(rows)
        # Batches after it (left pending by an interrupted run, or holding ticks that were in the future then): a
        # new batch spans them all, and their ticks are looked up in the store by content like any other.
        self.pending_end = max((r.end_tick for r in rows if r.end_tick > self.done_upto), default=0)
        self.appended: list[tuple[int, int]] = []  # seq ranges [first, end) this run appended
        self.content = StoredContent(writer.store.engine, key.stream, lambda: self.appended)
        self.next_index = 0
        self.first = self.done_upto
        self.ticks: list[dict[str, Any]] = []
        self.min_ts, self.max_ts = MAX_TS_NS, MIN_TS_NS  # of self.ticks
        self.routed_min, self.routed_max = MAX_TS_NS, MIN_TS_NS  # of the ticks stored or found stored since a flush
        self.matched = 0  # since the last flush
        self.held_out = 0
        self.digest = hashlib.sha256()  # of the stream's ticks [0, next_index)
        # Ends of the batches of an earlier content of this file (it grew): ticks are held until one is reached.
        fresh = not any(r.state == DONE for r in rows)  # no batch of this content is done yet
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
        """Count the tick as already stored (by a done batch, or found in the store by content), refuse it if it lies
        in the future, or take it."""
        report = self.writer.report
        if index < self.done_upto:
            report.duplicates[self.stream] += 1
            return
        ts = tick["ts"]
        try:
            refuse_future(ts, self.writer.now_ns, self.writer.future_skew_ns)
        except BadValue as e:
            self.writer.skip(f"{self.stream.tick_type.value}: {e.reason}", f"tick {index}", e.value)
            self.held_out += 1
            return
        self.routed_min, self.routed_max = min(self.routed_min, ts), max(self.routed_max, ts)
        if self.content.take(content_key(self.stream.tick_type, tick)):
            report.duplicates[self.stream] += 1
            report.matched[self.stream] += 1
            self.matched += 1
            return
        self.ticks.append(tick)
        self.min_ts, self.max_ts = min(self.min_ts, ts), max(self.max_ts, ts)

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
        """Append the batch (pending in the ledger first, with the seq range it is about to get; done once durable)."""
        if self.held:  # the file ends before the earlier content's next batch end
            self._release()
        end = self.next_index
        if end <= self.first:
            return
        writer = self.writer
        writer.report.batches += 1
        import_id = writer.import_id()
        stored_ts = (self.min_ts, self.max_ts) if self.ticks else None
        stream = self.stream
        seq_from = writer.store.buffer.next_seq(stream)
        writer.ledger.begin(
            self.key,
            (self.first, end),
            writer.report.batches,
            len(self.ticks),
            stored_ts,
            writer.file_path,
            self.digest.hexdigest(),
            import_id,
            seq_from,
        )
        seqs = None
        if self.ticks:
            result = writer.store.append_batch_sync(stream.contract_id, stream.tick_type, self.ticks, SOURCE, "skip")
            seqs = (result.first_seq, result.last_seq) if result.count else None
            if seqs is not None:
                self.appended.append((result.first_seq, result.last_seq + 1))
            writer.report.stored[stream] += result.count
            for error in result.rejected:  # only ticks a parser passed as checked can get here
                writer.skip(
                    f"{stream.tick_type.value}: rejected by the store", f"batch {writer.report.batches}", error.message
                )
        routed = (self.routed_min, self.routed_max) if self.routed_min <= self.routed_max else None
        done = BatchDone(import_id, seq_from, stored_ts, routed, self.matched, self.held_out)
        writer.ledger.commit(self.key, self.first, seqs, done)
        self.first = end
        self.ticks = []
        self.min_ts, self.max_ts = MAX_TS_NS, MIN_TS_NS
        self.routed_min, self.routed_max = MAX_TS_NS, MIN_TS_NS
        self.matched = self.held_out = 0
