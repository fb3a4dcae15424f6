"""Real market data (IB historical BID_ASK ticks, Binance BTCUSDT trades) through the whole
pipeline — buffer, archive, compaction, query — with every value coming back bit-exact.
"""

from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.repair import verify
from tests.conftest import CONTRACT, requires_shared_data

BATCH = 100
QUOTE_FIELDS = ["bid_price", "bid_size", "ask_price", "ask_size", "bid_past_low", "ask_past_high"]
TRADE_FIELDS = ["price", "size", "side"]


def iso_to_ns(text: str) -> int:
    """Exact UTC ns of an ISO-8601 time with whole seconds (IB historical ticks)."""
    when = datetime.fromisoformat(text)
    assert when.microsecond == 0
    return int(when.timestamp()) * NS_PER_SECOND


def ib_bid_ask_ticks() -> list[dict[str, Any]]:
    path = requires_shared_data("ib_mktdata") / "hist_bid_ask_ticks_20220302.jsonl.gz"
    ticks = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            raw = json.loads(line)
            ticks.append(
                {
                    "ts": iso_to_ns(raw["time"]),
                    "bid_price": raw["priceBid"],
                    "bid_size": raw["sizeBid"],
                    "ask_price": raw["priceAsk"],
                    "ask_size": raw["sizeAsk"],
                    "bid_past_low": raw["tickAttribBidAsk"]["bidPastLow"],
                    "ask_past_high": raw["tickAttribBidAsk"]["askPastHigh"],
                    "source": "ib_hist",
                }
            )
    return ticks


def binance_trades() -> tuple[list[dict[str, Any]], list[int]]:
    path = requires_shared_data("binance_btcusdt") / "spot_trades_20210108.csv.gz"
    ticks, trade_ids = [], []
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            ticks.append(
                {
                    "ts": int(row["timestamp_ms_utc"]) * 1_000_000,
                    "price": float(row["price"]),
                    "size": float(row["quantity"]),
                    "side": -1 if row["buyer_maker"] == "True" else 1,  # buyer was maker: the aggressor sold
                    "exchange": "BINANCE",
                    "source": "import",
                }
            )
            trade_ids.append(int(row["trade_id"]))
    return ticks, trade_ids


async def feed_live(store: TickStore, clock: ManualClock, tick_type: str, ticks: list[dict[str, Any]]) -> None:
    """Append in batches as a live feed would: the clock follows event time, so segments rotate."""
    for first in range(0, len(ticks), BATCH):
        batch = ticks[first : first + BATCH]
        clock.set(max(clock.now_ns(), batch[-1]["ts"]))
        result = await store.append_batch(CONTRACT, tick_type, batch, source="unused")
        assert (result.first_seq, result.count) == (first + 1, len(batch))


async def archive_everything(store: TickStore, clock: ManualClock) -> None:
    clock.advance(4 * 3600)  # past the last segment, the hot window and the compaction delay
    store.run_archival()
    store.run_compaction()
    store.run_maintenance()


def expected_frame(ticks: list[dict[str, Any]], fields: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(ticks)[["ts", *fields]]
    frame.insert(0, "seq", np.arange(1, len(ticks) + 1))
    return frame.sort_values(["ts", "seq"], kind="stable", ignore_index=True)


def assert_bit_exact(got: pd.DataFrame, expected: pd.DataFrame, fields: list[str]) -> None:
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got["seq"].to_numpy(), expected["seq"].to_numpy())
    np.testing.assert_array_equal(got["timestamp"].astype("int64").to_numpy(), expected["ts"].to_numpy())
    for name in fields:
        want = expected[name].to_numpy()
        have = got[name].to_numpy()
        if want.dtype == np.float64:
            np.testing.assert_array_equal(have.astype(np.float64).view(np.uint64), want.view(np.uint64), err_msg=name)
        else:
            assert list(have) == list(want), name


def data_root_files(config: StorageConfig) -> list[str]:
    return sorted(p.relative_to(config.archive_dir).as_posix() for p in config.archive_dir.rglob("*.parquet"))


async def test_ib_historical_bid_ask_round_trips_exactly(
    store: TickStore, clock: ManualClock, config: StorageConfig
) -> None:
    ticks = ib_bid_ask_ticks()
    assert len(ticks) == 1003
    clock.set(ticks[0]["ts"])
    await feed_live(store, clock, "bid_ask", ticks)
    start, end = ticks[0]["ts"], ticks[-1]["ts"] + 1
    expected = expected_frame(ticks, QUOTE_FIELDS)
    hot = await StorageQuery(store.engine).query_range(CONTRACT, "BidAsk", start, end)
    assert_bit_exact(hot, expected, QUOTE_FIELDS)
    assert set(hot["source"]) == {"ib_hist"}

    await archive_everything(store, clock)
    hot_tier = store.buffer.hot(StreamKey(CONTRACT, TickType.BID_ASK))
    assert hot_tier is not None and hot_tier.snapshot().chunks == ()  # the answer below comes from Parquet alone
    cold = await StorageQuery(store.engine).query_range(CONTRACT, "bid_ask", start, end)
    assert_bit_exact(cold, expected, QUOTE_FIELDS)
    pd.testing.assert_frame_equal(cold, hot)

    hours = {tuple(p.split("/")[2:4]) for p in data_root_files(config)}
    assert len(hours) == len(data_root_files(config))  # one compacted file per hour
    assert ("date=2022-03-01", "hour=23") in hours and ("date=2022-03-02", "hour=02") in hours
    assert verify(config).ok


async def test_ib_ticks_sharing_a_second_keep_their_arrival_order(store: TickStore, clock: ManualClock) -> None:
    ticks = ib_bid_ask_ticks()
    clock.set(ticks[0]["ts"])
    await feed_live(store, clock, "bid_ask", ticks)
    await archive_everything(store, clock)
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "bid_ask", ticks[0]["ts"], ticks[-1]["ts"] + 1)
    shared = frame[frame.duplicated("timestamp", keep=False)]
    assert len(shared) > 0
    for _, group in shared.groupby("timestamp"):
        seqs = list(group["seq"])
        assert seqs == sorted(seqs)
        assert [ticks[s - 1]["bid_price"] for s in seqs] == list(group["bid_price"])


async def test_binance_trades_round_trip_exactly(store: TickStore, clock: ManualClock, config: StorageConfig) -> None:
    ticks, trade_ids = binance_trades()
    assert len(ticks) == 2001
    assert trade_ids == list(range(trade_ids[0], trade_ids[0] + len(ticks)))  # contiguous, as the README says
    clock.set(ticks[0]["ts"])
    half = 1000
    await feed_live(store, clock, "last", ticks[:half])
    clock.advance(15 * 60)  # the rest arrives one segment later: two parts of one event hour
    for first in range(half, len(ticks), BATCH):
        await store.append_batch(CONTRACT, "last", ticks[first : first + BATCH], source="unused")
    start, end = ticks[0]["ts"], ticks[-1]["ts"] + 1
    expected = expected_frame(ticks, TRADE_FIELDS)
    hot = await StorageQuery(store.engine).query_range(CONTRACT, "last", start, end)
    assert_bit_exact(hot, expected, TRADE_FIELDS)

    clock.advance(15 * 60)
    store.run_archival()
    assert len(store.index.files()) == 2
    await archive_everything(store, clock)
    assert len(data_root_files(config)) == 1
    cold = await StorageQuery(store.engine).query_range(CONTRACT, "last", start, end)
    assert_bit_exact(cold, expected, TRADE_FIELDS)
    assert list(cold["seq"] - 1 + trade_ids[0]) == [trade_ids[s - 1] for s in cold["seq"]]
    assert set(cold["exchange"]) == {"BINANCE"}
    assert str(cold["side"].dtype) == "Int8"
    pd.testing.assert_frame_equal(cold, hot)
    assert verify(config).ok


async def test_binance_trade_bars_add_up(store: TickStore, clock: ManualClock) -> None:
    ticks, _ = binance_trades()
    clock.set(ticks[0]["ts"])
    await feed_live(store, clock, "last", ticks)
    await archive_everything(store, clock)
    start = ticks[0]["ts"] - ticks[0]["ts"] % (60 * NS_PER_SECOND)
    bars = await StorageQuery(store.engine).query_range(CONTRACT, "last", start, start + 60 * NS_PER_SECOND, "1s")
    assert len(bars) == 60
    assert bars["trade_count"].sum() == len(ticks)
    assert bars["volume"].sum() == pytest.approx(sum(t["size"] for t in ticks), rel=1e-12)
    assert bars["high"].max() == max(t["price"] for t in ticks)
    assert bars["low"].min() == min(t["price"] for t in ticks)
    assert bool(bars["empty"].iloc[-1])  # the sample ends at 00:00:46
