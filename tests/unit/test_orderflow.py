"""Order-flow bars against independent computations: OHLC vs a pandas resample with explicit empty bars,
session bars, CVD with session resets (vs a loop over events), OBI bounds and carry, the value area.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ib_stream.analytics.engine import cvd_bars, obi_bars, trade_bars
from ib_stream.analytics.grid import BarGrid
from ib_stream.analytics.obi import VOLUMES_SCHEMA, imbalance, time_weighted_obi
from ib_stream.analytics.profile import point_of_control, price_levels, value_area, volume_profile, vwap
from ib_stream.analytics.request import BarsRequest, parse_kinds
from ib_stream.calendars import MarketSessions
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import QueryError, ValidationError
from ib_stream.orderflow.service import OrderFlow
from ib_stream.storage import TickStore
from tests.conftest import CONTRACT, T0_NS, quote, trade

MINUTE = 60 * NS_PER_SECOND
HOUR = 60 * MINUTE


def random_trades(n: int, span_ns: int, seed: int, gap: tuple[int, int] | None = None) -> pd.DataFrame:
    """Sorted trades in [T0, T0 + span) with whole-number sizes (exact sums), shared stamps, sides ±1/0."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0_NS + rng.integers(0, span_ns, n))
    ts[1::10] = ts[0::10][: len(ts[1::10])]
    if gap is not None:
        ts = ts[(ts < T0_NS + gap[0]) | (ts >= T0_NS + gap[1])]
    n = len(ts)
    return pd.DataFrame(
        {
            "ts": ts,
            "price": np.round(100 + np.cumsum(rng.choice([-0.25, 0, 0.25], n)), 2),
            "size": rng.integers(1, 50, n).astype(float),
            "side": rng.choice(np.array([1, -1, 1, -1, 0], dtype=np.int8), n),
        }
    )


def frame_ticks(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        trade(int(t), i, price=float(p), size=float(q), side=int(s) or None)
        for i, (t, p, q, s) in enumerate(zip(frame["ts"], frame["price"], frame["size"], frame["side"], strict=True))
    ]


def bars_of(frame: pd.DataFrame, grid: BarGrid, resets: list[int] | tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    return trade_bars(
        grid,
        frame["ts"].to_numpy(),
        frame["price"].to_numpy(),
        frame["size"].to_numpy(),
        frame["side"].to_numpy(),
        resets,
    )


# ---- OHLC ----------------------------------------------------------------------------------------------


def test_trade_bars_equal_a_pandas_resample_with_explicit_empty_bars() -> None:
    frame = random_trades(3000, 30 * MINUTE, seed=1, gap=(7 * MINUTE, 10 * MINUTE))
    start, end = T0_NS + 20 * NS_PER_SECOND, T0_NS + 30 * MINUTE  # the first bar is partial
    grid = BarGrid.utc(start, end, "1m")
    got = bars_of(frame, grid)

    in_range = frame[(frame["ts"] >= start) & (frame["ts"] < end)].copy()
    in_range["timestamp"] = pd.to_datetime(in_range["ts"], unit="ns", utc=True)
    in_range["notional"] = in_range["price"] * in_range["size"]
    for name, side in (("buy", 1), ("sell", -1), ("unknown", 0)):
        in_range[name] = in_range["size"].where(in_range["side"] == side, 0.0)
    resampled = in_range.set_index("timestamp").resample("1min", origin="epoch")
    expected = resampled.agg(
        {
            "price": ["first", "max", "min", "last", "count"],
            "size": "sum",
            "notional": "sum",
            "buy": "sum",
            "sell": "sum",
            "unknown": "sum",
        }
    )
    expected.columns = ["open", "high", "low", "close", "count", "volume", "notional", "buy", "sell", "unknown"]
    expected = expected.reindex(pd.to_datetime(grid.labels, unit="ns", utc=True))
    assert list(pd.to_datetime(grid.labels, unit="ns", utc=True)) == list(expected.index)

    empty = expected["count"].isna() | (expected["count"] == 0)
    assert empty.sum() == 3 and got["empty"].tolist() == empty.tolist()
    filled = ~empty.to_numpy()
    for name in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[name][filled], expected[name].to_numpy()[filled], err_msg=name)
    np.testing.assert_array_equal(got["trade_count"], expected["count"].fillna(0).astype(int))
    for ours, theirs in (("volume", "volume"), ("buy_volume", "buy"), ("sell_volume", "sell")):
        np.testing.assert_array_equal(got[ours], expected[theirs].fillna(0.0).to_numpy(), err_msg=ours)
    np.testing.assert_array_equal(got["unknown_volume"], expected["unknown"].fillna(0.0).to_numpy())
    np.testing.assert_allclose(got["vwap"][filled], (expected["notional"] / expected["volume"]).to_numpy()[filled])
    assert np.isnan(got["vwap"][~filled]).all()
    # Gap fill: flat at the last close before the gap, zero volume.
    last_close = expected["close"].to_numpy()[np.flatnonzero(filled)[np.flatnonzero(filled) < 7][-1]]
    for name in ("open", "high", "low", "close"):
        assert (got[name][~filled] == last_close).all()
    assert (got["volume"][~filled] == 0).all()


def test_empty_bars_before_the_first_trade_carry_the_last_trade_before_the_range() -> None:
    frame = pd.DataFrame(
        {"ts": [T0_NS - 5, T0_NS + 3 * MINUTE], "price": [99.5, 101.0], "size": [1.0, 2.0], "side": [1, -1]}
    )
    got = bars_of(frame, BarGrid.utc(T0_NS, T0_NS + 4 * MINUTE, "1m"))
    assert got["empty"].tolist() == [True, True, True, False]
    assert got["close"].tolist() == [99.5, 99.5, 99.5, 101.0]
    assert got["volume"].tolist() == [0.0, 0.0, 0.0, 2.0]
    nothing_before = bars_of(frame.iloc[1:], BarGrid.utc(T0_NS, T0_NS + 4 * MINUTE, "1m"))
    assert np.isnan(nothing_before["close"][:3]).all()


def test_session_bars_hold_only_the_trades_inside_each_session() -> None:
    # CME Globex: sessions 17:00-16:00 Chicago; trades every 7 minutes around the clock for a week.
    sessions = MarketSessions("CMES")
    start = pd.Timestamp("2024-07-01T00:00Z").value
    end = pd.Timestamp("2024-07-08T00:00Z").value
    ts = np.arange(start, end, 7 * MINUTE)
    frame = pd.DataFrame({"ts": ts, "price": 5000 + (np.arange(len(ts)) % 40) * 0.25, "size": 1.0, "side": 1})
    found = sessions.between(start, end, "regular")
    grid = BarGrid.of_sessions(found, start, end)
    got = bars_of(frame, grid, [s.start_ns for s in found])
    assert grid.resolution == "1d" and grid.labels.tolist() == [s.start_ns for s in found]
    for i, session in enumerate(found):
        inside = frame[(frame["ts"] >= max(session.start_ns, start)) & (frame["ts"] < min(session.end_ns, end))]
        assert got["trade_count"][i] == len(inside), session.date
        assert got["open"][i] == inside["price"].iloc[0] and got["close"][i] == inside["price"].iloc[-1]
        assert got["session_vwap"][i] == pytest.approx(vwap(inside["price"].to_numpy(), inside["size"].to_numpy()))
    # The daily 16:00-17:00 break and the weekend belong to no bar.
    assert got["trade_count"].sum() < len(frame)


# ---- CVD -----------------------------------------------------------------------------------------------


def reference_cvd(frame: pd.DataFrame, starts: list[int], ends: list[int], resets: list[int]) -> list[tuple]:
    """Per bar (delta, open, high, low, close) by walking the events: resets (value 0) and trades in time order."""
    events = [(r, 0, 0.0) for r in resets] + [
        (t, 1, float(s * q)) for t, s, q in zip(frame["ts"], frame["side"], frame["size"], strict=True)
    ]
    events.sort(key=lambda e: (e[0], e[1]))  # a reset comes before trades stamped at the same instant
    keys, values, value = [], [], 0.0
    for when, kind, signed in events:
        value = 0.0 if kind == 0 else value + signed
        keys.append((when, kind))
        values.append(value)
    out = []
    for start, end in zip(starts, ends, strict=True):
        first = bisect.bisect_left(keys, (start, 1))  # events before the start, and a reset at the start
        stop = bisect.bisect_left(keys, (end, 0))
        open_ = values[first - 1] if first else 0.0
        path = [open_, *values[first:stop]]
        delta = sum(signed for when, kind, signed in events[first:stop] if kind == 1)
        out.append((delta, open_, max(path), min(path), path[-1]))
    return out


@pytest.mark.parametrize("resolution", ["1m", "1h"])
def test_cvd_restarts_at_each_session_start(resolution: str) -> None:
    # Resets at 14:30 (inside a 1h bar) and at 14:30 the next day; the range starts before the first.
    frame = random_trades(4000, 30 * HOUR, seed=5)
    resets = [T0_NS + 30 * MINUTE, T0_NS + 24 * HOUR + 30 * MINUTE]
    grid = BarGrid.utc(T0_NS + 10 * MINUTE, T0_NS + 30 * HOUR, resolution)
    got = cvd_bars(grid, frame["ts"].to_numpy(), frame["size"].to_numpy(), frame["side"].to_numpy(), resets)
    expected = reference_cvd(frame, grid.starts.tolist(), grid.ends.tolist(), resets)
    columns = ("delta", "cvd_open", "cvd_high", "cvd_low", "cvd_close")
    for i, row in enumerate(expected):
        assert tuple(float(got[c][i]) for c in columns) == row, (i, grid.labels[i])
    # The value right after a reset instant is 0 at the bar that starts there (1m) ...
    at_reset = np.flatnonzero(grid.starts == resets[0])
    if len(at_reset):
        assert got["cvd_open"][at_reset[0]] == 0.0
    # ... and trades before the range still count towards the running value inside the first session.
    assert got["cvd_open"][0] != 0.0


def test_cvd_path_passes_through_zero_at_a_reset_inside_a_bar() -> None:
    # Sessions start at 13:00 and 14:30; sells on both sides of the 14:30 reset inside the 14:00 hour, so only
    # the reset reaches 0. A trade stamped exactly at the reset belongs to the new session.
    reset = T0_NS + 30 * MINUTE
    frame = pd.DataFrame(
        {
            "ts": [T0_NS - 10 * MINUTE, T0_NS + MINUTE, T0_NS + 20 * MINUTE, reset, reset + MINUTE, reset + HOUR],
            "price": [100.0] * 6,
            "size": [6.0, 5.0, 2.0, 3.0, 1.0, 4.0],
            "side": np.array([-1, -1, -1, -1, -1, 1], dtype=np.int8),
        }
    )
    resets = [T0_NS - HOUR, reset]
    grid = BarGrid.utc(T0_NS, T0_NS + 2 * HOUR, "1h")
    got = cvd_bars(grid, frame["ts"].to_numpy(), frame["size"].to_numpy(), frame["side"].to_numpy(), resets)
    assert got["delta"].tolist() == [-11.0, 4.0]
    assert [got[c][0] for c in ("cvd_open", "cvd_high", "cvd_low", "cvd_close")] == [-6.0, 0.0, -13.0, -4.0]
    assert [got[c][1] for c in ("cvd_open", "cvd_high", "cvd_low", "cvd_close")] == [-4.0, 0.0, -4.0, 0.0]
    expected = reference_cvd(frame, grid.starts.tolist(), grid.ends.tolist(), resets)
    assert [tuple(float(got[c][i]) for c in got) for i in range(2)] == expected


def test_cvd_anchored_at_the_range_start() -> None:
    frame = random_trades(500, 2 * HOUR, seed=9)
    start = T0_NS + 30 * MINUTE
    grid = BarGrid.utc(start, T0_NS + 2 * HOUR, "5m")
    got = cvd_bars(grid, frame["ts"].to_numpy(), frame["size"].to_numpy(), frame["side"].to_numpy(), [start])
    signed = (frame["side"] * frame["size"]).where(frame["ts"] >= start, 0.0)
    running = signed.cumsum()
    ends = np.searchsorted(frame["ts"], grid.ends, side="left")
    assert got["cvd_open"][0] == 0.0
    np.testing.assert_array_equal(got["cvd_close"], running.to_numpy()[ends - 1])
    np.testing.assert_array_equal(np.cumsum(got["delta"]), got["cvd_close"])


def test_cvd_of_empty_bars_is_flat() -> None:
    frame = random_trades(200, 20 * MINUTE, seed=2, gap=(5 * MINUTE, 15 * MINUTE))
    grid = BarGrid.utc(T0_NS, T0_NS + 20 * MINUTE, "1m")
    got = cvd_bars(grid, frame["ts"].to_numpy(), frame["size"].to_numpy(), frame["side"].to_numpy())
    for i in range(5, 15):
        assert got["delta"][i] == 0.0
        assert got["cvd_open"][i] == got["cvd_high"][i] == got["cvd_low"][i] == got["cvd_close"][i]
        assert got["cvd_open"][i] == got["cvd_close"][4]


# ---- OBI -----------------------------------------------------------------------------------------------


def volumes_table(ts: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> pa.Table:
    return pa.table(
        {"ts": pa.array(ts, pa.int64()).cast(VOLUMES_SCHEMA.field("ts").type), "bid_volume": bid, "ask_volume": ask}
    )


def test_obi_stays_in_bounds_and_bars_carry_the_prevailing_value() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    ts = np.sort(T0_NS + rng.integers(-MINUTE, 30 * MINUTE, n))
    ts = ts[(ts < T0_NS + 12 * MINUTE) | (ts >= T0_NS + 15 * MINUTE)]  # three bars without events
    n = len(ts)
    bid = rng.integers(0, 5, n) * rng.choice([1.0, 1000.0], n)  # zeros on either side, and both at once
    ask = rng.integers(0, 5, n) * rng.choice([1.0, 1000.0], n)
    obi = imbalance(bid, ask)
    valid = ~np.isnan(obi)
    assert (np.abs(obi[valid]) <= 1).all() and ((bid + ask == 0) == ~valid).all()
    assert obi[valid].min() == -1 and obi[valid].max() == 1

    grid = BarGrid.utc(T0_NS, T0_NS + 30 * MINUTE, "1m")
    got = obi_bars(grid, volumes_table(ts, bid, ask))
    events = [(t, v) for t, v in zip(ts.tolist(), obi.tolist(), strict=True) if v == v]  # NaN skipped
    for i, (start, end) in enumerate(zip(grid.starts.tolist(), grid.ends.tolist(), strict=True)):
        before = [v for t, v in events if t < start]
        inside = [v for t, v in events if start <= t < end]
        open_ = before[-1] if before else inside[0]
        expected = (open_, max([open_, *inside]), min([open_, *inside]), ([open_, *inside])[-1], len(inside))
        assert tuple(got[c][i] for c in ("obi_open", "obi_high", "obi_low", "obi_close", "obi_count")) == expected
        assert -1 <= got["obi_low"][i] <= got["obi_high"][i] <= 1
    assert got["obi_count"][12:15].tolist() == [0, 0, 0]


def test_obi_before_any_event_is_unknown_and_the_time_weighted_mean() -> None:
    ts = np.array([T0_NS + 2 * MINUTE, T0_NS + 3 * MINUTE])
    table = volumes_table(ts, np.array([3.0, 1.0]), np.array([1.0, 3.0]))  # +0.5, then -0.5
    got = obi_bars(BarGrid.utc(T0_NS, T0_NS + 4 * MINUTE, "1m"), table)
    assert np.isnan(got["obi_open"][:2]).all() and np.isnan(got["obi_close"][:2]).all()
    assert got["obi_open"][2] == 0.5 and got["obi_close"][2] == 0.5
    # An event stamped at a bar's start belongs to that bar: the open is still the value carried in.
    assert (got["obi_open"][3], got["obi_low"][3], got["obi_close"][3]) == (0.5, -0.5, -0.5)
    # +0.5 holds 1 minute and -0.5 holds 3 minutes of [T0 + 2m, T0 + 6m).
    assert time_weighted_obi(table, T0_NS + 2 * MINUTE, T0_NS + 6 * MINUTE) == pytest.approx((0.5 - 1.5) / 4)
    # Carried in from before the window: only -0.5 is in force in [T0 + 4m, T0 + 5m).
    assert time_weighted_obi(table, T0_NS + 4 * MINUTE, T0_NS + 5 * MINUTE) == -0.5
    assert np.isnan(time_weighted_obi(table, T0_NS, T0_NS + MINUTE))


# ---- profile -------------------------------------------------------------------------------------------


def test_value_area_grows_from_the_poc_by_the_heavier_pair() -> None:
    # Worked by hand: total 250, target 175. POC = 5 (100). Pairs: above 6+7 = 55, below 4+3 = 60 -> below
    # (160). Then above 55 vs below 2+1 = 15 -> above (215 >= 175). Value area 3..7.
    volume = np.array([5, 10, 20, 40, 100, 30, 25, 5, 15], dtype=float)
    prices = np.arange(1, 10, dtype=float)
    profile = volume_profile(np.repeat(prices, volume.astype(int)), np.ones(int(volume.sum())), tick_size=1.0)
    assert profile is not None
    assert (profile.poc, profile.value_area_low, profile.value_area_high) == (5.0, 3.0, 7.0)
    assert profile.value_area_volume == 215 and profile.total_volume == 250
    # On a tie both pairs join.
    assert value_area(np.array([10.0, 10, 50, 10, 10]), 2) == (0, 4)


def test_point_of_control_ties_and_dense_tick_levels() -> None:
    levels = np.arange(7, dtype=float)
    assert point_of_control(levels, np.array([30.0, 5, 30, 5, 5, 5, 30])) == 2  # nearest the middle (3)
    prices, volume = price_levels(np.array([100.0, 101.0, 100.5]), np.array([2.0, 3.0, 1.0]), tick_size=0.25)
    assert prices.tolist() == [100.0, 100.25, 100.5, 100.75, 101.0]
    assert volume.tolist() == [2.0, 0.0, 1.0, 0.0, 3.0]
    assert volume_profile(np.array([]), np.array([])) is None


def test_value_area_holds_the_share_around_the_poc_on_random_profiles() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        volume = rng.integers(0, 100, rng.integers(1, 60)).astype(float)
        volume[rng.integers(0, len(volume))] += 1
        poc = point_of_control(np.arange(len(volume), dtype=float), volume)
        low, high = value_area(volume, poc)
        assert low <= poc <= high and volume[poc] == volume.max()
        assert volume[low : high + 1].sum() >= 0.7 * volume.sum()
        # Growing stopped as soon as the share was reached: without its outermost pair(s) it was short.
        without = (volume[low + 2 : high + 1], volume[low : high - 1], volume[low + 2 : high - 1])
        assert low == high or min(part.sum() for part in without) < 0.7 * volume.sum()


# ---- the service over a real store -------------------------------------------------------------------------

AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=0.01)
SESSION_OPEN = T0_NS + 30 * MINUTE  # 2025-01-10 09:30 New York


async def test_service_cvd_counts_from_the_session_start_or_the_range_start(store: TickStore) -> None:
    frame = random_trades(600, 2 * HOUR, seed=8)  # 14:00-16:00 UTC: half an hour before the open, then regular
    frame["side"] = np.where(frame["side"] == 0, 1, frame["side"])
    await store.append_batch(CONTRACT, "last", frame_ticks(frame))
    flow = OrderFlow(store.engine, AAPL)
    start, end = T0_NS + HOUR, T0_NS + 2 * HOUR
    by_session = flow.bars(BarsRequest(CONTRACT, start, end, "1m", kinds=("cvd",)))
    by_range = flow.bars(BarsRequest(CONTRACT, start, end, "1m", kinds=("cvd",), anchor="range"))
    signed = frame["side"] * frame["size"]
    since_open = signed[(frame["ts"] >= SESSION_OPEN) & (frame["ts"] < start)].sum()
    assert by_session.table["cvd_open"][0].as_py() == since_open != 0
    assert by_range.table["cvd_open"][0].as_py() == 0.0
    np.testing.assert_array_equal(by_session.table["delta"], by_range.table["delta"])
    in_range = int(((frame.ts >= start) & (frame.ts < end)).sum())
    assert by_session.side_methods == {"unknown": 0, "recorded": in_range, "quote": 0, "tick": 0}


async def test_service_1d_bars_follow_the_session_type(store: TickStore) -> None:
    ticks = [trade(T0_NS - HOUR, 0, price=90.0), trade(SESSION_OPEN + MINUTE, 1, price=100.0)]  # 08:00 and 09:31
    await store.append_batch(CONTRACT, "last", ticks)
    flow = OrderFlow(store.engine, AAPL)
    day_start, day_end = T0_NS - 14 * HOUR, T0_NS + 10 * HOUR
    regular = flow.bars(BarsRequest(CONTRACT, day_start, day_end, "1d", kinds=("ohlc",))).to_pandas()
    extended = flow.bars(BarsRequest(CONTRACT, day_start, day_end, "1d", kinds=("ohlc",), session="extended"))
    sessions = MarketSessions("XNAS")
    assert regular["timestamp"].tolist() == [pd.Timestamp(sessions.on("2025-01-10").start_ns, tz="UTC")]
    assert regular[["open", "trade_count"]].values.tolist() == [[100.0, 1]]
    assert extended.table["open"].to_pylist() == [90.0] and extended.table["trade_count"].to_pylist() == [2]


async def test_service_classifies_by_quotes_and_reads_obi_from_depth_or_quotes(store: TickStore) -> None:
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS - 1, 0, bid_price=99.0, ask_price=100.0)])
    await store.append_batch(CONTRACT, "last", [trade(T0_NS, 0, price=100.0), trade(T0_NS + 1, 1, price=99.0)])
    request = BarsRequest(CONTRACT, T0_NS, T0_NS + MINUTE, "1m")
    quotes_only = OrderFlow(store.engine, AAPL, depth_volumes=None).bars(request)
    assert quotes_only.obi_source == "quotes" and quotes_only.side_methods["quote"] == 2
    assert quotes_only.table["delta"].to_pylist() == [1.0 - 2.0]
    assert quotes_only.table["obi_open"].to_pylist() == [imbalance(np.array([100.0]), np.array([200.0]))[0]]

    def depth(engine: object, stream: StreamKey, start: int, end: int, levels: int) -> pa.Table:
        return volumes_table(np.array([T0_NS + 5]), np.array([float(levels)]), np.array([0.0]))

    from_depth = OrderFlow(store.engine, AAPL, depth_volumes=depth).bars(replace(request, levels=7))
    assert from_depth.obi_source == "depth" and from_depth.table["obi_close"].to_pylist() == [1.0]
    summary = OrderFlow(store.engine, AAPL, depth_volumes=depth).summary(request)
    assert summary["obi"]["source"] == "depth" and summary["volume"] == 3.0 and summary["cvd"]["change"] == -1.0
    with pytest.raises(QueryError, match="obi_source depth"):
        OrderFlow(store.engine, AAPL, depth_volumes=None).bars(replace(request, obi_source="depth"))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"kinds": ("ohlc", "volume")}, ValidationError),
        ({"resolution": "tick"}, ValidationError),
        ({"resolution": "2m"}, ValidationError),
        ({"levels": 0}, ValidationError),
        ({"anchor": "week"}, ValidationError),
        ({"obi_source": "book"}, ValidationError),
        ({"trades": TickType.BID_ASK}, ValidationError),
        ({"end_ns": T0_NS}, QueryError),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        replace(BarsRequest(CONTRACT, T0_NS, T0_NS + HOUR), **change)
    assert next(iter(change)).split("_ns")[0] in str(caught.value)
    assert parse_kinds("cvd, OHLC") == ("ohlc", "cvd") and parse_kinds("") == ("ohlc", "cvd", "obi")


async def test_service_obi_from_price_level_depth_equals_a_dict_replay(store: TickStore) -> None:
    rng = np.random.default_rng(12)
    n, levels = 3000, 3
    ts = np.sort(T0_NS + rng.integers(-2 * MINUTE, 10 * MINUTE, n))  # some depth before the range
    sides = rng.choice(["bid", "ask"], n)
    offsets = rng.integers(1, 8, n)
    prices = np.where(sides == "bid", 100.0 - offsets * 0.25, 100.0 + offsets * 0.25)
    sizes = rng.integers(0, 20, n).astype(float)  # size 0 removes the level
    operations = rng.choice(["insert", "update", "delete"], n, p=[0.4, 0.5, 0.1])
    ticks = [
        {"ts": int(t), "side": str(s), "position": 0, "operation": str(o), "price": float(p), "size": float(q)}
        | {"by_price": True}
        for t, s, o, p, q in zip(ts, sides, operations, prices, sizes, strict=True)
    ]
    await store.append_batch(CONTRACT, "depth", ticks)
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    path: list[tuple[int, float]] = []
    for tick in ticks:
        side = book[tick["side"]]
        if tick["operation"] == "delete" or tick["size"] == 0:
            side.pop(tick["price"], None)
        else:
            side[tick["price"]] = tick["size"]
        bid = sum(q for _, q in sorted(book["bid"].items(), reverse=True)[:levels])
        ask = sum(q for _, q in sorted(book["ask"].items())[:levels])
        if bid + ask > 0:
            path.append((tick["ts"], (bid - ask) / (bid + ask)))
    request = BarsRequest(CONTRACT, T0_NS, T0_NS + 10 * MINUTE, "1m", kinds=("obi",), levels=levels)
    result = OrderFlow(store.engine, AAPL).bars(request)
    assert result.obi_source == "depth"
    got = result.to_pandas()
    for i, start in enumerate(range(T0_NS, T0_NS + 10 * MINUTE, MINUTE)):
        before = [v for t, v in path if t < start]
        inside = [v for t, v in path if start <= t < start + MINUTE]
        expected = [before[-1], max([before[-1], *inside]), min([before[-1], *inside]), [before[-1], *inside][-1]]
        columns = ("obi_open", "obi_high", "obi_low", "obi_close")
        np.testing.assert_allclose([got[c][i] for c in columns], expected, rtol=1e-12, err_msg=str(i))
        assert got["obi_count"][i] == len(inside)


async def test_service_results_are_cached_and_never_stale(store: TickStore) -> None:
    frame = random_trades(300, 2 * HOUR, seed=3)
    await store.append_batch(CONTRACT, "last", frame_ticks(frame))
    flow = OrderFlow(store.engine, AAPL)
    request = BarsRequest(CONTRACT, T0_NS + HOUR, T0_NS + 2 * HOUR, "5m", kinds=("ohlc", "cvd"))
    first = flow.bars(request)
    assert flow.bars(request) is first  # served from the query cache
    # A live tick after the range end changes nothing before it: still cached.
    await store.append_batch(CONTRACT, "last", [trade(T0_NS + 3 * HOUR, price=999.0)])
    assert flow.bars(request) is first
    # A late trade before the range (inside the session's CVD context) changes the answer: recomputed.
    await store.append_batch(CONTRACT, "last", [trade(SESSION_OPEN + MINUTE, side=1, size=50.0)])
    second = flow.bars(request)
    assert second is not first
    assert second.table["cvd_open"][0].as_py() == first.table["cvd_open"][0].as_py() + 50.0
    assert OrderFlow(store.engine, AAPL, use_cache=False).bars(request) is not second
