"""The simulated market: deterministic with a seed, and shaped like a real one; after a restart it continues from the
stored prices, and it never writes into a contract that holds real (broker, imported, ingested) ticks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ib_stream.clock import NS_PER_SECOND, SystemClock
from ib_stream.domain import Contract, StreamKey, TickType, TickValidator
from ib_stream.settings import SimConfig, StorageConfig
from ib_stream.sources.sim import SimMarket, SimSource
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from ib_stream.streaming import StreamingApp
from tests.conftest import T0_NS, quote
from tests.conftest import trade as make_trade

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


# ---- restarts and real data ------------------------------------------------------------------------------------
AAPL = Contract(265598, "AAPL", tick_types=(TickType.BID_ASK, TickType.LAST), extra={"start_price": 100.0})
FAST = SimConfig(seed=3, quotes_per_second=400, trades_per_quote=0.5, batch_ms=10)


def open_store(root: Path) -> TickStore:
    return TickStore(StorageConfig(data_root=root, fsync_interval_ms=0), SystemClock()).open()


def stream(store: TickStore, tick_type: TickType) -> list[dict[str, Any]]:
    return table_to_records(store.engine.read_stream(StreamKey(AAPL.con_id, tick_type), 0, 2**62))


async def run_sim(store: TickStore, until: Callable[[], bool]) -> SimSource:
    """Run the simulator on the store until `until()` holds (bounded), then stop it."""
    source = SimSource([AAPL], FAST, SystemClock())
    app = StreamingApp(store, [AAPL])
    await app.start([source])
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if until():
                break
        else:
            raise AssertionError("the simulator stored too little")
    finally:
        await app.stop()
    return source


async def test_after_a_restart_the_path_continues_from_the_last_stored_prices(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    store = open_store(root)
    now = time.time_ns()
    # A previous run left AAPL at 250.00 / 250.02, its last trade at 250.02: far from start_price 100.
    store.append_batch_sync(AAPL.con_id, TickType.BID_ASK, [quote(now - 10**9, bid_price=250.0, ask_price=250.02)],
                            source="sim")  # fmt: skip
    store.append_batch_sync(AAPL.con_id, TickType.LAST, [make_trade(now - 10**9, price=250.02, size=3.0)], source="sim")
    try:
        source = await run_sim(store, lambda: len(stream(store, TickType.BID_ASK)) > 20)
        quotes = stream(store, TickType.BID_ASK)
        first = quotes[1]  # the first one the simulator made
        assert first["source"] == "sim" and abs(first["bid_price"] - 250.0) <= 0.01 + 1e-9  # at most one tick
        assert 0.01 - 1e-9 <= first["ask_price"] - first["bid_price"] <= 0.03 + 1e-9
        assert source.status()["resumed_from"][AAPL.con_id]["bid"] == 250.0
        last = quotes[-1]
    finally:
        store.close()
    store = open_store(root)  # the restart
    try:
        before = len(quotes)
        await run_sim(store, lambda: len(stream(store, TickType.BID_ASK)) > before)
        resumed = stream(store, TickType.BID_ASK)[before]
    finally:
        store.close()
    assert resumed["seq"] == last["seq"] + 1
    assert abs(resumed["bid_price"] - last["bid_price"]) <= 0.01 + 1e-9  # continues: no jump to start_price


async def test_contracts_holding_real_ticks_are_never_simulated(tmp_path: Path) -> None:
    store = open_store(tmp_path / "storage")
    try:
        store.append_batch_sync(AAPL.con_id, TickType.LAST, [make_trade(time.time_ns() - 10**9)], source="ib_tbt")
        source = SimSource([AAPL], FAST, SystemClock())
        app = StreamingApp(store, [AAPL])
        await app.start([source])
        await asyncio.sleep(0.3)  # ~30 batches
        await app.stop()
        assert [t["source"] for t in stream(store, TickType.LAST)] == ["ib_tbt"]
        assert stream(store, TickType.BID_ASK) == []
        assert source.status()["not_simulated"] == {AAPL.con_id: "its streams hold non-simulated ticks (ib_tbt)"}
    finally:
        store.close()


async def test_the_simulator_stops_on_a_contract_that_receives_real_ticks(tmp_path: Path) -> None:
    store = open_store(tmp_path / "storage")
    try:
        source = SimSource([AAPL], FAST, SystemClock())
        app = StreamingApp(store, [AAPL])
        await app.start([source])
        for _ in range(300):
            await asyncio.sleep(0.01)
            if stream(store, TickType.BID_ASK):
                break
        await app.publish(AAPL.con_id, TickType.LAST, [make_trade(time.time_ns())], "api")
        await asyncio.sleep(0.05)  # a batch already being published may still land
        held = len(stream(store, TickType.BID_ASK))
        await asyncio.sleep(0.3)
        await app.stop()
        assert len(stream(store, TickType.BID_ASK)) == held and AAPL.con_id in source.not_simulated
    finally:
        store.close()
