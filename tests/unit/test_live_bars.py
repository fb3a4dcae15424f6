"""The live bar builder against the batch order-flow service on the same stored ticks, plus its upsert,
window and lateness rules checked against plain Python computations."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from ib_stream.analytics.live_bars import LiveBarBuilder
from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.live.feed import SessionKey, builder_for, seed_builder
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import MarketSessions, TickStore
from ib_stream.store.schema import table_to_records
from tests.conftest import CONTRACT, T0_NS, seconds

AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST))
MINUTE = 60 * NS_PER_SECOND
HOUR = 60 * MINUTE
START = T0_NS - HOUR  # 13:00 UTC; the XNAS regular session starts at 14:30 UTC (a reset inside the 14:00 hour)
END = T0_NS + 2 * HOUR
COMPARED = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "buy_volume",
    "sell_volume",
    "unknown_volume",
    "session_vwap",
    "empty",
    "delta",
    "cvd_open",
    "cvd_high",
    "cvd_low",
    "cvd_close",
    "obi_open",
    "obi_high",
    "obi_low",
    "obi_close",
    "obi_count",
)


def market(seed: int, n_quotes: int = 3000, n_trades: int = 1500) -> tuple[list[dict], list[dict]]:
    """Random quotes and trades over [START, END): some recorded sides, locked/crossed and empty quotes,
    trades stamped exactly at quote times, quiet stretches (empty bars)."""
    rng = random.Random(seed)
    quiet = (START + 20 * MINUTE, START + 27 * MINUTE)

    def stamp() -> int:
        while True:
            ts = rng.randrange(START, END)
            if not quiet[0] <= ts < quiet[1]:
                return ts

    quotes = []
    for ts in sorted(stamp() for _ in range(n_quotes)):
        bid = round(100 + rng.uniform(-1, 1), 2)
        spread = rng.choice([0.01, 0.02, 0.05, 0.0, -0.01])  # 0: locked, < 0: crossed
        sizes = (0.0, 0.0) if rng.random() < 0.03 else (float(rng.randint(1, 500)), float(rng.randint(1, 500)))
        quotes.append({"ts": ts, "bid_price": bid, "ask_price": round(bid + spread, 2), "bid_size": sizes[0],
                       "ask_size": sizes[1]})  # fmt: skip
    trades = []
    for i in range(n_trades):
        ts = quotes[rng.randrange(len(quotes))]["ts"] if i % 10 == 0 else stamp()
        trade: dict[str, Any] = {
            "ts": ts,
            "price": round(100 + rng.uniform(-1.1, 1.1), 2),
            "size": float(rng.randint(1, 50)),
        }
        if rng.random() < 0.2:
            trade["side"] = rng.choice([1, -1])
        trades.append(trade)
    trades.sort(key=lambda t: t["ts"])
    return quotes, trades


def stored(store: TickStore, quotes: list[dict], trades: list[dict]) -> list[tuple[StreamKey, dict]]:
    """Store the ticks and read them back as live records, merged by ts (stable: quotes first at a tie)."""
    store.append_batch_sync(CONTRACT, TickType.BID_ASK, quotes, source="test")
    store.append_batch_sync(CONTRACT, TickType.LAST, trades, source="test")
    items = []
    for tick_type in (TickType.BID_ASK, TickType.LAST):
        stream = StreamKey(CONTRACT, tick_type)
        items += [(stream, r) for r in table_to_records(store.engine.read_stream(stream, START, END))]
    return sorted(items, key=lambda item: item[1]["ts"])


def batch_rows(store: TickStore, resolution: str, start: int = START, end: int = END) -> dict[int, dict]:
    request = BarsRequest(CONTRACT, start, end, resolution, obi_source="quotes")
    table = OrderFlow(store.engine, AAPL).bars(request).table
    frame = table.to_pandas()
    frame["ts"] = table.column("timestamp").cast("int64").to_numpy()
    return {int(r["ts"]): r for r in frame.to_dict("records")}


def assert_same(live: dict[str, Any], batch: dict[str, Any]) -> None:
    for name in COMPARED:
        a, b = live[name], batch[name]
        if isinstance(b, float | np.floating) and math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), (live["ts"], name, a, b)
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (live["ts"], name, a, b)


def live_upserts(builder: LiveBarBuilder, items: list, chunk_sizes: random.Random) -> dict[int, dict]:
    """Feed items in random chunks; apply every upsert to a dict by ts (replace or append), checking the
    rules: a bar once final stays final, and a new ts is always later than those seen (append at the end)."""
    bars: dict[int, dict] = {}
    i = 0
    while i < len(items):
        n = chunk_sizes.randint(1, 200)
        for row in builder.update(items[i : i + n]):
            if row["ts"] in bars:
                assert not bars[row["ts"]]["final"] or row["final"], "a final bar became forming again"
            else:
                assert not bars or row["ts"] > max(bars), "a new bar must come after every known bar"
            bars[row["ts"]] = row
        i += n
    return bars


@pytest.mark.parametrize(("seed", "resolution"), [(1, "1m"), (2, "5m"), (3, "1h"), (4, "30s")])
def test_live_bars_equal_the_batch_bars(store: TickStore, seed: int, resolution: str) -> None:
    quotes, trades = market(seed)
    items = stored(store, quotes, trades)
    builder = builder_for(AAPL, resolution, window=10_000)
    live = live_upserts(builder, items, random.Random(seed))
    batch = batch_rows(store, resolution, START - START % builder.bar_ns)
    first, last = items[0][1]["ts"], items[-1][1]["ts"]
    expected_ts = [t for t in batch if first - builder.bar_ns < t <= last]
    assert sorted(live) == expected_ts  # every bar from the first tick's to the last tick's, empty ones too
    assert any(row["empty"] for row in live.values()) or resolution == "1h"
    for ts in expected_ts:
        assert_same(live[ts], batch[ts])
        assert live[ts]["final"] == (ts != expected_ts[-1])
    assert builder.snapshot() == [live[t] for t in expected_ts]


def test_a_reset_inside_a_bar_is_seen_like_the_batch(store: TickStore) -> None:
    quotes, trades = market(5)
    items = stored(store, quotes, trades)
    live = live_upserts(builder_for(AAPL, "1h"), items, random.Random(5))
    session_start = MarketSessions("XNAS").on("2025-01-10").start_ns
    bar = live[session_start - session_start % HOUR]
    assert bar["session"] == session_start
    assert bar["cvd_low"] <= 0 <= bar["cvd_high"]
    # Plain Python: CVD at the end of that hour counts the trades from the session start only.
    signs = batch_signs(store)
    expected = sum(s * t["size"] for s, t in zip(signs, trades, strict=True) if session_start <= t["ts"] < T0_NS + HOUR)
    assert bar["cvd_close"] == pytest.approx(expected)


def batch_signs(store: TickStore, start: int = START) -> list[int]:
    """The side of each stored trade from `start` on, by side.classify (tick rule context from `start`)."""
    from ib_stream.analytics.side import classify_table

    trades = store.engine.read_stream(StreamKey(CONTRACT, TickType.LAST), start, END)
    quotes = store.engine.read_stream(StreamKey(CONTRACT, TickType.BID_ASK), start - 300 * NS_PER_SECOND, END)
    return [int(s) for s in classify_table(trades, quotes).side]


@pytest.mark.parametrize("first", [TickType.BID_ASK, TickType.LAST])
def test_streams_interleaved_by_batch_still_give_the_batch_bars(store: TickStore, first: TickType) -> None:
    # The fan-out delivers each stream in order, but streams interleave by batch: here each 45 s of one
    # stream arrives before the same 45 s of the other. Quotes first: trades often land in bars the quotes
    # already passed. Trades first: their prevailing quote arrives after them and they are classified again.
    # A lateness allowance of a minute covers the interleaving: no tick is late, no bar final too early.
    quotes, trades = market(6)
    items = stored(store, quotes, trades)
    builder = builder_for(AAPL, "1m", lateness_ns=MINUTE)
    live: dict[int, dict] = {}
    step = 45 * NS_PER_SECOND
    order = (first, TickType.LAST if first == TickType.BID_ASK else TickType.BID_ASK)
    for lo in range(START, END, step):
        for tick_type in order:
            part = [it for it in items if it[0].tick_type == tick_type and lo <= it[1]["ts"] < lo + step]
            for row in builder.update(part):
                live[row["ts"]] = row
    assert builder.late_ticks == 0
    batch = batch_rows(store, "1m")
    for ts, row in live.items():
        assert_same(row, batch[ts])


def test_ticks_within_the_lateness_amend_open_bars_and_older_ones_are_counted_not_applied() -> None:
    builder = LiveBarBuilder(MINUTE, lateness_ns=MINUTE)
    trade = StreamKey(CONTRACT, TickType.LAST)
    builder.update([(trade, {"ts": T0_NS, "price": 10.0, "size": 1.0, "side": 1})])
    rows = builder.update([(trade, {"ts": T0_NS + 2 * MINUTE, "price": 11.0, "size": 2.0, "side": 1})])
    # The watermark (T0 + 2 min) passed the first bar's end + the lateness: it is final, sent once.
    assert [(r["ts"], r["final"]) for r in rows] == [
        (T0_NS, True),
        (T0_NS + MINUTE, False),
        (T0_NS + 2 * MINUTE, False),
    ]
    before = builder.snapshot()
    assert builder.update([(trade, {"ts": T0_NS + 5, "price": 99.0, "size": 5.0, "side": -1})]) == []
    assert builder.late_ticks == 1 and builder.late_since == T0_NS + 5  # the owner re-reads the store (revision)
    assert builder.snapshot() == before
    # Within the lateness: it amends the open previous bar, and the forming bar continues from it.
    rows = builder.update([(trade, {"ts": T0_NS + MINUTE + 1, "price": 12.0, "size": 3.0, "side": -1})])
    assert [(r["ts"], r["final"], r["close"], r["cvd_close"]) for r in rows] == [
        (T0_NS + MINUTE, False, 12.0, 1.0 - 3.0),
        (T0_NS + 2 * MINUTE, False, 11.0, 1.0 - 3.0 + 2.0),
    ]
    # A final bar is never sent again: the next minute finalises the second bar once; the third, still open
    # and unchanged, is not sent again.
    rows = builder.update([(trade, {"ts": T0_NS + 3 * MINUTE, "price": 13.0, "size": 1.0, "side": 1})])
    assert [(r["ts"], r["final"]) for r in rows] == [(T0_NS + MINUTE, True), (T0_NS + 3 * MINUTE, False)]


def test_window_caps_memory_and_upserts_replace_then_append() -> None:
    builder = LiveBarBuilder(NS_PER_SECOND, window=5)
    trade = StreamKey(CONTRACT, TickType.LAST)
    seen: list[tuple[int, bool]] = []
    for i in range(40):
        ts = T0_NS + i * NS_PER_SECOND // 2  # two trades per bar
        seen += [(r["ts"], r["final"]) for r in builder.update([(trade, {"ts": ts, "price": 1.0 + i, "size": 1.0})])]
        assert len(builder.bars) <= 5
    assert [b.start for b in builder.bars] == [T0_NS + k * NS_PER_SECOND for k in range(15, 20)]
    # Each bar: appended forming, replaced by its second trade, then replaced once more as final.
    first_bar = [final for ts, final in seen if ts == T0_NS]
    assert first_bar == [False, False, True]


def test_a_long_gap_fills_at_most_a_window_of_empty_bars() -> None:
    builder = LiveBarBuilder(NS_PER_SECOND, window=10)
    trade = StreamKey(CONTRACT, TickType.LAST)
    builder.update([(trade, {"ts": T0_NS, "price": 5.0, "size": 1.0})])
    rows = builder.update([(trade, {"ts": T0_NS + 3600 * NS_PER_SECOND, "price": 6.0, "size": 1.0})])
    # The bar with the first trade is sent final (once), then at most a window of empty bars, then the new one.
    assert rows[0]["ts"] == T0_NS and rows[0]["final"] and rows[0]["close"] == 5.0
    assert len(rows) == 1 + 10
    assert all(r["empty"] and r["final"] and r["close"] == 5.0 and r["volume"] == 0 for r in rows[1:-1])
    assert rows[-1]["close"] == 6.0 and not rows[-1]["final"]


def test_session_key_is_the_latest_session_start() -> None:
    sessions = MarketSessions("XNAS")
    key = SessionKey(sessions)
    friday = sessions.on("2025-01-10")
    monday = sessions.on("2025-01-13")
    assert key(friday.start_ns) == friday.start_ns
    assert key(friday.start_ns - 1) == sessions.on("2025-01-08").start_ns  # 2025-01-09: markets closed
    assert key(friday.end_ns + seconds(3600 * 30)) == friday.start_ns  # the weekend
    assert key(monday.start_ns + 5) == monday.start_ns
    assert key(friday.start_ns + 5) == friday.start_ns


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValidationError, match="resolution"):
        builder_for(AAPL, "1d")
    with pytest.raises(ValidationError, match="window"):
        LiveBarBuilder(MINUTE, window=1)
    with pytest.raises(ValidationError, match="session"):
        builder_for(Contract(1, "ES", calendar="CMES"), "1m", session_type="pre_market")


def test_the_cvd_path_passes_through_zero_at_a_reset_inside_a_bar() -> None:
    # Only buys: 4 in the hour before; then the CVD climbs from 4 to 10, the reset at :30 restarts it
    # at 0, and it ends at 5. Without the reset's 0 the low would be 2.
    reset = T0_NS + 30 * MINUTE
    builder = LiveBarBuilder(HOUR, session_of=lambda ts: reset if ts >= reset else 0)
    trade = StreamKey(CONTRACT, TickType.LAST)
    sizes = [(T0_NS - MINUTE, 4.0), (T0_NS + MINUTE, 1.0), (T0_NS + 2 * MINUTE, 5.0), (reset + MINUTE, 2.0),
             (reset + 2 * MINUTE, 3.0)]  # fmt: skip
    rows = builder.update([(trade, {"ts": ts, "price": 10.0, "size": s, "side": 1}) for ts, s in sizes])
    row = rows[-1]
    assert (row["cvd_open"], row["cvd_high"], row["cvd_low"], row["cvd_close"]) == (4.0, 10.0, 0.0, 5.0)
    assert (row["delta"], row["session"], row["session_vwap"]) == (11.0, reset, 10.0)
    # The batch function on the same trades and reset agrees.
    from ib_stream.analytics.engine import cvd_bars
    from ib_stream.analytics.grid import BarGrid

    grid = BarGrid.utc(T0_NS - HOUR, T0_NS + HOUR, "1h")
    ts = np.array([t for t, _ in sizes])
    batch = cvd_bars(grid, ts, np.array([s for _, s in sizes]), np.ones(len(sizes)), [reset])
    assert [batch[k][1] for k in ("cvd_open", "cvd_high", "cvd_low", "cvd_close")] == [4.0, 10.0, 0.0, 5.0]


@pytest.mark.parametrize("minutes", [97, 90, 30])  # 14:37 (mid-session), 14:30 (the session start), 13:30 (before)
def test_a_builder_seeded_mid_session_continues_like_the_batch_from_that_point(store: TickStore, minutes: int) -> None:
    quotes, trades = market(7)
    items = stored(store, quotes, trades)
    until = START + minutes * MINUTE
    builder = builder_for(AAPL, "1m")
    seed_builder(builder, store.engine, CONTRACT, until)
    live = live_upserts(builder, [it for it in items if it[1]["ts"] >= until], random.Random(7))
    batch = batch_rows(store, "1m", until)
    assert live and all(ts >= until for ts in live)
    for ts, row in live.items():
        assert_same(row, batch[ts])
    # The seeded CVD counts the trades since the session in progress began (the day before, for 13:30),
    # classified with the tick rule starting there: plain Python over side.classify of those trades.
    sessions = MarketSessions("XNAS")
    reset = sessions.current(until).start_ns
    signs = batch_signs(store, max(reset, START))
    before = [
        s * t["size"] for s, t in zip(signs, [t for t in trades if t["ts"] >= reset], strict=False) if t["ts"] < until
    ]
    assert live[until]["cvd_open"] == pytest.approx(sum(before))


def depth_events(seed: int, by_price: bool, n: int = 3000) -> list[dict[str, Any]]:
    """Random depth ticks over [START, END): price levels (size 0 / delete remove a level) or IB position rows."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    rows = {"bid": 0, "ask": 0}
    for ts in sorted(rng.randrange(START, END) for _ in range(n)):
        side = rng.choice(["bid", "ask"])
        tick: dict[str, Any] = {"ts": ts, "side": side, "by_price": by_price, "size": float(rng.randint(0, 300))}
        if by_price:
            offset = rng.randint(1, 8) * 0.01
            tick |= {"price": round(100 - offset if side == "bid" else 100 + offset, 2), "position": 0}
            tick["operation"] = "delete" if rng.random() < 0.1 else rng.choice(["insert", "update"])
        else:
            held = rows[side]
            op = "insert" if held < 3 or (held < 10 and rng.random() < 0.3) else rng.choice(["update", "delete"])
            position = rng.randint(0, held) if op == "insert" else rng.randrange(held)
            rows[side] += {"insert": 1, "delete": -1, "update": 0}[op]
            tick |= {"operation": op, "position": position, "price": 100.0 + rng.randint(-5, 5) * 0.01}
            tick["size"] = max(tick["size"], 1.0)
        events.append(tick)
    return events


@pytest.mark.parametrize("by_price", [True, False])
def test_depth_obi_equals_the_batch_depth_obi(store: TickStore, by_price: bool) -> None:
    contract = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST, TickType.DEPTH))
    quotes, trades = market(8, n_quotes=500, n_trades=300)
    items = stored(store, quotes, trades)
    store.append_batch_sync(CONTRACT, TickType.DEPTH, depth_events(8, by_price), source="test")
    depth = StreamKey(CONTRACT, TickType.DEPTH)
    items = sorted(items + [(depth, r) for r in table_to_records(store.engine.read_stream(depth, START, END))],
                   key=lambda item: item[1]["ts"])  # fmt: skip
    builder = builder_for(contract, "5m", obi_source="depth", levels=3)
    assert builder.book is not None and TickType.DEPTH in builder.tick_types
    live = live_upserts(builder, items, random.Random(8))
    request = BarsRequest(CONTRACT, START, END, "5m", obi_source="depth", levels=3)
    result = OrderFlow(store.engine, contract).bars(request)
    assert result.obi_source == "depth"
    table = result.table
    batch = dict(zip(table.column("timestamp").cast("int64").to_pylist(), table.to_pylist(), strict=True))
    assert set(live) <= set(batch)
    for ts, row in live.items():
        for name in ("obi_open", "obi_high", "obi_low", "obi_close", "obi_count"):
            expected = batch[ts][name]
            if expected is None or math.isnan(expected):
                assert math.isnan(row[name]), (ts, name)
            else:
                assert row[name] == pytest.approx(expected), (ts, name)


def test_auto_obi_uses_top_of_book_until_depth_arrives_like_the_batch_without_depth(store: TickStore) -> None:
    contract = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST, TickType.DEPTH))
    quotes, trades = market(9, n_quotes=800, n_trades=200)
    items = stored(store, quotes, trades)
    builder = builder_for(contract, "5m", obi_source="auto")
    live = live_upserts(builder, items, random.Random(9))
    result = OrderFlow(store.engine, contract).bars(BarsRequest(CONTRACT, START, END, "5m", obi_source="auto"))
    assert result.obi_source == "quotes"  # no depth recorded: the batch falls back too
    frame = result.table.to_pandas()
    batch = {int(t.value): r for t, r in zip(frame["timestamp"], frame.to_dict("records"), strict=True)}
    for ts, row in live.items():
        assert_same(row, batch[ts])
    # The first depth tick switches the OBI to the book: bid 300 vs ask 0 (one side only) → +1.
    last = max(live)
    depth = StreamKey(CONTRACT, TickType.DEPTH)
    tick = {"ts": END - 1, "side": "bid", "position": 0, "operation": "insert", "price": 99.0, "size": 300.0}
    (row,) = builder.update([(depth, tick)])
    assert row["ts"] == last and row["obi_close"] == 1.0 and row["obi_count"] == live[last]["obi_count"] + 1
    assert builder.update([(StreamKey(CONTRACT, TickType.BID_ASK), {**quotes[-1], "ts": END - 1})]) == []
    assert builder.snapshot()[-1]["obi_close"] == 1.0  # quotes no longer move it
