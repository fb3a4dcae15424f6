"""The simulated market: deterministic with a seed, and shaped like a real one."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, TickType, TickValidator
from ib_stream.settings import SimConfig
from ib_stream.sources.sim import SimMarket
from tests.conftest import T0_NS

ES = Contract(
    495512563,
    "ES",
    sec_type="FUT",
    calendar="CMES",
    tick_types=(TickType.BID_ASK, TickType.LAST, TickType.MID_POINT, TickType.DEPTH),
    depth_rows=10,
    min_tick=0.25,
    extra={"start_price": 6000.0},
)


def simulate(seconds: int, seed: int = 7, steps: int = 1) -> dict[TickType, list[dict[str, object]]]:
    market = SimMarket(ES, SimConfig(seed=seed), T0_NS)
    out: dict[TickType, list[dict[str, object]]] = {t: [] for t in ES.tick_types}
    for step in range(1, steps + 1):
        for tick_type, ticks in market.advance(T0_NS + seconds * NS_PER_SECOND * step // steps).items():
            out[tick_type].extend(ticks)
    return out


def test_the_same_seed_gives_the_same_ticks_however_time_is_sliced() -> None:
    assert simulate(120, steps=1) == simulate(120, steps=37)
    assert simulate(120, seed=8) != simulate(120)


def test_every_tick_is_valid_and_in_time_order() -> None:
    for tick_type, ticks in simulate(300).items():
        validator = TickValidator(tick_type)
        stamps = [t["ts"] for t in ticks]
        assert stamps == sorted(stamps), tick_type
        for i, tick in enumerate(ticks):
            validator.canonical(tick, i + 1, T0_NS, "sim", i)


def test_quotes_sit_on_the_tick_grid_with_a_one_to_three_tick_spread() -> None:
    quotes = simulate(600)[TickType.BID_ASK]
    assert len(quotes) > 1000
    bid = np.array([q["bid_price"] for q in quotes])
    ask = np.array([q["ask_price"] for q in quotes])
    assert np.allclose(np.round(bid / 0.25) * 0.25, bid) and np.allclose(np.round(ask / 0.25) * 0.25, ask)
    spreads = Counter(np.round((ask - bid) / 0.25).astype(int))
    assert set(spreads) <= {1, 2, 3} and spreads.most_common(1)[0][0] == 1
    assert len(set(bid)) > 3  # the mid walks


def test_trades_hit_the_quote_or_fall_inside_it_with_heavy_tailed_sizes_and_aggressor_runs() -> None:
    ticks = simulate(900)
    quotes, trades = ticks[TickType.BID_ASK], ticks[TickType.LAST]
    assert len(trades) > 200
    quote_ts = np.array([q["ts"] for q in quotes])
    sides = []
    for trade in trades:
        quote = quotes[int(np.searchsorted(quote_ts, trade["ts"], side="right")) - 1]
        assert quote["bid_price"] <= trade["price"] <= quote["ask_price"]
        sides.append(1 if trade["price"] == quote["ask_price"] else -1 if trade["price"] == quote["bid_price"] else 0)
    sizes = np.array([t["size"] for t in trades])
    assert sizes.max() > 10 * np.median(sizes)  # heavy tail
    at_quote = [s for s in sides if s]
    flips = sum(1 for a, b in itertools.pairwise(at_quote) if a != b)
    assert flips < 0.4 * len(at_quote)  # runs persist (independent sides would flip about half the time)


def test_depth_starts_with_ten_levels_a_side_then_updates_them() -> None:
    depth = simulate(60)[TickType.DEPTH]
    inserts = [d for d in depth if d["operation"] == "insert"]
    assert sorted((d["side"], d["position"]) for d in inserts) == sorted(
        (side, p) for side in ("bid", "ask") for p in range(10)
    )
    assert {d["operation"] for d in depth[len(inserts) :]} == {"update"}
    assert {d["position"] for d in depth} == set(range(10))
