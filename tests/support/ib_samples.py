"""Real IB samples in ../shared/data as records the fake TWS can emit; each loader skips the test if they are absent.

See ../shared/data/README.md §1-2. The instruments of the ib_mktdata files are unknown, so they come with made-up
placeholder contracts (HK_STOCK, HIST_CONTRACT); EUR.USD is the real IDEALPRO contract (conId 12087792).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import requires_shared_data
from tests.support.fake_tws_messages import (
    PRICE_TICK_TYPES,
    BidAskTick,
    DepthUpdate,
    FakeContract,
    LastTick,
    MktDataTick,
)

EURUSD = FakeContract(
    12087792,
    "EUR",
    sec_type="CASH",
    exchange="IDEALPRO",
    currency="USD",
    local_symbol="EUR.USD",
    trading_class="EUR.USD",
    min_tick=0.00005,
    long_name="European Monetary Union Euro",
    valid_exchanges="IDEALPRO",
    order_types="LMT,MKT",
)
# Placeholders: the samples do not say which contracts they are (README §1).
HK_STOCK = FakeContract(
    900001, "HKSAMPLE", exchange="SEHK", currency="HKD", min_tick=0.2, time_zone_id="Asia/Hong_Kong"
)
HIST_CONTRACT = FakeContract(900002, "HISTSAMPLE", exchange="SMART", currency="USD", min_tick=0.01)


def _path(subdir: str, name: str) -> Path:
    return requires_shared_data(subdir) / name


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def _mkt_data(tick_type: int, price: float, size: float, recv_time: datetime) -> MktDataTick:
    """A price-type row goes out as TICK_PRICE carrying its size; the rest as TICK_SIZE (wire doc §8)."""
    if tick_type in PRICE_TICK_TYPES:
        return MktDataTick(tick_type, price=price, size=int(size), recv_time=recv_time)
    return MktDataTick(tick_type, size=int(size), recv_time=recv_time)


def hk_mktdata_ticks() -> list[MktDataTick]:
    """14,027 reqMktData ticks of an HK stock (tick types 0/1/2/3/4/5/8), in receive order."""
    with gzip.open(_path("ib_mktdata", "hk_stock_mktdata_ticks_20220107.json.gz"), "rt") as f:
        rows = json.load(f)
    return [_mkt_data(r["tickType"], r["price"], r["size"], datetime.fromisoformat(r["time"])) for r in rows]


def _bid_ask(r: dict[str, Any]) -> BidAskTick:
    attrib = r["tickAttribBidAsk"]
    return BidAskTick(
        _epoch(r["time"]),
        r["priceBid"],
        r["priceAsk"],
        int(r["sizeBid"]),
        int(r["sizeAsk"]),
        bid_past_low=attrib["bidPastLow"],
        ask_past_high=attrib["askPastHigh"],
    )


def _trade(r: dict[str, Any]) -> LastTick:
    attrib = r["tickAttribLast"]
    return LastTick(
        _epoch(r["time"]),
        r["price"],
        int(r["size"]),
        r["exchange"],
        r["specialConditions"],
        past_limit=attrib["pastLimit"],
        unreported=attrib["unreported"],
    )


def _depth(r: dict[str, str]) -> DepthUpdate:
    return DepthUpdate(
        int(r["position"]),
        int(r["operation"]),
        int(r["side"]),
        float(r["price"]),
        int(r["size"]),
        market_maker=r["market_maker"] or None,
        recv_time=datetime.fromisoformat(r["time_recv_utc"]),
    )


def hist_bid_ask_ticks() -> list[BidAskTick]:
    """1,003 historical BID_ASK ticks (reqHistoricalTicks), 1-second times, in time order."""
    with gzip.open(_path("ib_mktdata", "hist_bid_ask_ticks_20220302.jsonl.gz"), "rt") as f:
        return [_bid_ask(json.loads(line)) for line in f]


def hist_trade_ticks() -> list[LastTick]:
    """6 historical TRADES ticks of the same contract as hist_bid_ask_ticks."""
    with gzip.open(_path("ib_mktdata", "hist_trade_ticks_20220302.jsonl.gz"), "rt") as f:
        return [_trade(json.loads(line)) for line in f]


def eurusd_depth_updates() -> list[DepthUpdate]:
    """271 EUR.USD updateMktDepth rows (all operation 1, no initial snapshot), in receive order."""
    with _path("ib_depth_eurusd", "eurusd_mktdepth_20220221.csv").open(newline="") as f:
        return [_depth(r) for r in csv.DictReader(f)]


def eurusd_final_book() -> dict[tuple[int, int], tuple[float, int]]:
    """The recorded final EUR.USD book: (side, position) -> (price, size); side 0 ask, 1 bid."""
    with _path("ib_depth_eurusd", "eurusd_mktdepth_final_book_20220221.csv").open(newline="") as f:
        return {(int(r["side"]), int(r["position"])): (float(r["price"]), int(r["size"])) for r in csv.DictReader(f)}


def eurusd_mktdata_ticks() -> list[MktDataTick]:
    """59 EUR.USD reqMktData ticks (types 0, 1, 2, 3, 6, 7, 9), in receive order."""
    with _path("ib_depth_eurusd", "eurusd_mktdata_ticks_20220221.csv").open(newline="") as f:
        return [
            _mkt_data(
                int(r["tick_type"]), float(r["price"]), float(r["size"]), datetime.fromisoformat(r["time_recv_utc"])
            )
            for r in csv.DictReader(f)
        ]


@dataclass
class DepthBook:
    """A client-side depth book applying IB's row operations (0 insert, 1 update, 2 delete) at `position`."""

    rows: int | None = None  # numRows requested; inserts push rows beyond it out
    sides: dict[int, dict[int, tuple[float, int]]] = field(default_factory=lambda: {0: {}, 1: {}})

    def apply(self, position: int, operation: int, side: int, price: float, size: int) -> None:
        book = self.sides[side]
        if operation == 0:
            book = {(p + 1 if p >= position else p): v for p, v in book.items()}
            book[position] = (price, size)
            if self.rows is not None:
                book = {p: v for p, v in book.items() if p < self.rows}
        elif operation == 1:
            book[position] = (price, size)
        elif operation == 2:
            book = {(p - 1 if p > position else p): v for p, v in book.items() if p != position}
        else:
            raise ValueError(f"depth operation {operation} is not 0, 1 or 2")
        self.sides[side] = book

    def clear(self) -> None:
        """Error 317: the book was reset."""
        self.sides = {0: {}, 1: {}}

    def snapshot(self) -> dict[tuple[int, int], tuple[float, int]]:
        return {(side, p): v for side, book in self.sides.items() for p, v in book.items()}
