"""Footprint bars: a hand-computed example, a pandas groupby oracle on random trades, the bar engine's buy / sell
volume and OHLC as the oracle through the store, and hostile parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ib_stream.analytics.footprint import MAX_CELLS, footprint
from ib_stream.analytics.grid import BarGrid
from ib_stream.domain import Contract
from ib_stream.errors import QueryError, ValidationError
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

MINUTE = seconds(60)


def _grid(bars: int = 5) -> BarGrid:
    return BarGrid.utc(T0_NS, T0_NS + bars * MINUTE, "1m")


def _run(rows: list[tuple[int, float, float, int]], step: float = 0.01, ratio: float = 3.0) -> dict[int, dict]:
    ts, price, size, side = (np.array(c) for c in zip(*rows, strict=True))
    found = footprint(_grid(), ts, price, size, side, step, ratio)
    return {int(label): doc for label, doc in zip(found.labels, found.documents(), strict=True)}


def test_a_hand_computed_footprint() -> None:
    t = T0_NS
    bars = _run(
        [
            (t + 1, 100.00, 10, 1),
            (t + 2, 100.01, 40, 1),
            (t + 3, 100.00, 5, -1),
            (t + 4, 100.02, 3, -1),
            (t + 5, 100.01, 2, 0),
            (t + 2 * MINUTE, 100.05, 7, -1),  # bar 1 has no trade: not listed
            (t + 3 * MINUTE, 100.00, 10, -1),  # a gap at 100.01: it counts as zero on both sides
            (t + 3 * MINUTE + 1, 100.02, 1, 1),
        ]
    )
    assert list(bars) == [T0_NS, T0_NS + 2 * MINUTE, T0_NS + 3 * MINUTE]
    first = bars[T0_NS]
    assert {k: first[k] for k in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")} == {
        "open": 100.0, "high": 100.02, "low": 100.0, "close": 100.01, "volume": 60, "buy_volume": 50,
        "sell_volume": 8,
    }  # fmt: skip
    assert (first["delta"], first["trade_count"], first["poc"]) == (42, 5, 100.01)
    assert first["levels"] == [
        {"price": 100.0, "buy": 10, "sell": 5, "unknown": 0, "delta": 5, "trades": 2,
         "buy_imbalance": False, "sell_imbalance": False},  # lowest level: nothing below to compare with
        {"price": 100.01, "buy": 40, "sell": 0, "unknown": 2, "delta": 40, "trades": 2,
         "buy_imbalance": True, "sell_imbalance": False},  # 40 >= 3 × 5 (the sell one step below)
        {"price": 100.02, "buy": 0, "sell": 3, "unknown": 0, "delta": -3, "trades": 1,
         "buy_imbalance": False, "sell_imbalance": False},  # highest level: nothing above
    ]  # fmt: skip
    lone = bars[T0_NS + 2 * MINUTE]
    assert lone["poc"] == 100.05 and lone["levels"][0]["sell"] == 7
    assert not lone["levels"][0]["buy_imbalance"] and not lone["levels"][0]["sell_imbalance"]
    gap = bars[T0_NS + 3 * MINUTE]["levels"]
    assert [(lv["price"], lv["buy_imbalance"], lv["sell_imbalance"]) for lv in gap] == [
        (100.0, False, True),  # sell 10 against no buying at 100.01
        (100.02, True, False),  # buy 1 against no selling at 100.01
    ]


def test_no_trades_give_no_bars() -> None:
    none = np.zeros(0)
    found = footprint(_grid(), none.astype(np.int64), none, none, none.astype(np.int8), 0.01)
    assert (len(found), found.cells, found.documents(), found.long_table().num_rows) == (0, 0, [], 0)
    outside = footprint(_grid(1), np.array([T0_NS + 2 * MINUTE]), np.array([1.0]), np.array([1.0]), np.array([1]), 0.01)
    assert len(outside) == 0


def test_the_poc_tie_goes_to_the_level_nearest_the_middle_then_the_lower() -> None:
    t = T0_NS
    bars = _run(
        [
            (t + 1, 100.0, 5, 1),
            (t + 2, 100.01, 1, 1),
            (t + 3, 100.02, 5, 1),
            (t + 4, 100.03, 5, -1),
            (t + MINUTE + 1, 100.0, 5, 1),
            (t + MINUTE + 2, 100.02, 5, -1),
        ]
    )
    assert bars[T0_NS]["poc"] == 100.02  # middle 100.015: 100.02 is nearer than 100.00 / 100.03
    assert bars[T0_NS + MINUTE]["poc"] == 100.0  # both as near the middle: the lower


def test_random_trades_against_a_pandas_groupby() -> None:
    rng = np.random.default_rng(7)
    n = 5000
    ts = np.sort(T0_NS + rng.integers(0, 5 * MINUTE, n))
    price = np.round(100 + rng.integers(-40, 40, n) * 0.01, 2)
    size = rng.integers(1, 500, n).astype(float)
    side = rng.choice(np.array([-1, 0, 1], dtype=np.int8), n)
    step, ratio = 0.05, 2.5
    found = footprint(_grid(), ts, price, size, side, step, ratio)
    frame = pd.DataFrame({"bar": (ts - T0_NS) // MINUTE, "level": np.floor(price / step + 1e-6), "size": size})
    frame["buy"], frame["sell"], frame["unknown"] = [np.where(side == s, size, 0.0) for s in (1, -1, 0)]
    want = frame.groupby(["bar", "level"]).agg(
        buy=("buy", "sum"), sell=("sell", "sum"), unknown=("unknown", "sum"), trades=("size", "size")
    )
    got = found.to_pandas()
    assert len(got) == len(want) == found.cells
    np.testing.assert_allclose(got["price"], np.round(want.index.get_level_values("level") * step, 10))
    for name in ("buy", "sell", "unknown", "trades"):
        np.testing.assert_allclose(got[name], want[name], err_msg=name)
    np.testing.assert_allclose(got["delta"], want["buy"] - want["sell"])
    # The imbalances, level by level in plain Python.
    for bar, rows in got.groupby("timestamp"):
        levels = {round(p / step): (b, s) for p, b, s in zip(rows["price"], rows["buy"], rows["sell"], strict=True)}
        low, high = min(levels), max(levels)
        for k, (b, s) in levels.items():
            buy_imbalance = k > low and b > 0 and b >= ratio * levels.get(k - 1, (0, 0))[1]
            sell_imbalance = k < high and s > 0 and s >= ratio * levels.get(k + 1, (0, 0))[0]
            row = rows[np.isclose(rows["price"], k * step)].iloc[0]
            assert (row["buy_imbalance"], row["sell_imbalance"]) == (buy_imbalance, sell_imbalance), (bar, k)
    per_bar = frame.groupby("bar")
    np.testing.assert_allclose([b["buy_volume"] for b in found.documents()], per_bar["buy"].sum())
    np.testing.assert_allclose([b["volume"] for b in found.documents()], per_bar["size"].sum())


@pytest.mark.parametrize("step", [0, -0.01, float("nan"), float("inf"), "0.01", True, 1e-300])
def test_hostile_price_steps_are_refused_naming_the_field(step: object) -> None:
    with pytest.raises(ValidationError) as caught:
        footprint(_grid(), np.array([T0_NS]), np.array([100.0]), np.array([1.0]), np.array([1]), step)  # type: ignore[arg-type]
    assert caught.value.details["field"] == "price_step"


@pytest.mark.parametrize("ratio", [1, 0.5, -3, float("nan"), float("inf")])
def test_hostile_imbalance_ratios_are_refused(ratio: float) -> None:
    with pytest.raises(ValidationError) as caught:
        footprint(_grid(), np.array([T0_NS]), np.array([100.0]), np.array([1.0]), np.array([1]), 0.01, ratio)
    assert caught.value.details["field"] == "imbalance_ratio"


def test_too_many_cells_are_refused_naming_the_limit() -> None:
    n = 2000
    ts = T0_NS + np.arange(n, dtype=np.int64)
    with pytest.raises(QueryError) as caught:
        footprint(_grid(), ts, 100 + np.arange(n) * 0.01, np.ones(n), np.ones(n), 0.01, max_cells=1000)
    assert caught.value.details["max_cells"] == 1000 and caught.value.details["cells"] == n
    assert MAX_CELLS >= 100_000


def test_sides_and_ohlc_equal_the_bar_engines(store: TickStore) -> None:
    """The main oracle: per bar, Σ buy == the bars' buy_volume, Σ sell == sell_volume, OHLC equal — trades with no
    recorded side, classified by the quote rule and the tick rule (a few inside the spread), from the session start."""
    rng = np.random.default_rng(3)
    quotes, trades = [], []
    for i in range(1200):
        at = T0_NS - seconds(600) + seconds(i)
        quotes.append(quote(at, i))
        mid = 100.01 + (i % 7) * 0.01
        trades.append(
            trade(at + 500_000, i, price=round(mid + rng.choice([-0.02, 0.0, 0.02, 0.01]), 2), size=float(i % 17 + 1))
        )
    store.append_batch_sync(CONTRACT, "bid_ask", quotes)
    store.append_batch_sync(CONTRACT, "last", trades)
    query = StorageQuery(store.engine, contracts=[Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=0.01)])
    start, end = T0_NS, T0_NS + seconds(600)
    for resolution in ("1m", "5m"):
        bars = query.bars_sync(CONTRACT, start, end, resolution, kinds="ohlc,cvd")
        found = query.footprint_sync(CONTRACT, start, end, resolution)
        traded = bars[~bars["empty"]].reset_index(drop=True)
        docs = found.documents()
        assert len(docs) == len(traded) > 0
        for doc, (_, bar) in zip(docs, traded.iterrows(), strict=True):
            levels = doc["levels"]
            assert sum(lv["buy"] for lv in levels) == pytest.approx(bar["buy_volume"])
            assert sum(lv["sell"] for lv in levels) == pytest.approx(bar["sell_volume"])
            assert sum(lv["unknown"] for lv in levels) == pytest.approx(bar["unknown_volume"])
            assert doc["delta"] == pytest.approx(bar["delta"])
            assert [doc[k] for k in ("open", "high", "low", "close")] == [
                bar[k] for k in ("open", "high", "low", "close")
            ]
            assert (doc["volume"], doc["trade_count"]) == (bar["volume"], bar["trade_count"])
        sides = {lv["buy"] > 0 for d in docs for lv in d["levels"]} | {
            lv["sell"] > 0 for d in docs for lv in d["levels"]
        }
        assert sides == {True, False}
    query.close()
