"""Property tests: no interleaving of store operations loses, duplicates, reorders or alters a tick.

A hypothesis `RuleBasedStateMachine` drives a real `TickStore` (its own data root per example, a
`ManualClock`) through random interleavings of

- appends of 1-50 ticks to `bid_ask` or `last` whose event times are mostly increasing, with ties,
  late ticks (hours in the past), whole late batches and the odd tick from the near future; optional
  fields sometimes omitted (the store fills the default); batches holding invalid ticks, rejected
  whole or skipped tick by tick;
- clock advances from one second to an hour (segment rotation, sealing, hot-cache eviction);
- archival, compaction, retention + maintenance, and close + reopen (recovery);
- range queries: random, exact-boundary, hour-aligned and repeated `[start, end)` windows, one or
  both tick types, ticks or bars.

A model keeps every acknowledged tick as the canonical record the store must return. Every query
must equal the model filtered to `[start, end)` and sorted by `(ts, seq)`, compared field by field
(ts, seq, recv_ts, source and every type field, floats exactly); appends must hand out seqs
gap-free from 1 per stream, across restarts. One rule probes the query cache: a query, an append
inside its range, the identical query again — the second answer must hold the new tick.

Regression tests for bugs found here sit at the end of the module.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from ib_stream.analytics.grid import BAR_SIZES
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import TICK_FIELDS, FieldSpec, StreamKey, TickType
from ib_stream.errors import TickValidationError
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS

HOUR = 3600 * NS_PER_SECOND
# Extreme (valid) prices make VWAPs overflow to inf / nan; that is not what these tests are about.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
STREAMS = (StreamKey(CONTRACT, TickType.BID_ASK), StreamKey(CONTRACT, TickType.LAST))
COUNT_COLUMN = {TickType.BID_ASK: "quote_count", TickType.LAST: "trade_count"}
CLOSE_COLUMN = {
    TickType.BID_ASK: ("bid_price", "bid_price"),
    TickType.LAST: ("close", "price"),
}  # (bar column, tick field)

# A stored tick as the store must give it back: (ts, seq, recv_ts, source, *type fields in storage order).
Row = tuple[Any, ...]

_FLOATS = (0.0, 5e-324, 2.2250738585072014e-308, 1e-7, 0.1 + 0.2, 123456789.12345679, 1.7976931348623157e308)
_STRINGS = ("", "NASDAQ", "ARCA", "ünï©ødé ✓", 'q"uo\\te', "tab\tnl\n\rend", "\u2028", "a\x00b")


# ---- tick generation ---------------------------------------------------------------------------------------------
def _value(spec: FieldSpec, rng: random.Random) -> Any:
    """A valid value of a field, often an awkward one (extreme floats, escapes, unicode)."""
    if spec.kind == "float":
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(_FLOATS)
        return rng.uniform(0, 1000) if roll < 0.6 else round(rng.uniform(90, 110), 2)
    if spec.kind == "str":
        return rng.choice(_STRINGS)
    if spec.kind == "bool":
        return rng.random() < 0.5
    if spec.kind == "side":
        return rng.choice((1, -1, None))
    raise AssertionError(f"no generator for field kind {spec.kind}")


def _raw_tick(tick_type: TickType, ts: int, rng: random.Random) -> dict[str, Any]:
    """A tick as a producer sends it; optional fields are sometimes left out."""
    tick: dict[str, Any] = {"ts": ts}
    for spec in TICK_FIELDS[tick_type]:
        if spec.required or rng.random() < 0.7:
            tick[spec.name] = _value(spec, rng)
    return tick


def _expected_row(tick_type: TickType, raw: dict[str, Any], seq: int, recv_ts: int, source: str) -> Row:
    fields = [raw.get(spec.name, spec.default) for spec in TICK_FIELDS[tick_type]]
    return (raw["ts"], seq, recv_ts, source, *fields)


def _event_times(now: int, count: int, timing: str, rng: random.Random) -> list[int]:
    """Event times of a batch: mostly increasing near `now`, with ties and late ticks."""
    late_batch = timing == "late"
    ts = now - (rng.randrange(NS_PER_SECOND, 6 * HOUR) if late_batch else rng.randrange(0, 30 * NS_PER_SECOND))
    out = []
    for _ in range(count):
        if timing == "ties":
            ts += rng.choice((0, 0, 0, NS_PER_SECOND))
        else:
            ts += rng.choice((0, 1, 1_000, NS_PER_SECOND, rng.randrange(2 * NS_PER_SECOND)))
        tick_ts = ts
        if timing == "mixed":
            roll = rng.random()
            if roll < 0.15:
                tick_ts = ts - rng.randrange(1, 3 * HOUR)  # late: backfill of an older hour
            elif roll < 0.18:
                tick_ts = ts + rng.randrange(1, HOUR)  # a source clock running ahead
        out.append(tick_ts)
    return out


def _invalid_tick(tick_type: TickType, ts: int, rng: random.Random) -> dict[str, Any]:
    """A tick the validator must reject."""
    tick = _raw_tick(tick_type, ts, rng)
    first_float = next(s.name for s in TICK_FIELDS[tick_type] if s.kind == "float")
    kind = rng.choice(("nan", "inf", "negative", "unknown", "seq", "no_ts", "ts_seconds", "bool_price", "str_price"))
    if kind == "nan":
        tick[first_float] = math.nan
    elif kind == "inf":
        tick[first_float] = math.inf
    elif kind == "negative":
        tick[first_float] = -1.0
    elif kind == "unknown":
        tick["not_a_field"] = 1
    elif kind == "seq":
        tick["seq"] = 7
    elif kind == "no_ts":
        del tick["ts"]
    elif kind == "ts_seconds":
        tick["ts"] = ts // NS_PER_SECOND
    elif kind == "bool_price":
        tick[first_float] = True
    else:
        tick[first_float] = "100.0"
    return tick


# ---- reading results back ----------------------------------------------------------------------------------------
def _columns(tick_type: TickType) -> list[str]:
    return ["seq", "recv_ts", "source", *(spec.name for spec in TICK_FIELDS[tick_type])]


def _plain(value: Any) -> Any:
    """pandas / numpy scalars → plain Python values (a missing value becomes None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def frame_rows(frame: pd.DataFrame, tick_type: TickType) -> list[Row]:
    """The rows of a tick query result in the model's shape."""
    columns = [frame["timestamp"], *(frame[c] for c in _columns(tick_type))]
    return [tuple(_plain(v) for v in row) for row in zip(*(c.astype(object).tolist() for c in columns), strict=True)]


def table_rows(table: pa.Table, tick_type: TickType) -> list[Row]:
    """The rows of `QueryEngine.read_stream` in the model's shape."""
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    recv = table.column("recv_ts").cast(pa.int64()).to_pylist()
    rest = [table.column(c).to_pylist() for c in _columns(tick_type) if c != "recv_ts"]
    seq, source, *fields = rest
    return [(t, s, r, so, *f) for t, s, r, so, *f in zip(ts, seq, recv, source, *fields, strict=True)]


def _sorted(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r[0], r[1]))


def _first_difference(got: Sequence[Row], want: Sequence[Row]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"first difference at row {i}: got {g!r}, want {w!r}"
    return f"got {len(got)} rows, want {len(want)}"


# ---- the state machine -------------------------------------------------------------------------------------------
class StoreMachine(RuleBasedStateMachine):
    """A real store and a model of every tick it acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="ib-stream-prop-"))
        self.clock = ManualClock(T0_NS)
        self.model: dict[StreamKey, list[Row]] = {s: [] for s in STREAMS}
        self.windows: list[tuple[int, int]] = []  # every window queried so far (to repeat them)
        self.config: StorageConfig
        self.store: TickStore | None = None

    @initialize(
        rotation=st.sampled_from((5, 15, 60)),
        hot_minutes=st.sampled_from((1, 30, 120)),
        cycles=st.integers(0, 6),
        seed=st.integers(0, 2**32 - 1),
    )
    def open_store(self, rotation: int, hot_minutes: int, cycles: int, seed: int) -> None:
        """Open a store (segment length and hot window vary), then give it `cycles` of history."""
        self.config = StorageConfig(
            data_root=self.root / "storage",
            buffer_rotation_minutes=rotation,
            buffer_duration_minutes=hot_minutes,
            fsync_interval_ms=1,
            compaction_delay_seconds=0,
            retired_file_grace_seconds=0,
        )
        self.store = TickStore(self.config, self.clock).open()
        # Most examples start from a store with history: ingest cycles of both streams, archived as they seal.
        rng = random.Random(seed)
        for _ in range(cycles):
            for stream in STREAMS:
                count = rng.randint(1, 30)
                times = _event_times(self.clock.now_ns(), count, rng.choice(("in_order", "mixed")), rng)
                self._append(stream, [_raw_tick(stream.tick_type, ts, rng) for ts in times], "sim")
            self.clock.advance(rng.randint(60, 1200))
            self.s.run_archival()

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.check_everything()
                self.store.close()
                self.store = None
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def s(self) -> TickStore:
        assert self.store is not None
        return self.store

    # ---- writing ---------------------------------------------------------------------------------------------
    def _append(self, stream: StreamKey, raws: list[dict[str, Any]], source: str) -> None:
        model = self.model[stream]
        now = self.clock.now_ns()
        result = self.s.append_batch_sync(stream.contract_id, stream.tick_type, raws, source=source)
        n = len(model)
        assert (result.first_seq, result.last_seq, result.count) == (n + 1, n + len(raws), len(raws)), result
        model.extend(_expected_row(stream.tick_type, raw, n + 1 + i, now, source) for i, raw in enumerate(raws))

    @rule(
        stream=st.sampled_from(STREAMS),
        count=st.integers(1, 50),
        timing=st.sampled_from(("in_order", "in_order", "ties", "mixed", "mixed", "late")),
        source=st.sampled_from(("sim", "ib_tbt")),
        seed=st.integers(0, 2**32 - 1),
    )
    def append(self, stream: StreamKey, count: int, timing: str, source: str, seed: int) -> None:
        rng = random.Random(seed)
        times = _event_times(self.clock.now_ns(), count, timing, rng)
        self._append(stream, [_raw_tick(stream.tick_type, ts, rng) for ts in times], source)

    @rule(
        stream=st.sampled_from(STREAMS),
        count=st.integers(2, 10),
        on_error=st.sampled_from(("reject", "skip")),
        seed=st.integers(0, 2**32 - 1),
    )
    def append_with_invalid_ticks(self, stream: StreamKey, count: int, on_error: str, seed: int) -> None:
        """Invalid ticks cost nothing: `reject` stores none of the batch, `skip` the valid ones, seq stays gap-free."""
        rng = random.Random(seed)
        now = self.clock.now_ns()
        bad = set(rng.sample(range(count), rng.randint(1, count - 1)))
        raws = [
            (_invalid_tick if i in bad else _raw_tick)(stream.tick_type, ts, rng)
            for i, ts in enumerate(_event_times(now, count, "in_order", rng))
        ]
        model = self.model[stream]
        n = len(model)
        if on_error == "reject":
            with pytest.raises(TickValidationError):
                self.s.append_batch_sync(stream.contract_id, stream.tick_type, raws, source="sim", on_error="reject")
            return
        result = self.s.append_batch_sync(stream.contract_id, stream.tick_type, raws, source="sim", on_error="skip")
        good = [raw for i, raw in enumerate(raws) if i not in bad]
        assert len(result.rejected) == len(bad), result
        assert (result.first_seq, result.last_seq, result.count) == (n + 1, n + len(good), len(good)), result
        model.extend(_expected_row(stream.tick_type, raw, n + 1 + i, now, "sim") for i, raw in enumerate(good))

    # ---- time and jobs ---------------------------------------------------------------------------------------------
    @rule(seconds=st.one_of(st.integers(1, 120), st.integers(121, 3600)))
    def advance(self, seconds: int) -> None:
        """Time passes: segments rotate and seal, hours close, the hot window slides."""
        self.clock.advance(seconds)

    @rule(job=st.sampled_from(("archive", "compact", "archive+compact", "retention+maintenance", "scheduler")))
    def run_jobs(self, job: str) -> None:
        """The background jobs, alone or as the scheduler runs them (time passes, archive, then compact)."""
        if job == "scheduler":
            self.clock.advance(900)
        if "archive" in job or job == "scheduler":
            event(f"archival wrote parts: {self.s.run_archival().files_written > 0}")
        if "compact" in job or job == "scheduler":
            event(f"compaction merged files: {self.s.run_compaction().files_written > 0}")
        if job == "retention+maintenance":
            self.s.run_retention()
            self.s.run_maintenance()

    @rule()
    def restart(self) -> None:
        """Close and reopen (recovery): everything acknowledged must still be there, and seq continues."""
        self.s.close()
        self.store = None
        self.store = TickStore(self.config, self.clock).open()
        self.check_everything(through_api=False)  # queries after the restart go through the API

    # ---- queries ---------------------------------------------------------------------------------------------------
    def _window(self, data: st.DataObject) -> tuple[int, int]:
        stamps = sorted({row[0] for rows in self.model.values() for row in rows})
        lo, hi = (stamps[0], stamps[-1]) if stamps else (self.clock.now_ns() - HOUR, self.clock.now_ns())
        kind = data.draw(st.sampled_from(("all", "random", "exact", "file", "hours", "repeat")), label="window")
        edges = sorted({t for f in self.s.index.files() for t in (f.start_time, f.end_time, f.end_time + 1)})
        if kind == "repeat" and self.windows:
            return data.draw(st.sampled_from(self.windows), label="repeated window")
        if kind == "file" and edges:
            # Boundaries on archive files' first / last event times: the planner's edge cases.
            start = data.draw(st.sampled_from(edges), label="start at a file edge")
            end = data.draw(st.sampled_from(edges), label="end at a file edge")
        elif kind == "exact" and stamps:
            # Boundaries on tick times: [start, end) must include a tick at start and exclude one at end.
            start = data.draw(st.sampled_from(stamps), label="start tick")
            end = data.draw(st.sampled_from(stamps), label="end tick") + data.draw(st.sampled_from((0, 1)))
        elif kind == "hours":
            start = lo - lo % HOUR + data.draw(st.integers(-1, 3), label="start hour") * HOUR
            end = start + data.draw(st.integers(1, 4), label="hours") * HOUR
        elif kind == "random":
            span = hi - lo + 2 * HOUR
            start = lo - HOUR + int(span * data.draw(st.floats(0, 1), label="start"))
            end = lo - HOUR + int(span * data.draw(st.floats(0, 1), label="end"))
        else:
            start, end = lo - HOUR, hi + 1
        start, end = min(start, end), max(start, end)
        window = (start, max(end, start + 1))
        self.windows.append(window)
        return window

    def _expected(self, stream: StreamKey, start: int, end: int) -> list[Row]:
        return _sorted([r for r in self.model[stream] if start <= r[0] < end])

    def _check_ticks(self, stream: StreamKey, start: int, end: int, resolution: str | None) -> None:
        frame = StorageQuery(self.s.engine).query_range_sync(
            stream.contract_id, stream.tick_type, start, end, resolution=resolution
        )
        got, want = frame_rows(frame, stream.tick_type), self._expected(stream, start, end)
        assert got == want, f"{stream} [{start}, {end}): {_first_difference(got, want)}"

    def _check_both(self, start: int, end: int) -> None:
        frame = StorageQuery(self.s.engine).query_range_sync(CONTRACT, [s.tick_type for s in STREAMS], start, end)
        stamps = frame["timestamp"].tolist()
        order = list(zip(stamps, frame["tick_type"], frame["seq"], strict=True))
        assert order == sorted(order), "a query of several tick types is not sorted by (timestamp, tick_type, seq)"
        for stream in STREAMS:
            part = frame[frame["tick_type"] == stream.tick_type.value]
            got, want = frame_rows(part, stream.tick_type), self._expected(stream, start, end)
            assert got == want, f"{stream} in a two-type query [{start}, {end}): {_first_difference(got, want)}"

    def _check_bars(self, stream: StreamKey, start: int, end: int, resolution: str) -> None:
        size = BAR_SIZES[resolution]
        first = start - start % size
        if (end - first) // size > 2000:
            return
        frame = StorageQuery(self.s.engine).query_range_sync(
            stream.contract_id, stream.tick_type, start, end, resolution=resolution
        )
        bars: dict[int, list[Row]] = {}
        for row in self._expected(stream, start, end):
            bars.setdefault(row[0] - row[0] % size, []).append(row)
        edges = list(range(first, end, size))
        assert [t.value for t in frame["timestamp"]] == edges
        counts = frame[COUNT_COLUMN[stream.tick_type]].tolist()
        assert counts == [len(bars.get(e, ())) for e in edges], f"{stream} {resolution} bar counts differ"
        bar_column, tick_field = CLOSE_COLUMN[stream.tick_type]
        position = 4 + [s.name for s in TICK_FIELDS[stream.tick_type]].index(tick_field)
        for edge, close in zip(edges, frame[bar_column].tolist(), strict=True):
            if edge in bars:
                assert close == bars[edge][-1][position], f"{stream} {resolution} bar at {edge}: close differs"

    @rule(
        data=st.data(),
        what=st.sampled_from(("bid_ask", "last", "both")),
        resolution=st.sampled_from((None, None, "tick", "1m", "1h")),
    )
    def query(self, data: st.DataObject, what: str, resolution: str | None) -> None:
        start, end = self._window(data)
        note(f"query {what} [{start}, {end}) resolution={resolution}")
        if what == "both":
            self._check_both(start, end)
            return
        stream = StreamKey(CONTRACT, TickType(what))
        if resolution in (None, "tick"):
            self._check_ticks(stream, start, end, resolution)
        else:
            self._check_bars(stream, start, end, resolution)

    @rule(
        data=st.data(),
        stream=st.sampled_from(STREAMS),
        others=st.integers(0, 5),
        seed=st.integers(0, 2**32 - 1),
    )
    def cache_is_never_stale(self, data: st.DataObject, stream: StreamKey, others: int, seed: int) -> None:
        """Query, append a batch with one tick inside the window (often a late one), repeat the query.

        The batch's other ticks are current ones (usually outside the window), so the batch's event
        times span more than the window; the repeated answer must hold the new tick.
        """
        start, end = self._window(data)
        if end - start < 2:
            end = start + 2
        self._check_ticks(stream, start, end, None)
        rng = random.Random(seed)
        times = _event_times(self.clock.now_ns(), others, "in_order", rng)
        times.insert(rng.randint(0, others), data.draw(st.integers(start, end - 1), label="new tick ts"))
        self._append(stream, [_raw_tick(stream.tick_type, ts, rng) for ts in times], "late")
        self._check_ticks(stream, start, end, None)

    def check_everything(self, through_api: bool = True) -> None:
        """Whole streams from the engine (no cache) and, unless told not to, through the query API:
        seq 1..n, each tick once, as stored."""
        for stream, model in self.model.items():
            table = self.s.engine.read_stream(stream, 0, 2**62)
            got = table_rows(table, stream.tick_type)
            assert sorted(r[1] for r in got) == list(range(1, len(model) + 1)), (
                f"{stream}: seqs are not 1..{len(model)}"
            )
            assert got == _sorted(model), f"{stream}: {_first_difference(got, _sorted(model))}"
            if through_api:
                self._check_ticks(stream, 0, 2**62, None)


StoreMachine.TestCase.settings = settings(
    max_examples=35,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStoreMachine = StoreMachine.TestCase


# ---- regression tests for bugs found by the property test ---------------------------------------------------------
def test_unencodable_string_is_rejected_without_a_seq_gap(store: TickStore) -> None:
    """A string the JSON encoder cannot write (a lone surrogate) is bad input: rejected, counted, no seq used."""
    stream = StreamKey(CONTRACT, TickType.LAST)
    good = {"ts": T0_NS, "price": 1.0, "size": 1.0}
    assert store.append_batch_sync(CONTRACT, "last", [good]).last_seq == 1
    with pytest.raises(TickValidationError):
        store.append_batch_sync(CONTRACT, "last", [{**good, "exchange": "bad\ud800"}])
    assert store.append_batch_sync(CONTRACT, "last", [good]).first_seq == 2
    skipped = store.append_batch_sync(CONTRACT, "last", [good, {**good, "exchange": "\udfff"}, good], on_error="skip")
    assert (skipped.first_seq, skipped.last_seq, len(skipped.rejected)) == (3, 4, 1)
    assert store.engine.read_stream(stream, 0, 2**62).column("seq").to_pylist() == [1, 2, 3, 4]


def test_read_stream_of_some_columns(store: TickStore) -> None:
    """`read_stream(..., columns=[...])` returns those columns in (ts, seq) order, whether or not ts is among them."""
    store.append_batch_sync(CONTRACT, "last", [{"ts": T0_NS + 1, "price": 1.0, "size": 1.0}])
    store.append_batch_sync(CONTRACT, "last", [{"ts": T0_NS, "price": 2.0, "size": 1.0}])
    table = store.engine.read_stream(StreamKey(CONTRACT, TickType.LAST), 0, 2**62, columns=["seq", "price"])
    assert table.to_pydict() == {"seq": [2, 1], "price": [2.0, 1.0]}
