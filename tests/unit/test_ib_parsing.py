"""The pure IB parsing turns ibapi callback payloads (real recorded samples) into valid domain ticks."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from ibapi.common import HistoricalTick, HistoricalTickBidAsk, HistoricalTickLast, TickAttribBidAsk, TickAttribLast

from ib_stream.analytics.book import OrderBook
from ib_stream.clock import NS_PER_SECOND, to_ns
from ib_stream.domain import TickType, TickValidator
from ib_stream.errors import SourceError
from ib_stream.sources.ib_parsing import (
    MarketDataAssembler,
    bid_ask_from_tbt,
    depth_from_mkt_depth,
    midpoint_from_tbt,
    ticks_from_historical_bid_ask,
    ticks_from_historical_last,
    ticks_from_historical_midpoint,
    trade_from_tbt,
)
from tests.conftest import requires_shared_data

T = 1_704_205_800  # 2024-01-02 14:30:00 UTC, in IB's epoch seconds


def valid(tick_type: TickType, ticks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ticks through the domain validator; return the canonical records (source kept)."""
    validator = TickValidator(tick_type)
    records = [validator.canonical(tick, seq=i + 1, recv_ts=tick["ts"], source="unset") for i, tick in enumerate(ticks)]
    assert all(record["source"] == tick["source"] for record, tick in zip(records, ticks, strict=True))
    return records


def epoch_seconds(text: str) -> int:
    return to_ns(datetime.fromisoformat(text)) // NS_PER_SECOND


def bid_ask_attrib(bid_past_low: bool, ask_past_high: bool) -> TickAttribBidAsk:
    attrib = TickAttribBidAsk()
    attrib.bidPastLow, attrib.askPastHigh = bid_past_low, ask_past_high
    return attrib


def last_attrib(past_limit: bool, unreported: bool) -> TickAttribLast:
    attrib = TickAttribLast()
    attrib.pastLimit, attrib.unreported = past_limit, unreported
    return attrib


# -- tick-by-tick ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(False, False), (True, False), (False, True), (True, True)])
def test_tbt_bid_ask_keeps_prices_sizes_and_attributes(low: bool, high: bool) -> None:
    tick = bid_ask_from_tbt(T, 185.5, 185.52, 300, 200, bid_ask_attrib(low, high))
    assert tick == {
        "ts": T * NS_PER_SECOND,
        "bid_price": 185.5,
        "bid_size": 300.0,
        "ask_price": 185.52,
        "ask_size": 200.0,
        "bid_past_low": low,
        "ask_past_high": high,
        "source": "ib_tbt",
    }
    assert type(tick["bid_size"]) is float  # ibapi 9.81 sizes are ints
    valid(TickType.BID_ASK, [tick])


@pytest.mark.parametrize(("code", "stream"), [(1, TickType.LAST), (2, TickType.ALL_LAST)])
def test_tbt_trade_maps_last_and_all_last_with_no_side(code: int, stream: TickType) -> None:
    tick_type, tick = trade_from_tbt(code, T, 185.51, 100, last_attrib(False, True), "ISLAND", "  T")
    assert tick_type is stream
    assert tick == {
        "ts": T * NS_PER_SECOND,
        "price": 185.51,
        "size": 100.0,
        "exchange": "ISLAND",
        "conditions": "  T",
        "past_limit": False,
        "unreported": True,
        "side": None,
        "source": "ib_tbt",
    }
    valid(stream, [tick])


def test_tbt_trade_rejects_a_tick_type_that_is_not_a_trade() -> None:
    with pytest.raises(SourceError, match="tick-by-tick trade type 3"):
        trade_from_tbt(3, T, 1.0, 1, None, "", "")


def test_tbt_ticks_in_one_second_share_ts() -> None:
    ticks = [midpoint_from_tbt(T, 185.51), midpoint_from_tbt(T, 185.515), midpoint_from_tbt(T + 1, 185.52)]
    assert [t["ts"] for t in ticks] == [T * NS_PER_SECOND] * 2 + [(T + 1) * NS_PER_SECOND]
    assert [r["mid_point"] for r in valid(TickType.MID_POINT, ticks)] == [185.51, 185.515, 185.52]


# -- historical ticks: the recorded reqHistoricalTicks samples ---------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def historical_bid_ask(row: dict[str, Any]) -> HistoricalTickBidAsk:
    tick = HistoricalTickBidAsk()
    tick.time = epoch_seconds(row["time"])
    attrib = row["tickAttribBidAsk"]
    tick.tickAttribBidAsk = bid_ask_attrib(attrib["bidPastLow"], attrib["askPastHigh"])
    tick.priceBid, tick.priceAsk = row["priceBid"], row["priceAsk"]
    tick.sizeBid, tick.sizeAsk = int(row["sizeBid"]), int(row["sizeAsk"])  # the 9.81 decoder reads ints
    return tick


def historical_last(row: dict[str, Any]) -> HistoricalTickLast:
    tick = HistoricalTickLast()
    tick.time = epoch_seconds(row["time"])
    attrib = row.get("tickAttribLast", {})
    tick.tickAttribLast = last_attrib(attrib.get("pastLimit", False), attrib.get("unreported", False))
    tick.price, tick.size = row["price"], int(row["size"])
    tick.exchange, tick.specialConditions = row["exchange"], row.get("specialConditions", "")
    return tick


def test_historical_bid_ask_sample_parses_every_value() -> None:
    rows = read_jsonl(requires_shared_data("ib_mktdata") / "hist_bid_ask_ticks_20220302.jsonl.gz")
    assert len(rows) == 1003
    # The sample's attributes are all false: flip some to check the mapping on real payloads too.
    rows[1]["tickAttribBidAsk"] = {"bidPastLow": True, "askPastHigh": False}
    rows[2]["tickAttribBidAsk"] = {"bidPastLow": False, "askPastHigh": True}
    ticks = ticks_from_historical_bid_ask([historical_bid_ask(row) for row in rows])
    records = valid(TickType.BID_ASK, ticks)
    for row, tick in zip(rows, records, strict=True):
        assert tick["ts"] == to_ns(datetime.fromisoformat(row["time"]))
        assert (tick["bid_price"], tick["ask_price"]) == (row["priceBid"], row["priceAsk"])
        assert (tick["bid_size"], tick["ask_size"]) == (row["sizeBid"], row["sizeAsk"])
        assert tick["bid_past_low"] is row["tickAttribBidAsk"]["bidPastLow"]
        assert tick["ask_past_high"] is row["tickAttribBidAsk"]["askPastHigh"]
        assert tick["source"] == "ib_hist"
    assert [t["ts"] for t in records] == sorted(t["ts"] for t in records)  # IB order kept


def test_historical_trades_sample_parses_every_value() -> None:
    rows = read_jsonl(requires_shared_data("ib_mktdata") / "hist_trade_ticks_20220302.jsonl.gz")
    assert len(rows) == 6
    records = valid(TickType.LAST, ticks_from_historical_last([historical_last(row) for row in rows]))
    for row, tick in zip(rows, records, strict=True):
        assert tick["ts"] == to_ns(datetime.fromisoformat(row["time"]))
        assert (tick["price"], tick["size"]) == (row["price"], row["size"])
        assert (tick["exchange"], tick["conditions"]) == (row["exchange"], row["specialConditions"])
        assert (tick["past_limit"], tick["unreported"]) == (False, False)
        assert tick["side"] is None and tick["source"] == "ib_hist"
    assert records[0]["ts"] == to_ns(datetime.fromisoformat("2022-03-02T01:47:53+00:00"))


def test_historical_last_attributes_and_midpoints() -> None:
    trade = historical_last({"time": "2022-03-02T01:47:53+00:00", "price": 6.2, "size": 30.0, "exchange": "ARCA"})
    trade.specialConditions = "I"
    trade.tickAttribLast = last_attrib(True, True)
    (tick,) = ticks_from_historical_last([trade])
    assert (tick["past_limit"], tick["unreported"], tick["conditions"], tick["exchange"]) == (True, True, "I", "ARCA")
    mids = []
    for second, price in ((T, 6.1), (T, 6.15), (T + 2, 6.2)):
        mid = HistoricalTick()
        mid.time, mid.price = second, price
        mids.append(mid)
    records = valid(TickType.MID_POINT, ticks_from_historical_midpoint(mids))
    assert [(r["ts"], r["mid_point"], r["source"]) for r in records] == [
        (T * NS_PER_SECOND, 6.1, "ib_hist"),
        (T * NS_PER_SECOND, 6.15, "ib_hist"),
        ((T + 2) * NS_PER_SECOND, 6.2, "ib_hist"),
    ]


# -- market depth -----------------------------------------------------------------------------------


def test_eurusd_depth_sample_ends_in_the_recorded_final_book() -> None:
    folder = requires_shared_data("ib_depth_eurusd")
    with open(folder / "eurusd_mktdepth_20220221.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "eurusd_mktdepth_final_book_20220221.csv", newline="") as f:
        final = list(csv.DictReader(f))
    assert len(rows) == 271 and len(final) == 10
    ticks = [
        depth_from_mkt_depth(
            int(r["position"]),
            int(r["operation"]),
            int(r["side"]),
            float(r["price"]),
            int(r["size"]),  # ibapi 9.81 delivers depth sizes as ints
            to_ns(datetime.fromisoformat(r["time_recv_utc"])),
            r["market_maker"],
        )
        for r in rows
    ]
    records = valid(TickType.DEPTH, ticks)
    assert {r["operation"] for r in records} == {"update"}
    assert sum(r["side"] == "ask" for r in records) == 161 and sum(r["side"] == "bid" for r in records) == 110
    book = OrderBook(max_rows=5)
    for tick in ticks:
        book.apply(tick)
    assert book.complete and book.anomalies == 0
    for side in ("bid", "ask"):
        expected = [
            (float(r["price"]), float(r["size"]), r["market_maker"])
            for r in sorted(final, key=lambda r: int(r["position"]))
            if r["side_name"] == side
        ]
        assert book.rows(side) == expected
    best_bid, best_ask = book.rows("bid")[0], book.rows("ask")[0]
    assert best_bid is not None and best_ask is not None and best_bid[0] < best_ask[0]  # 1.13148 < 1.1315


def test_depth_l2_insert_update_delete_shift_rows_by_position() -> None:
    ts = T * NS_PER_SECOND
    events = [  # (position, operation, side, price, size, market maker) as updateMktDepthL2 passes them
        (0, 0, 1, 185.50, 300, "NSDQ"),
        (0, 0, 1, 185.51, 100, "ARCA"),  # insert at the top pushes NSDQ to row 1
        (2, 0, 1, 185.49, 500, "BATS"),
        (1, 1, 1, 185.50, 250, "NSDQ"),
        (0, 2, 1, 185.51, 100, "ARCA"),  # delete the top: rows shift up
        (0, 0, 0, 185.53, 200, "EDGX"),
    ]
    ticks = [depth_from_mkt_depth(p, op, side, price, size, ts, mm) for p, op, side, price, size, mm in events]
    assert [(t["side"], t["operation"]) for t in ticks][:5] == [("bid", "insert")] * 3 + [
        ("bid", "update"),
        ("bid", "delete"),
    ]
    valid(TickType.DEPTH, ticks)
    book = OrderBook()
    for tick in ticks:
        book.apply(tick)
    assert book.rows("bid") == [(185.50, 250.0, "NSDQ"), (185.49, 500.0, "BATS")]
    assert book.rows("ask") == [(185.53, 200.0, "EDGX")]
    book.apply(depth_from_mkt_depth(4, 2, 0, 0.0, 0, ts))
    assert book.anomalies == 1
    book.reset()
    assert book.rows("bid") == [] and book.rows("ask") == []


def test_depth_joined_mid_stream_leaves_unknown_rows_until_updated() -> None:
    book = OrderBook(max_rows=3)
    book.apply(depth_from_mkt_depth(2, 1, 1, 1.1, 10, T * NS_PER_SECOND))
    assert book.rows("bid") == [None, None, (1.1, 10.0, "")] and not book.complete
    book.apply(depth_from_mkt_depth(0, 0, 1, 1.3, 5, T * NS_PER_SECOND))  # insert; row 3 falls off
    assert book.rows("bid") == [(1.3, 5.0, ""), None, None]


@pytest.mark.parametrize(("side", "operation", "field"), [(2, 0, "side"), (1, 3, "operation")])
def test_depth_rejects_unknown_codes_naming_the_field(side: int, operation: int, field: str) -> None:
    with pytest.raises(SourceError) as caught:
        depth_from_mkt_depth(0, operation, side, 1.0, 1, T * NS_PER_SECOND)
    assert caught.value.details == {"field": field, "value": side if field == "side" else operation}


# -- reqMktData: the assembler ----------------------------------------------------------------------

PAIRED = {1: 0, 2: 3, 4: 5, 66: 69, 67: 70, 68: 71}  # ibapi calls tickSize(paired code, size) after tickPrice
PRICE_CODES = {*PAIRED, 6, 7, 9, 14, 72, 73, 75, 76}  # TICK_PRICE messages: BID, ASK, LAST, HIGH, LOW, CLOSE, OPEN
Out = list[tuple[TickType, dict[str, Any]]]


def feed(
    assembler: MarketDataAssembler, code: int, value: float | tuple[float, float], ts: int = T * NS_PER_SECOND
) -> Out:
    """Deliver one TWS message as ibapi 9.81 does: a price message gives tickPrice then tickSize."""
    if code in PRICE_CODES:
        price, size = value if isinstance(value, tuple) else (value, 0)
        out = assembler.on_price(code, price, ts)
        return out + assembler.on_size(PAIRED[code], size, ts) if code in PAIRED else out
    assert not isinstance(value, tuple)
    return assembler.on_size(code, value, ts)


def quotes(out: Out) -> list[tuple[float, float, float, float]]:
    return [(t["bid_price"], t["bid_size"], t["ask_price"], t["ask_size"]) for k, t in out if k is TickType.BID_ASK]


def trades(out: Out) -> list[tuple[float, float]]:
    return [(t["price"], t["size"]) for k, t in out if k is TickType.LAST]


def test_assembler_quotes_one_tick_per_message_once_both_sides_are_known() -> None:
    a = MarketDataAssembler()
    assert a.on_price(1, 10.0, 1) == []  # waits for its size
    assert quotes(a.on_size(0, 300, 1)) == []  # no ask yet
    assert quotes(feed(a, 2, (10.2, 200))) == [(10.0, 300.0, 10.2, 200.0)]
    assert quotes(feed(a, 3, 0)) == []  # size 0 = no value
    assert quotes(feed(a, 3, 200)) == []  # unchanged
    assert quotes(feed(a, 2, (10.0, 100))) == []  # locked: held back
    assert quotes(feed(a, 1, (9.8, 100))) == [(9.8, 100.0, 10.0, 100.0)]
    assert quotes(feed(a, 1, (-1.0, 0))) == []  # bid gone
    assert quotes(feed(a, 0, 500)) == []
    assert quotes(feed(a, 69, 700)) == [] and quotes(feed(a, 66, (9.9, 400))) == [(9.9, 400.0, 10.0, 100.0)]
    assert quotes(a.on_price(9, 9.5, 2) + a.on_price(1, 9.7, 3) + a.on_price(7, 9.0, 4)) == [(9.7, 400.0, 10.0, 100.0)]
    assert a.stats["price_without_size"] == 1 and a.stats["ignored_price"] == 2


def test_assembler_trades_prime_repeat_size_only_and_volume() -> None:
    a = MarketDataAssembler()
    assert trades(feed(a, 5, 100)) == []  # no LAST price yet
    assert trades(feed(a, 4, (20.0, 300)) + feed(a, 5, 300)) == []  # subscribe snapshot + TWS's repeat
    assert trades(feed(a, 8, 10_000)) == []  # baseline
    assert trades(feed(a, 4, (20.1, 200)) + feed(a, 5, 200) + feed(a, 8, 10_200)) == [(20.1, 200.0)]
    assert trades(feed(a, 5, 200)) == [(20.1, 200.0)]  # not right after a LAST: a new trade
    assert trades(feed(a, 8, 10_400)) == []  # explained
    assert trades(feed(a, 8, 10_700)) == [(20.1, 300.0)]  # unchanged price and size: only VOLUME shows it
    assert trades(feed(a, 68, (20.2, 100)) + feed(a, 71, 50)) == [(20.2, 100.0), (20.2, 50.0)]
    assert trades(feed(a, 74, 10_800)) == []  # lagging: 150 traded, 100 reported
    assert trades(feed(a, 8, 10_900)) == [(20.2, 50.0)]
    assert trades(feed(a, 8, 500)) == [] and trades(feed(a, 8, 600)) == [(20.2, 100.0)]  # new day
    assert trades(feed(a, 4, (-1.0, 0))) == []
    a.reset()
    assert trades(feed(a, 4, (21.0, 100))) == []  # primes again after a resubscribe
    assert {k: a.stats[k] for k in ("last_primed", "last_size_repeat", "last_size_unpriced", "volume_baseline")} == {
        "last_primed": 2, "last_size_repeat": 2, "last_size_unpriced": 1, "volume_baseline": 2
    }  # fmt: skip
    quiet = MarketDataAssembler(infer_volume_trades=False)
    assert trades(feed(quiet, 4, (1.0, 1)) + feed(quiet, 8, 10) + feed(quiet, 8, 20)) == []
    assert quiet.stats["volume_not_traded"] == 1


def group_by_time(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        if groups and groups[-1][0]["time"] == row["time"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def test_hk_mktdata_sample_assembles_consistent_quotes_and_explained_trades() -> None:
    path = requires_shared_data("ib_mktdata") / "hk_stock_mktdata_ticks_20220107.json.gz"
    with gzip.open(path, "rt") as f:
        rows = json.load(f)
    a = MarketDataAssembler()
    out: Out = []
    state: dict[int, float] = {}  # the raw book: code -> value, as the rows say
    last_prices: list[float] = []  # the LAST price in force when each trade was emitted
    locked_states = 0
    latest = None  # the last quote emitted
    for burst in group_by_time(rows):
        ts = to_ns(datetime.fromisoformat(burst[0]["time"]))
        for row in burst:
            code, price, size = row["tickType"], row["price"], int(row["size"])
            emitted = feed(a, code, (price, size) if code in PRICE_CODES else size, ts)
            if code in (1, 2):
                state[code], state[PAIRED[code]] = price, size
                locked_states += 1 in state and 2 in state and state[1] >= state[2]
            elif code in (0, 3):
                state[code] = size
            state.update({4: price} if code == 4 else {})
            last_prices += [state[4] for _ in trades(emitted)]
            out += emitted
            latest = quotes(emitted)[-1] if quotes(emitted) else latest
        if len(state.keys() & {0, 1, 2, 3}) == 4 and state[1] < state[2]:  # each burst ends in the raw book
            assert latest == (state[1], state[0], state[2], state[3])
    records = valid(TickType.BID_ASK, [t for k, t in out if k is TickType.BID_ASK])
    valid(TickType.LAST, [t for k, t in out if k is TickType.LAST])
    stats, counts = a.stats, {c: sum(r["tickType"] == c for r in rows) for c in (0, 1, 2, 3, 4, 5, 8)}
    # Quotes: bid < ask always; every quote callback is emitted, incomplete, unchanged or a held locked state.
    assert all(r["bid_price"] < r["ask_price"] for r in records) and len(records) == stats["quote"] == 6959
    assert locked_states == stats["quote_crossed_held"] == 30
    assert stats["quote"] + stats["quote_incomplete"] + stats["quote_crossed_held"] + stats["quote_unchanged"] == sum(
        counts[c] for c in (0, 1, 2, 3)
    )
    # Trades: every LAST but the priming first is a trade; every LAST_SIZE is a repeat, a trade or unpriced.
    first_last = next(i for i, r in enumerate(rows) if r["tickType"] == 4)
    repeats = sum(
        r["tickType"] == 5 and p["tickType"] == 4 and r["size"] == p["size"] for p, r in itertools.pairwise(rows)
    )
    unpriced = sum(r["tickType"] == 5 for r in rows[:first_last])
    assert (stats["trade_last"], stats["last_size_repeat"], stats["last_size_unpriced"]) == (
        counts[4] - 1,
        repeats,
        unpriced,
    )
    assert stats["trade_size_only"] == counts[5] - repeats - unpriced
    assert (
        stats["volume_baseline"]
        + stats["volume_explained"]
        + stats["volume_lagging"]
        + stats["trade_from_volume"]
        + stats["volume_not_traded"]
        == counts[8]
    )
    sizes = trades(out)
    assert len(sizes) == stats["trade_last"] + stats["trade_size_only"] + stats["trade_from_volume"]
    assert [price for price, _ in sizes] == last_prices  # every trade price is the LAST in force
    assert all(size > 0 and size == int(size) for _, size in sizes)
    # Volume: the trades add up to IB's VOLUME from the first LAST price on (earlier volume has no price).
    volumes = [r["size"] for r in rows if r["tickType"] == 8]
    before_first_last = [r["size"] for r in rows[:first_last] if r["tickType"] == 8][-1]
    assert sum(size for _, size in sizes) == volumes[-1] - before_first_last
    times = [t["ts"] for _, t in out]
    assert times == sorted(times) and set(times) <= {to_ns(datetime.fromisoformat(r["time"])) for r in rows}


def test_eurusd_mktdata_sample_holds_the_locked_subscribe_snapshot() -> None:
    with open(requires_shared_data("ib_depth_eurusd") / "eurusd_mktdata_ticks_20220221.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    a = MarketDataAssembler()
    out: Out = []
    for r in rows:
        code, price, size = int(r["tick_type"]), float(r["price"]), int(r["size"])
        out += feed(
            a, code, (price, size) if code in PRICE_CODES else size, to_ns(datetime.fromisoformat(r["time_recv_utc"]))
        )
    records = valid(TickType.BID_ASK, [t for _, t in out])
    assert quotes(out)[0] == (1.13148, 500_000.0, 1.13151, 250_000.0)  # not the 1.13125 / 1.13125 snapshot
    assert all(r["bid_price"] < r["ask_price"] for r in records)
    assert a.stats["quote_crossed_held"] == 11 and a.stats["ignored_price"] == 3  # HIGH, LOW, CLOSE
