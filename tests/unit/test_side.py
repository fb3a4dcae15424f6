"""Trade side classification: recorded side first, quote rule on the prevailing quote, tick rule, unknown;
locked / crossed / missing quotes, the strict as-of join, and a random comparison with a plain loop.
"""

from __future__ import annotations

import bisect

import numpy as np
import pyarrow as pa
import pytest

from ib_stream.analytics.side import (
    METHOD_NAMES,
    classify,
    classify_table,
    prevailing_quotes,
    quote_rule,
    recorded_sides,
    tick_rule,
)
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.storage import TickStore
from tests.conftest import CONTRACT, T0_NS, quote, trade


def names(method: np.ndarray) -> list[str]:
    return [METHOD_NAMES[m] for m in method]


def reference_tick_rule(prices: list[float]) -> list[int]:
    """The tick test as a loop: compare with the last different price."""
    out, last_change = [], 0
    for i, price in enumerate(prices):
        if i > 0 and price != prices[i - 1]:
            last_change = 1 if price > prices[i - 1] else -1
        out.append(last_change)
    return out


def test_tick_rule_upticks_downticks_and_zero_ticks() -> None:
    prices = np.array([10.0, 10.0, 10.5, 10.5, 10.5, 10.25, 10.25, 10.75])
    assert tick_rule(prices).tolist() == [0, 0, 1, 1, 1, -1, -1, 1]
    # A direction known from before the input decides the leading zero ticks.
    assert tick_rule(prices, prior_direction=-1).tolist() == [-1, -1, 1, 1, 1, -1, -1, 1]
    assert tick_rule(np.array([])).tolist() == []


def test_tick_rule_equals_a_loop_on_random_prices() -> None:
    rng = np.random.default_rng(7)
    prices = np.round(100 + np.cumsum(rng.choice([-0.25, 0.0, 0.0, 0.25], 5000)), 2)
    assert tick_rule(prices).tolist() == reference_tick_rule(prices.tolist())


def test_quote_rule_at_and_beyond_the_touch() -> None:
    bid = np.full(6, 100.0)
    ask = np.full(6, 100.5)
    price = np.array([100.5, 101.0, 100.0, 99.5, 100.25, 100.4])
    assert quote_rule(price, bid, ask).tolist() == [1, 1, -1, -1, 0, 0]


@pytest.mark.parametrize(
    ("bid", "ask", "what"),
    [(100.0, 100.0, "locked"), (100.5, 100.0, "crossed"), (0.0, 100.5, "no bid"), (np.nan, 100.5, "missing")],
)
def test_unusable_quotes_fall_through_to_the_tick_rule(bid: float, ask: float, what: str) -> None:
    # Trades at prices that are both >= ask and <= bid for locked/crossed quotes: the quote says nothing.
    ts = T0_NS + np.arange(3) * NS_PER_SECOND
    price = np.array([100.0, 100.25, 100.25])
    quotes = (np.array([T0_NS - 1]), np.array([bid]), np.array([ask]))
    sides = classify(ts, price, None, quotes)
    assert sides.side.tolist() == [0, 1, 1], what
    assert names(sides.method) == ["unknown", "tick", "tick"], what


def test_recorded_side_wins_then_quote_then_tick() -> None:
    ts = T0_NS + np.arange(5) * NS_PER_SECOND
    price = np.array([100.0, 100.5, 100.25, 100.25, 100.25])
    recorded = np.array([-1, 0, 0, 0, 1], dtype=np.int8)  # 0: not recorded
    quotes = (np.array([T0_NS - 1, ts[3] - 1]), np.array([100.0, 100.25]), np.array([100.5, 100.75]))
    sides = classify(ts, price, recorded, quotes)
    assert sides.side.tolist() == [-1, 1, -1, -1, 1]
    assert names(sides.method) == ["recorded", "quote", "tick", "quote", "recorded"]
    assert sides.counts() == {"unknown": 0, "recorded": 2, "quote": 2, "tick": 1}
    ignored = classify(ts, price, recorded, quotes, use_recorded=False)
    assert names(ignored.method)[0] == "quote" and ignored.side[0] == -1 and ignored.side[4] == -1


def test_the_prevailing_quote_is_the_last_one_strictly_before_the_trade() -> None:
    # The quote stamped with the trade's own time already shows the ask level the trade consumed.
    trade_ts = np.array([T0_NS + 10])
    quote_ts = np.array([T0_NS, T0_NS + 10])
    bid, ask = np.array([100.0, 100.0]), np.array([100.5, 100.75])
    assert prevailing_quotes(trade_ts, quote_ts, bid, ask)[1].tolist() == [100.5]
    assert prevailing_quotes(trade_ts, quote_ts, bid, ask, inclusive=True)[1].tolist() == [100.75]
    # Before the first quote there is none; with a maximum age an old quote is ignored.
    early = prevailing_quotes(np.array([T0_NS - 5]), quote_ts, bid, ask)
    assert np.isnan(early[0]).all() and np.isnan(early[1]).all()
    stale = prevailing_quotes(np.array([T0_NS + 5 * NS_PER_SECOND]), quote_ts, bid, ask, max_age_ns=NS_PER_SECOND)
    assert np.isnan(stale[0]).all()


def reference_classify(
    ts: list[int], prices: list[float], recorded: list[int], quotes: list[tuple[int, float, float]]
) -> tuple[list[int], list[str]]:
    """The whole classifier as a loop over trades (bisect for the quote)."""
    quote_times = [q[0] for q in quotes]
    ticks = reference_tick_rule(prices)
    sides, methods = [], []
    for i, (when, price) in enumerate(zip(ts, prices, strict=True)):
        if recorded[i] in (1, -1):
            sides.append(recorded[i])
            methods.append("recorded")
            continue
        j = bisect.bisect_left(quote_times, when) - 1
        if j >= 0:
            _, bid, ask = quotes[j]
            if 0 < bid < ask and (price >= ask or price <= bid):
                sides.append(1 if price >= ask else -1)
                methods.append("quote")
                continue
        sides.append(ticks[i])
        methods.append("tick" if ticks[i] else "unknown")
    return sides, methods


def test_classification_equals_a_loop_on_random_trades_and_quotes() -> None:
    rng = np.random.default_rng(11)
    n_quotes, n_trades = 3000, 4000
    quote_ts = np.sort(T0_NS + rng.integers(0, 600 * NS_PER_SECOND, n_quotes))
    mid = 100 + np.cumsum(rng.choice([-0.25, 0.0, 0.25], n_quotes))
    half = rng.choice([-0.125, 0.0, 0.125, 0.25], n_quotes)  # some locked and crossed quotes
    bid, ask = mid - half, mid + half
    trade_ts = np.sort(T0_NS + rng.integers(0, 600 * NS_PER_SECOND, n_trades))
    trade_ts[::7] = quote_ts[rng.integers(0, n_quotes, len(trade_ts[::7]))]  # trades stamped like a quote
    trade_ts.sort()
    prices = np.round(100 + np.cumsum(rng.choice([-0.25, 0.0, 0.25], n_trades)), 2)
    recorded = rng.choice(np.array([0, 0, 0, 1, -1], dtype=np.int8), n_trades)
    trade_ts[0], recorded[0] = min(trade_ts[0], quote_ts[0] - 1), 0  # before every quote and price change: unknown
    got = classify(trade_ts, prices, recorded, (quote_ts, bid, ask))
    expected_sides, expected_methods = reference_classify(
        trade_ts.tolist(), prices.tolist(), recorded.tolist(), list(zip(quote_ts.tolist(), bid, ask, strict=True))
    )
    assert got.side.tolist() == expected_sides
    assert got.method_names().tolist() == expected_methods
    assert set(expected_methods) == set(METHOD_NAMES)  # every path was exercised


async def test_classify_table_reads_stored_nullable_sides(store: TickStore) -> None:
    trades = [trade(T0_NS + i * NS_PER_SECOND, i, side=(1, None, -1, None)[i % 4]) for i in range(8)]
    await store.append_batch(CONTRACT, "last", trades)
    await store.append_batch(CONTRACT, "bid_ask", [quote(T0_NS - 1, 0, bid_price=99.0, ask_price=100.04)])
    engine = store.engine
    stored = engine.read_stream(StreamKey(CONTRACT, TickType.LAST), T0_NS, T0_NS + 60 * NS_PER_SECOND)
    quotes = engine.read_stream(StreamKey(CONTRACT, TickType.BID_ASK), T0_NS - 10, T0_NS + 60 * NS_PER_SECOND)
    sides = recorded_sides(stored)
    assert sides is not None and sides.tolist() == [1, 0, -1, 0, 1, 0, -1, 0]
    got = classify_table(stored, quotes)
    prices = [t["price"] for t in trades]
    for i, (side, method) in enumerate(zip(got.side.tolist(), got.method_names(), strict=True)):
        if i % 2 == 0:
            assert (side, method) == (trades[i]["side"], "recorded")
        elif prices[i] >= 100.04:
            assert (side, method) == (1, "quote")
        else:  # inside the 99.00 / 100.04 spread: tick rule against the previous trade
            assert method == "tick" and side == (1 if prices[i] > prices[i - 1] else -1)
    assert recorded_sides(pa.table({"ts": [1]})) is None
