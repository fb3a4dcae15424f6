"""Importers: named recipes for known vendor file layouts (`ib-stream import file --preset NAME`).

Each preset maps the columns of one layout to tick fields; the samples in ../shared/data follow
them (see its README). Choices where a layout lacks something a tick has:

- TrueFX quotes carry no sizes: `bid_size` and `ask_size` are stored as 0 (unknown).
- Databento: `ts` is `ts_event` (the exchange's event time); the trade side is the aggressor
  (B → +1, A → −1, N → unknown). An MBP-1 file gives a quote from every row (the best bid/offer
  after the event) and a trade from every `T` row; `--only bid_ask` keeps only the quotes (use it
  when the same trades come from a trades file too).
- Binance: `buyer_maker` true means the buyer was resting, so the aggressor sold (−1).
- IB historical ticks carry no aggressor side; IB depth rows keep IB's position semantics.
"""

from __future__ import annotations

from typing import Final

from ib_stream.domain import TickType
from ib_stream.errors import ValidationError
from ib_stream.importers.tabular import Output, Recipe

_DATABENTO_TRADE: Final = Output(
    TickType.LAST,
    {"ts": "ts_event", "price": "price", "size": "size", "side": "side"},
    time_unit="iso",
    where={"action": "T"},
)

PRESETS: Final[dict[str, Recipe]] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "binance-trades",
            "Binance spot trades: timestamp_ms_utc, trade_id, price, quantity, buyer_maker (aggressor side)",
            (
                Output(
                    TickType.LAST,
                    {"ts": "timestamp_ms_utc", "price": "price", "size": "quantity", "buyer_maker": "buyer_maker"},
                    time_unit="ms",
                ),
            ),
            file_format="csv",
        ),
        Recipe(
            "binance-quotes",
            "Binance best bid/offer: timestamp_ms_utc, symbol, bid, bid_size, ask, ask_size",
            (
                Output(
                    TickType.BID_ASK,
                    {
                        "ts": "timestamp_ms_utc",
                        "bid_price": "bid",
                        "bid_size": "bid_size",
                        "ask_price": "ask",
                        "ask_size": "ask_size",
                    },
                    time_unit="ms",
                ),
            ),
            file_format="csv",
        ),
        Recipe(
            "databento-trades",
            "Databento trades CSV export (pretty_px, pretty_ts): ts_event, action T, side B/A, price, size",
            (_DATABENTO_TRADE,),
            file_format="csv",
        ),
        Recipe(
            "databento-mbp1",
            "Databento MBP-1 CSV export: a quote per row (bid/ask_px_00, _sz_00 after the event), a trade per T row",
            (
                Output(
                    TickType.BID_ASK,
                    {
                        "ts": "ts_event",
                        "bid_price": "bid_px_00",
                        "bid_size": "bid_sz_00",
                        "ask_price": "ask_px_00",
                        "ask_size": "ask_sz_00",
                    },
                    time_unit="iso",
                ),
                _DATABENTO_TRADE,
            ),
            file_format="csv",
        ),
        Recipe(
            "truefx",
            "TrueFX quotes with a header: timestamp, bid, ask (no sizes: stored as 0)",
            (
                Output(
                    TickType.BID_ASK,
                    {"ts": "timestamp", "bid_price": "bid", "ask_price": "ask"},
                    time_unit="iso",
                    constants={"bid_size": 0.0, "ask_size": 0.0},
                ),
            ),
            file_format="csv",
        ),
        Recipe(
            "truefx-raw",
            "TrueFX download without a header: pair, YYYYMMDD HH:MM:SS.fff (UTC), bid, ask (no sizes: stored as 0)",
            (
                Output(
                    TickType.BID_ASK,
                    {"ts": "time", "bid_price": "bid", "ask_price": "ask"},
                    time_unit="%Y%m%d %H:%M:%S.%f",
                    constants={"bid_size": 0.0, "ask_size": 0.0},
                ),
            ),
            file_format="csv",
            header=("pair", "time", "bid", "ask"),
        ),
        Recipe(
            "ib-hist-bidask",
            "IB historical BID_ASK ticks as JSON lines: time, priceBid, priceAsk, sizeBid, sizeAsk, tickAttribBidAsk",
            (
                Output(
                    TickType.BID_ASK,
                    {
                        "ts": "time",
                        "bid_price": "priceBid",
                        "bid_size": "sizeBid",
                        "ask_price": "priceAsk",
                        "ask_size": "sizeAsk",
                        "bid_past_low": "tickAttribBidAsk.bidPastLow",
                        "ask_past_high": "tickAttribBidAsk.askPastHigh",
                    },
                ),
            ),
            file_format="jsonl",
        ),
        Recipe(
            "ib-hist-trades",
            "IB historical TRADES ticks as JSON lines: time, price, size, exchange, specialConditions, tickAttribLast",
            (
                Output(
                    TickType.LAST,
                    {
                        "ts": "time",
                        "price": "price",
                        "size": "size",
                        "exchange": "exchange",
                        "conditions": "specialConditions",
                        "past_limit": "tickAttribLast.pastLimit",
                        "unreported": "tickAttribLast.unreported",
                    },
                ),
            ),
            file_format="jsonl",
        ),
        Recipe(
            "ib-depth",
            "IB updateMktDepth rows as CSV: time_recv_utc, position, market_maker, operation 0/1/2, side 0 ask/1 bid, "
            "price, size",
            (
                Output(
                    TickType.DEPTH,
                    {
                        "ts": "time_recv_utc",
                        "position": "position",
                        "market_maker": "market_maker",
                        "operation": "operation",
                        "side": "side",
                        "price": "price",
                        "size": "size",
                    },
                    time_unit="iso",
                ),
            ),
            file_format="csv",
        ),
    )
}


def preset(name: str) -> Recipe:
    """The preset called `name`, or ValidationError listing the presets."""
    found = PRESETS.get(name)
    if found is None:
        raise ValidationError("--preset", name, f"is not a preset (use one of {', '.join(PRESETS)})")
    return found
