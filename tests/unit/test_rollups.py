"""1-second rollups: bars rebuilt from per-second rows equal the tick computation (random data, empty seconds,
resets inside bars), and stored rollups over a real store equal the tick path, bypassed and rebuilt on late data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ib_stream.analytics.engine import bars_from_rows, cvd_bars, obi_bars, trade_bars
from ib_stream.analytics.grid import BarGrid
from ib_stream.analytics.obi import VOLUMES_SCHEMA, obi_series
from ib_stream.analytics.request import BarsRequest
from ib_stream.analytics.rows import second_rows
from ib_stream.analytics.side import classify
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import TickStore
from ib_stream.store.rollups import RollupStore, load_rows, update_rollups
from tests.conftest import CONTRACT, T0_NS

S = NS_PER_SECOND
MINUTE = 60 * S
HOUR = 60 * MINUTE
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=0.01)


def random_day(seed: int, n_trades: int, n_quotes: int, span: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Trades (whole sizes, quarter prices, some with a recorded side) and quotes around them, bursty in time."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0_NS + rng.integers(0, span // 20, n_trades) * 20 + rng.integers(0, 20, n_trades))
    ts = ts[(ts < T0_NS + span // 3) | (ts > T0_NS + span // 3 + 7 * MINUTE)]  # a gap: empty seconds and bars
    n = len(ts)
    mid = 100 + np.cumsum(rng.choice([-0.25, 0.0, 0.25], n))
    trades = {
        "ts": ts,
        "price": mid + rng.choice([-0.25, 0.0, 0.25], n),
        "size": rng.integers(1, 40, n).astype(float),
        "side": rng.choice(np.array([1, -1, 0, 0, 0], dtype=np.int8), n),
    }
    qts = np.sort(T0_NS - 10 * MINUTE + rng.integers(0, span + 10 * MINUTE, n_quotes))
    qmid = np.interp(qts, ts, mid)
    quotes = {
        "ts": qts,
        "bid_price": np.round(qmid * 4) / 4 - 0.25,
        "ask_price": np.round(qmid * 4) / 4 + rng.choice([0.25, 0.5, 0.0], n_quotes),
        "bid_size": rng.integers(0, 30, n_quotes).astype(float),
        "ask_size": rng.integers(0, 30, n_quotes).astype(float),
    }
    return trades, quotes


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for name, values in want.items():
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(values), err_msg=name)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("resolution", ["1s", "5s", "1m", "15m", "1h"])
def test_bars_from_second_rows_equal_bars_from_ticks(seed: int, resolution: str) -> None:
    trades, quotes = random_day(seed, 3000, 6000, 3 * HOUR)
    sides = classify(
        trades["ts"], trades["price"], trades["side"], (quotes["ts"], quotes["bid_price"], quotes["ask_price"])
    )
    volumes = pa.table(
        {
            "ts": pa.array(quotes["ts"]).cast(VOLUMES_SCHEMA.field("ts").type),
            "bid_volume": quotes["bid_size"],
            "ask_volume": quotes["ask_size"],
        },
        schema=VOLUMES_SCHEMA,
    )
    obi_ts, obi_values = obi_series(volumes)
    rows = second_rows(trades["ts"], trades["price"], trades["size"], sides.side, sides.method, obi_ts, obi_values)
    rng = np.random.default_rng(seed)
    start = T0_NS + int(rng.integers(1, 40)) * MINUTE + int(rng.integers(0, 60)) * S
    end = T0_NS + 3 * HOUR - int(rng.integers(0, 30)) * MINUTE
    grid = BarGrid.utc(start, end, resolution)
    resets = sorted({T0_NS + int(r) * S for r in rng.integers(0, 3 * 3600, 3)} | {T0_NS + HOUR + 30 * S})
    want = trade_bars(grid, trades["ts"], trades["price"], trades["size"], sides.side, resets)
    want |= cvd_bars(grid, trades["ts"], trades["size"], sides.side, resets)
    in_window = obi_ts >= start - 300 * S
    want |= obi_bars(grid, volumes.filter(pa.array(quotes["ts"] >= start - 300 * S)))
    assert in_window.any()
    got, methods = bars_from_rows(grid, rows, ("ohlc", "cvd", "obi"), resets, start - 300 * S)
    assert_same(got, want)
    in_range = (trades["ts"] >= start) & (trades["ts"] < end)
    expected_methods = {"recorded": 1, "quote": 2, "tick": 3, "unknown": 0}
    assert methods == {k: int((sides.method[in_range] == v).sum()) for k, v in expected_methods.items()}
    if resolution in ("1s", "5s", "1m"):
        assert np.asarray(want["empty"]).any()  # the 7-minute gap made empty bars


def write_day(store: TickStore, trades: dict[str, np.ndarray], quotes: dict[str, np.ndarray]) -> None:
    def ticks(cols: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        names = [k for k in cols if k not in skip]
        out = [{k: cols[k][i].item() for k in names} for i in range(len(cols["ts"]))]
        for tick, side in zip(out, cols.get("side", np.zeros(0)), strict=False):
            tick.pop("side", None)
            if side:
                tick["side"] = int(side)
        return out

    store.append_batch_sync(CONTRACT, "bid_ask", ticks(quotes))
    store.append_batch_sync(CONTRACT, "last", ticks(trades))


def archive_all(store: TickStore, clock: ManualClock, when: int) -> None:
    clock.set(when)
    store.run_archival()


REQUESTS = [
    dict(resolution="1m"),
    dict(resolution="1s", kinds=("cvd", "obi")),
    dict(resolution="5m", anchor="range"),
    dict(resolution="1h", kinds=("ohlc",)),
    dict(resolution="1d", kinds=("ohlc", "cvd")),
]


def compare(store: TickStore, start: int, end: int, *, expect_rollups: bool) -> None:
    for extra in REQUESTS:
        request = BarsRequest(CONTRACT, start, end, **extra)  # type: ignore[arg-type]
        ticks = OrderFlow(store.engine, AAPL, depth_volumes=None, use_rollups=False).bars(request)
        rolled = OrderFlow(store.engine, AAPL, depth_volumes=None).bars(request)
        assert rolled.side_methods == ticks.side_methods and rolled.obi_source == ticks.obi_source
        assert rolled.table.column_names == ticks.table.column_names
        assert_same(rolled.table.to_pydict(), ticks.table.to_pydict())
    context = OrderFlow(store.engine, AAPL)._context_start(BarsRequest(CONTRACT, start, end))
    stream = StreamKey(CONTRACT, TickType.LAST)
    assert (load_rows(store.engine, stream, context, start - 300 * S, end) is not None) == expect_rollups


def test_stored_rollups_give_the_tick_answer_and_late_data_is_never_served_stale(
    store: TickStore, clock: ManualClock
) -> None:
    trades, quotes = random_day(7, 4000, 8000, 5 * HOUR)  # 14:00-19:00 UTC across the 14:30 open
    trades["side"][:] = np.where(trades["side"] == 0, 1, trades["side"])  # recorded sides: no context effects
    trades["side"][::7] = 0  # ... except every 7th, classified by quotes / ticks
    write_day(store, trades, quotes)
    archive_all(store, clock, T0_NS + 8 * HOUR)
    assert update_rollups(store.engine) >= 5
    assert update_rollups(store.engine) == 0  # idempotent
    start, end = T0_NS + 45 * MINUTE, T0_NS + 5 * HOUR
    compare(store, start, end, expect_rollups=True)
    compare(store, T0_NS + 2 * HOUR, T0_NS + 4 * HOUR + 30 * MINUTE, expect_rollups=True)

    # Late trades into an archived, rolled-up hour: while hot, the rollup is bypassed; archived, it is stale.
    late_ts = np.array([T0_NS + 2 * HOUR + 17 * S + 5, T0_NS + 2 * HOUR + 30 * MINUTE])
    late = {
        "ts": late_ts,
        "price": np.array([250.0, 1.0]),
        "size": np.array([1000.0, 3.0]),
        "side": np.array([1, -1], dtype=np.int8),
    }
    store.append_batch_sync(
        CONTRACT,
        "last",
        [
            {"ts": int(t), "price": float(p), "size": float(q), "side": int(s)}
            for t, p, q, s in zip(late["ts"], late["price"], late["size"], late["side"], strict=True)
        ],
    )
    compare(store, start, end, expect_rollups=True)
    highs = OrderFlow(store.engine, AAPL, depth_volumes=None).bars(BarsRequest(CONTRACT, start, end, "1h"))
    assert 250.0 in highs.table["high"].to_pylist()
    archive_all(store, clock, T0_NS + 9 * HOUR)
    compare(store, start, end, expect_rollups=True)  # the stale hour is computed from ticks, the rest rolled up
    assert update_rollups(store.engine) == 1
    compare(store, start, end, expect_rollups=True)
    store.run_compaction()
    assert update_rollups(store.engine) >= 1  # compaction replaced the files: new keys
    compare(store, start, end, expect_rollups=True)


def test_rollup_files_are_keyed_and_without_rollups_the_tick_path_answers(store: TickStore, clock: ManualClock) -> None:
    trades, quotes = random_day(11, 500, 1000, 2 * HOUR)
    write_day(store, trades, quotes)
    archive_all(store, clock, T0_NS + 4 * HOUR)
    stream = StreamKey(CONTRACT, TickType.LAST)
    start, end = T0_NS + 45 * MINUTE, T0_NS + 2 * HOUR
    assert load_rows(store.engine, stream, T0_NS + 30 * MINUTE, start, end) is None  # nothing stored yet
    compare(store, start, end, expect_rollups=False)
    update_rollups(store.engine)
    rollups = RollupStore.for_engine(store.engine)
    assert rollups.key(stream, T0_NS + HOUR) is not None
    assert rollups.read(stream, T0_NS + HOUR, "not-the-key") is None


def test_sides_that_depend_on_earlier_partitions_are_carried_in_exactly(store: TickStore, clock: ManualClock) -> None:
    # No recorded sides; quotes only from minute 10 to 50 of each hour (the first trades of an hour see no
    # quote in the 300 s lookback) and a flat price there (the tick rule needs the direction carried in).
    trades, quotes = random_day(5, 3000, 6000, 5 * HOUR)
    trades["side"][:] = 0
    minute_of_hour = (trades["ts"] - T0_NS) % HOUR // MINUTE
    flat = minute_of_hour < 4
    trades["price"][flat] = 100.0 + np.floor((trades["ts"][flat] - T0_NS) / HOUR)
    keep = ((quotes["ts"] - T0_NS) % HOUR >= 10 * MINUTE) & ((quotes["ts"] - T0_NS) % HOUR < 50 * MINUTE)
    write_day(store, trades, {k: v[keep] for k, v in quotes.items()})
    archive_all(store, clock, T0_NS + 8 * HOUR)
    assert update_rollups(store.engine) >= 5
    rollups = RollupStore.for_engine(store.engine)
    stream = StreamKey(CONTRACT, TickType.LAST)
    sensitive = [
        read.sensitive
        for hour in range(1, 5)
        if (read := rollups.read(stream, T0_NS + hour * HOUR, rollups_key(store, T0_NS + hour * HOUR))) is not None
    ]
    assert len(sensitive) == 4 and all(sensitive)
    compare(store, T0_NS + 45 * MINUTE, T0_NS + 5 * HOUR, expect_rollups=True)
    compare(store, T0_NS + 30 * MINUTE, T0_NS + 4 * HOUR, expect_rollups=True)


def rollups_key(store: TickStore, start: int) -> str:
    from ib_stream.store.rollups import DEFAULT_LOOKBACK_NS, _Catalog

    catalog = _Catalog.of(store.engine, StreamKey(CONTRACT, TickType.LAST), DEFAULT_LOOKBACK_NS, start, start + HOUR)
    return catalog.key(start)


def test_a_flat_hour_carries_the_direction_of_its_price_change_from_the_hour_before(
    store: TickStore, clock: ManualClock
) -> None:
    # No quotes, no recorded sides: the tick rule alone, within the regular session (from 14:30Z, when CVD and
    # the classification context start). 15:00 rises (direction +1); every trade of 16:00 is at 99 — a fall
    # from 15:00's last price, seen only across the boundary (direction -1); 17:00 stays at 99, so its zero
    # ticks inherit -1: sells. A carry that missed 16:00's boundary change would keep +1 and call them buys.
    def hour(h: int, prices: list[float]) -> list[int]:
        return [T0_NS + (h + 1) * HOUR + (i + 1) * MINUTE for i in range(len(prices))]

    prices = [[100.0, 100.5, 101.0], [99.0, 99.0, 99.0], [99.0, 99.0]]
    ts = [t for h, p in enumerate(prices) for t in hour(h, p)]
    flat = [p for ps in prices for p in ps]
    store.append_batch_sync(
        CONTRACT, "last", [{"ts": t, "price": p, "size": 1.0} for t, p in zip(ts, flat, strict=True)]
    )
    archive_all(store, clock, T0_NS + 6 * HOUR)
    assert update_rollups(store.engine) == 3
    request = BarsRequest(CONTRACT, T0_NS + 3 * HOUR, T0_NS + 4 * HOUR, resolution="1h", kinds=("ohlc", "cvd"))
    rolled = OrderFlow(store.engine, AAPL, depth_volumes=None).bars(request).table.to_pydict()
    ticks = OrderFlow(store.engine, AAPL, depth_volumes=None, use_rollups=False).bars(request).table.to_pydict()
    assert ticks["sell_volume"] == [2.0] and ticks["buy_volume"] == [0.0]  # the tick rule, worked out by hand
    assert_same(rolled, ticks)
