"""Property: every path that makes order-flow bars gives the same bars, bit for bit (DESIGN §5 invariant 11).

For random tick sets — trades with and without a recorded side, quotes (some with no volume, locked or
crossed), price-level depth whose book updates span several ticks with one timestamp, empty minutes,
ticks that arrive late (within the lateness allowance, and beyond it), a session reset (the 24/7
calendar's midnight) and an archive partition boundary inside the range, several bar sizes — these
agree on every bar and every column (NaN equal to NaN):

* the tick path: `OrderFlow(..., use_rollups=False)` reading the ticks;
* the rollup path: the same request served from the stored 1-second rollups (trades, quotes, depth);
* the live path: a `LiveBarFeed` opened at the range start, fed tick by tick through the real
  `StreamingApp` in arrival order, its final rows (revisions included);
* `/v2/historical` resolution bars (`StorageQuery.query_range(resolution=)`): the trade OHLC columns,
  and for `bid_ask` the top-of-book OBI columns.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ib_stream.analytics.engine import BAR_COLUMNS
from ib_stream.analytics.grid import BAR_SIZES
from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, TickType
from ib_stream.live.feed import LiveBarFeed
from ib_stream.orderflow.historical import QUOTE_BAR_COLUMNS, TRADE_BAR_COLUMNS
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.streaming import StreamingApp

S = NS_PER_SECOND
MINUTE = 60 * S
CONTRACT = 4242
# The 24/7 calendar's session is the UTC day: the CVD and session VWAP reset at midnight, which is also an
# archive partition boundary. The range starts ten minutes before it.
START = pd.Timestamp("2025-01-10T23:50:00Z").value
END = START + 20 * MINUTE
PRE = START - 10 * MINUTE  # ticks before the range: the context the live seed and the batch both read
BTC = Contract(CONTRACT, "BTC", calendar="24/7", tick_types=(TickType.BID_ASK, TickType.LAST, TickType.DEPTH))
LATENESS = 2 * S


@st.composite
def markets(draw: st.DrawFn) -> dict[str, Any]:
    seed = draw(st.integers(0, 2**31))
    rng = random.Random(seed)
    quiet = sorted(rng.randrange(START, END) for _ in range(2))  # a stretch without any tick
    n_trades, n_quotes, n_updates = (draw(st.integers(0, n)) for n in (120, 120, 60))

    def stamp(lo: int = PRE) -> int:
        while True:
            # Whole milliseconds, often on a second boundary (the last ns of a second is covered too).
            ts = rng.randrange(lo, END) // 1_000_000 * 1_000_000
            ts = ts - ts % S if rng.random() < 0.2 else ts - 1 if rng.random() < 0.05 else ts
            if not quiet[0] <= ts < quiet[1]:
                return ts

    trades = []
    for _ in range(n_trades):
        trade: dict[str, Any] = {
            "ts": stamp(),
            "price": 100 + rng.randint(-20, 20) / 4,
            "size": float(rng.randint(1, 9)),
        }
        if rng.random() < 0.3:
            trade["side"] = rng.choice([1, -1])
        trades.append(trade)
    quotes = []
    for _ in range(n_quotes):
        bid = 100 + rng.randint(-20, 20) / 4
        spread = rng.choice([0.25, 0.25, 0.5, 0.0, -0.25])  # 0: locked, < 0: crossed
        sizes = (0.0, 0.0) if rng.random() < 0.1 else (float(rng.randint(1, 50)), float(rng.randint(1, 50)))
        quotes.append({"ts": stamp(), "bid_price": bid, "ask_price": bid + spread, "bid_size": sizes[0],
                       "ask_size": sizes[1]})  # fmt: skip
    depth = []
    for _ in range(n_updates):
        ts = stamp()
        for _ in range(rng.randint(1, 4)):  # one book update: several price levels with one timestamp
            side = rng.choice(["bid", "ask"])
            price = 100 + (rng.randint(-8, -1) if side == "bid" else rng.randint(1, 8)) / 4
            size = 0.0 if rng.random() < 0.25 else float(rng.randint(1, 40))
            depth.append({"ts": ts, "side": side, "position": 0, "operation": "update", "price": price, "size": size})
    return {
        "seed": seed,
        "trades": sorted(trades, key=lambda t: t["ts"]),
        "quotes": sorted(quotes, key=lambda q: q["ts"]),
        "depth": sorted(depth, key=lambda d: d["ts"]),  # stable: a book update's ticks stay together
        "late": draw(st.sampled_from([0.0, 0.05, 0.2])),  # share of ticks delivered out of time order
        "beyond": draw(st.booleans()),  # late beyond the allowance too (the feed then revises from the store)
    }


def arrival(market: dict[str, Any], rng: random.Random) -> list[tuple[TickType, dict[str, Any]]]:
    """The ticks of the range in arrival order: by time, a share of them held back a little (or a lot)."""
    items = [(TickType.LAST, t) for t in market["trades"]] + [(TickType.BID_ASK, q) for q in market["quotes"]]
    items = [i for i in items if i[1]["ts"] >= START]
    keyed = []
    for tick_type, record in items:
        delay = 0
        if rng.random() < market["late"]:
            delay = rng.randrange(LATENESS) if not market["beyond"] else rng.randrange(3 * MINUTE)
        keyed.append((record["ts"] + delay, tick_type, record))
    # Depth is applied in order by every book: its updates arrive in time order, each as one batch.
    keyed += [(d["ts"], TickType.DEPTH, d) for d in market["depth"] if d["ts"] >= START]
    keyed.sort(key=lambda k: k[0])
    return [(tick_type, record) for _, tick_type, record in keyed]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def rows_of(frame: pd.DataFrame) -> dict[int, dict[str, Any]]:
    labels = frame["timestamp"].astype("int64").tolist()
    return {ts: row for ts, row in zip(labels, frame.drop(columns=["timestamp"]).to_dict("records"), strict=True)}


async def live_path(store: TickStore, clock: ManualClock, market: dict[str, Any], resolution: str, obi: str) -> dict:
    """Open a feed at START, publish the range's ticks one at a time in arrival order; the final rows by ts."""
    app = StreamingApp(store, [BTC])
    await app.start([])
    clock.set(START)
    feed = LiveBarFeed.create(app, BTC, resolution, obi_source=obi, session_type="regular", lateness_ns=LATENESS)
    final: dict[int, dict[str, Any]] = {}
    try:
        for row in await feed.open():
            if row["final"]:
                final[row["ts"]] = row
        assert feed.sub is not None
        ordered = arrival(market, random.Random(market["seed"]))
        i = 0
        while i < len(ordered):
            tick_type, record = ordered[i]
            j = i + 1  # one book update (depth ticks with one timestamp) is one batch
            while tick_type is TickType.DEPTH and j < len(ordered) and ordered[j][0] is TickType.DEPTH:
                if ordered[j][1]["ts"] != record["ts"]:
                    break
                j += 1
            clock.set(max(clock.now_ns(), record["ts"]))
            await app.publish(CONTRACT, tick_type, [r for _, r in ordered[i:j]], "test")
            i = j
            if tick_type not in feed.builder.tick_types:
                continue
            for row in await feed.update(await feed.sub.get(5.0)):
                if row["final"]:
                    final[row["ts"]] = row
        for row in feed.builder.flush():
            final[row["ts"]] = row
    finally:
        feed.close()
        await app.stop()
    return final


PATHS = {
    "market": markets(),
    "resolution": st.sampled_from(["5s", "1m", "5m"]),
    "obi": st.sampled_from(["quotes", "depth"]),
}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(**PATHS)
def test_every_bar_path_gives_the_same_bars(market: dict[str, Any], resolution: str, obi: str) -> None:
    note(f"seed {market['seed']}: {len(market['trades'])} trades, {len(market['quotes'])} quotes")
    check_paths(market, resolution, obi)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(**PATHS)
def test_every_bar_path_gives_the_same_bars_soak(market: dict[str, Any], resolution: str, obi: str) -> None:
    note(f"seed {market['seed']}: {len(market['trades'])} trades, {len(market['quotes'])} quotes")
    check_paths(market, resolution, obi)


def check_paths(market: dict[str, Any], resolution: str, obi: str) -> None:
    """Run every path over one market and compare them (see the module docstring)."""
    if obi == "depth" and not market["depth"]:
        obi = "quotes"  # no depth at all: OBI from depth has no value to compare
    root = Path(tempfile.mkdtemp(prefix="bar-paths-"))
    clock = ManualClock(PRE)
    config = StorageConfig(
        data_root=root, fsync_interval_ms=0, compaction_delay_seconds=0, retired_file_grace_seconds=0
    )
    store = TickStore(config, clock).open()
    try:
        for tick_type, ticks in ((TickType.LAST, "trades"), (TickType.BID_ASK, "quotes"), (TickType.DEPTH, "depth")):
            before = [t for t in market[ticks] if t["ts"] < START]
            if before:
                store.append_batch_sync(CONTRACT, tick_type, before, source="test")
        live = asyncio.run(live_path(store, clock, market, resolution, obi))

        request = BarsRequest(CONTRACT, START, END, resolution, obi_source=obi, session="regular")
        ticks = rows_of(OrderFlow(store.engine, BTC, use_rollups=False, use_cache=False).bars(request).to_pandas())

        clock.set(END + 3 * 3600 * S)  # every partition of the range closed: archive, compact, roll up
        store.run_archival()
        store.run_compaction()
        store.run_snapshots()
        assert store.run_rollups() > 0 or not market["trades"]  # rollups are kept per trade stream (and depth)
        rolled = rows_of(OrderFlow(store.engine, BTC, use_cache=False).bars(request).to_pandas())
        historical = {t: rows_of(StorageQuery(store.engine).query_range_sync(CONTRACT, t, START, END, resolution))
                      for t in ("last", "bid_ask")}  # fmt: skip
        quotes_obi = rows_of(
            OrderFlow(store.engine, BTC, use_cache=False)
            .bars(BarsRequest(CONTRACT, START, END, resolution, ("obi",), obi_source="quotes"))
            .to_pandas()
        )

        assert list(rolled) == list(ticks)
        for ts, want in ticks.items():
            for name in BAR_COLUMNS:
                assert same(rolled[ts][name], want[name]), ("rollups", ts, name, rolled[ts][name], want[name])
                if ts in live:
                    assert same(live[ts][name], want[name]), ("live", ts, name, live[ts][name], want[name])
            for name in TRADE_BAR_COLUMNS:
                assert same(historical["last"][ts][name], want[name]), ("historical", ts, name)
            for name in (c for c in QUOTE_BAR_COLUMNS if c.startswith("obi_")):
                assert same(historical["bid_ask"][ts][name], quotes_obi[ts][name]), ("historical quotes", ts, name)
        # Every bar from the first one holding a live tick to the last one (the watermark's) is sent final by the
        # live path (gaps filled); later bars do not exist yet for a live stream.
        streams = ("trades", "quotes", "depth") if obi == "depth" else ("trades", "quotes")
        stamps = [t["ts"] for name in streams for t in market[name] if t["ts"] >= START]
        if stamps:
            size = BAR_SIZES[resolution]
            first, last = min(stamps) - min(stamps) % size, max(stamps)
            missing = sorted(ts for ts in ticks if first <= ts <= last and ts not in live)
            assert not missing, missing[:3]
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
