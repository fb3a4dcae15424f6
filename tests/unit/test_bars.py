"""Bars at a resolution: trade OHLCV/VWAP against an independent pandas resample, quote OBI,
mid-point OHLC, explicit empty intervals, UTC alignment and the resolutions refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ib_stream.analytics.grid import RESOLUTIONS
from ib_stream.clock import ManualClock
from ib_stream.errors import QueryError
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

MINUTE = 60


def random_trades(n: int, span_seconds: int, seed: int = 1, gap: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Trades at random ns instants in [T0, T0 + span), none inside `gap` (seconds), several sharing a ts."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, span_seconds * 1_000_000_000, n)
    offsets[::10] = offsets[1::10][: len(offsets[::10])]  # shared timestamps
    if gap is not None:
        offsets = offsets[(offsets < gap[0] * 1_000_000_000) | (offsets >= gap[1] * 1_000_000_000)]
    return [
        trade(T0_NS + int(o), price=float(np.round(rng.uniform(99, 101), 2)), size=float(rng.integers(1, 300)))
        for o in offsets
    ]


def pandas_trade_bars(ticks: list[dict[str, Any]], start: int, end: int, rule: str) -> pd.DataFrame:
    frame = pd.DataFrame(ticks)
    frame["seq"] = np.arange(1, len(frame) + 1)
    frame = frame.sort_values(["ts", "seq"])
    frame["timestamp"] = pd.to_datetime(frame["ts"], unit="ns", utc=True)
    frame["notional"] = frame["price"] * frame["size"]
    grouped = frame.set_index("timestamp").resample(rule, label="left", closed="left", origin="epoch")
    bars = grouped.agg({"price": ["first", "max", "min", "last", "count"], "size": "sum", "notional": "sum"})
    bars.columns = ["open", "high", "low", "close", "trade_count", "volume", "notional"]
    edges = pd.date_range(
        pd.Timestamp(start, unit="ns", tz="UTC").floor(rule), pd.Timestamp(end - 1, unit="ns", tz="UTC"), freq=rule
    )
    bars = bars.reindex(edges)
    bars["trade_count"] = bars["trade_count"].fillna(0).astype(int)
    bars["volume"] = bars["volume"].fillna(0.0)
    bars["vwap"] = bars["notional"] / bars["volume"].where(bars["volume"] > 0)
    return bars


async def bars(store: TickStore, tick_type: str, start: int, end: int, resolution: str) -> pd.DataFrame:
    return await StorageQuery(store.engine).query_range(CONTRACT, tick_type, start, end, resolution)


async def test_trade_bars_equal_a_pandas_resample(store: TickStore) -> None:
    ticks = random_trades(2000, 30 * MINUTE, gap=(7 * MINUTE, 10 * MINUTE))
    await store.append_batch(CONTRACT, "last", ticks)
    start, end = T0_NS, T0_NS + seconds(30 * MINUTE)
    got = await bars(store, "last", start, end, "1m")
    expected = pandas_trade_bars(ticks, start, end, "1min")
    assert list(got["timestamp"]) == list(expected.index)
    filled = ~got["empty"].to_numpy()
    assert filled.sum() == 27
    for name in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[name].to_numpy()[filled], expected[name].to_numpy()[filled], err_msg=name)
    np.testing.assert_array_equal(got["trade_count"].to_numpy(), expected["trade_count"].to_numpy())
    np.testing.assert_allclose(got["volume"].to_numpy(), expected["volume"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["vwap"].to_numpy(), expected["vwap"].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("resolution", ["1s", "15s", "5m", "1h"])
async def test_trade_bars_at_other_resolutions(store: TickStore, resolution: str) -> None:
    ticks = random_trades(300, 10 * MINUTE, seed=3)
    await store.append_batch(CONTRACT, "last", ticks)
    start, end = T0_NS + seconds(17), T0_NS + seconds(10 * MINUTE)
    rule = {"1s": "1s", "15s": "15s", "5m": "5min", "1h": "1h"}[resolution]
    in_range = [t for t in ticks if start <= t["ts"] < end]
    expected = pandas_trade_bars(in_range, start, end, rule)
    got = await bars(store, "last", start, end, resolution)
    assert list(got["timestamp"]) == list(expected.index)
    np.testing.assert_array_equal(got["trade_count"].to_numpy(), expected["trade_count"].to_numpy())
    np.testing.assert_allclose(got["volume"].to_numpy(), expected["volume"].to_numpy(), rtol=1e-12)
    filled = ~got["empty"].to_numpy()
    np.testing.assert_array_equal(got["high"].to_numpy()[filled], expected["high"].to_numpy()[filled])


async def test_trade_bars_from_archive_equal_bars_from_the_hot_tier(store: TickStore, clock: ManualClock) -> None:
    ticks = random_trades(500, 14 * MINUTE, seed=5)
    await store.append_batch(CONTRACT, "last", ticks)
    hot = await bars(store, "last", T0_NS, T0_NS + seconds(15 * MINUTE), "1m")
    clock.advance(4 * 3600)
    store.run_archival()
    assert store.buffer.hot(next(iter(store.buffer.streams()))).snapshot().chunks == ()
    cold = await bars(store, "last", T0_NS, T0_NS + seconds(15 * MINUTE), "1m")
    pd.testing.assert_frame_equal(cold, hot)


async def test_empty_intervals_are_explicit_flat_at_the_last_close(store: TickStore) -> None:
    await store.append_batch(
        CONTRACT,
        "last",
        [trade(T0_NS + seconds(70), price=10.0, size=2.0), trade(T0_NS + seconds(80), price=12.0, size=1.0)],
    )
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(250), price=11.0, size=4.0)])
    got = await bars(store, "last", T0_NS, T0_NS + seconds(5 * MINUTE), "1m")
    assert list(got["empty"]) == [True, False, True, True, False]
    first, second, third = got.iloc[0], got.iloc[1], got.iloc[2]
    assert np.isnan(first["open"]) and np.isnan(first["close"])  # nothing to carry before the first trade
    assert (second["open"], second["high"], second["low"], second["close"]) == (10.0, 12.0, 10.0, 12.0)
    assert second["vwap"] == pytest.approx(32.0 / 3.0)
    assert (third["open"], third["high"], third["low"], third["close"]) == (12.0, 12.0, 12.0, 12.0)
    assert (third["volume"], third["trade_count"]) == (0.0, 0)
    assert np.isnan(third["vwap"])
    assert list(got["volume"]) == [0.0, 3.0, 0.0, 0.0, 4.0]


async def test_bars_are_aligned_to_utc_multiples(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + seconds(400), 0)])
    got = await bars(store, "last", T0_NS + seconds(150), T0_NS + seconds(1000), "5m")
    assert [t.strftime("%H:%M") for t in got["timestamp"]] == ["14:00", "14:05", "14:10", "14:15"]
    daily = await bars(store, "last", T0_NS + seconds(150), T0_NS + seconds(86_400), "24h")
    assert [str(t) for t in daily["timestamp"]] == ["2025-01-10 00:00:00+00:00", "2025-01-11 00:00:00+00:00"]
    # `1d` is one bar per trading session (XNYS regular: 09:30-16:00 New York = 14:30-21:00 UTC in January),
    # as in /v2/bars; the only session of the range is Friday's (the range ends Saturday 14:00).
    sessions = await bars(store, "last", T0_NS + seconds(150), T0_NS + seconds(86_400), "1d")
    assert [str(t) for t in sessions["timestamp"]] == ["2025-01-10 14:30:00+00:00"]
    assert list(sessions["trade_count"]) == [0]  # the one trade (14:06:40Z) is pre-market, outside the session
    assert str(got["timestamp"].dt.tz) == "UTC"


async def test_quote_bars_hold_the_last_quote_and_obi_ohlc(store: TickStore) -> None:
    quotes = [
        quote(T0_NS + seconds(1), bid_size=300.0, ask_size=100.0, bid_price=99.0, ask_price=99.5),  # obi +0.5
        quote(T0_NS + seconds(2), bid_size=100.0, ask_size=300.0, bid_price=99.1, ask_price=99.6),  # obi -0.5
        quote(T0_NS + seconds(3), bid_size=100.0, ask_size=100.0, bid_price=99.2, ask_price=99.7),  # obi 0
        quote(T0_NS + seconds(61), bid_size=0.0, ask_size=0.0, bid_price=0.0, ask_price=0.0),  # empty book: 0
    ]
    await store.append_batch(CONTRACT, "bid_ask", quotes)
    got = await bars(store, "bid_ask", T0_NS, T0_NS + seconds(3 * MINUTE), "1m")
    first = got.iloc[0]
    assert (first["bid_price"], first["ask_price"], first["bid_size"], first["ask_size"]) == (99.2, 99.7, 100.0, 100.0)
    assert (first["obi_open"], first["obi_high"], first["obi_low"], first["obi_close"]) == (0.5, 0.5, -0.5, 0.0)
    assert first["quote_count"] == 3
    assert got.iloc[1]["obi_close"] == 0.0
    last = got.iloc[2]
    assert bool(last["empty"])
    assert (last["bid_price"], last["ask_price"], last["quote_count"]) == (0.0, 0.0, 0)


async def test_obi_stays_within_minus_one_and_one(store: TickStore) -> None:
    rng = np.random.default_rng(11)
    quotes = [
        quote(T0_NS + seconds(i), bid_size=float(rng.integers(0, 1000)), ask_size=float(rng.integers(0, 1000)))
        for i in range(600)
    ]
    await store.append_batch(CONTRACT, "bid_ask", quotes)
    got = await bars(store, "bid_ask", T0_NS, T0_NS + seconds(600), "30s")
    frame = pd.DataFrame(quotes)
    total = frame["bid_size"] + frame["ask_size"]
    frame["obi"] = (frame["bid_size"] - frame["ask_size"]) / total.where(total > 0)  # no volume: no event
    frame["timestamp"] = pd.to_datetime(frame["ts"], unit="ns", utc=True)
    expected = frame.set_index("timestamp")["obi"].dropna().resample("30s").agg(["first", "max", "min", "last"])
    # OBI is a state: a bar opens at the value in force at its start, the previous bar's last event.
    opens = expected["last"].shift(1).fillna(expected["first"])
    np.testing.assert_allclose(got["obi_open"], opens, rtol=1e-15)
    np.testing.assert_allclose(got["obi_high"], np.fmax(expected["max"], opens), rtol=1e-15)
    np.testing.assert_allclose(got["obi_low"], np.fmin(expected["min"], opens), rtol=1e-15)
    np.testing.assert_allclose(got["obi_close"], expected["last"], rtol=1e-15)
    assert got[["obi_open", "obi_high", "obi_low", "obi_close"]].abs().max().max() <= 1.0


async def test_mid_point_bars_are_ohlc(store: TickStore) -> None:
    values = [100.0, 100.5, 99.5, 100.25]
    await store.append_batch(
        CONTRACT, "MidPoint", [{"ts": T0_NS + seconds(i * 10), "mid_point": v} for i, v in enumerate(values)]
    )
    got = await bars(store, "mid_point", T0_NS, T0_NS + seconds(2 * MINUTE), "1m")
    first = got.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"], first["tick_count"]) == (
        100.0,
        100.5,
        99.5,
        100.25,
        4,
    )
    assert bool(got.iloc[1]["empty"])
    assert got.iloc[1]["close"] == 100.25


async def test_depth_has_no_bars(store: TickStore) -> None:
    tick = {"ts": T0_NS, "side": "bid", "position": 0, "operation": "insert", "price": 1.0, "size": 1.0}
    await store.append_batch(CONTRACT, "depth", [tick])
    with pytest.raises(QueryError) as caught:
        await bars(store, "depth", T0_NS, T0_NS + seconds(60), "1m")
    assert "depth" in caught.value.message
    assert caught.value.details["field"] == "resolution"
    ticks = await bars(store, "depth", T0_NS, T0_NS + seconds(60), "tick")
    assert len(ticks) == 1


async def test_too_many_bars_is_a_query_error(store: TickStore) -> None:
    with pytest.raises(QueryError) as caught:
        await bars(store, "last", T0_NS - seconds(86_400 * 365), T0_NS, "1s")
    assert "1s" in caught.value.message


def test_resolutions_are_the_documented_list() -> None:
    assert RESOLUTIONS == ("tick", "1s", "5s", "15s", "30s", "1m", "5m", "15m", "30m", "1h", "24h", "1d")
