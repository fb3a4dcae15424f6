"""Wire formats of the fake TWS: 9.81 framing, server→client encoders and client→server request decoding.

Layouts follow ../shared/docs/ibapi-9.81-wire-protocol.md (§1 framing, §4 incoming, §5 outgoing) for a
negotiated server version between `MIN_SERVER_VERSION` and 157. Ids and tick-type codes are written out here
rather than imported from ibapi, so a mistake on either side shows up in the tests instead of cancelling out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ib_stream.domain import Contract

MIN_SERVER_VERSION = 149  # every request layout below assumes the fields of sv >= 149 (primaryExchange in reqMktDepth)
MAX_SERVER_VERSION = 157  # = ibapi 9.81 MAX_CLIENT_VER
HISTORICAL_TICKS_MAX = 1000  # IB returns at most 1,000 ticks per reqHistoricalTicks

# Server → client message ids (message.py IN).
TICK_PRICE, TICK_SIZE, ERR_MSG, NEXT_VALID_ID, CONTRACT_DATA = 1, 2, 4, 9, 10
MARKET_DEPTH, MARKET_DEPTH_L2, MANAGED_ACCTS, TICK_GENERIC, TICK_STRING = 12, 13, 15, 45, 46
CURRENT_TIME, CONTRACT_DATA_END, TICK_SNAPSHOT_END, TICK_REQ_PARAMS = 49, 52, 57, 81
HISTORICAL_TICKS, HISTORICAL_TICKS_BID_ASK, HISTORICAL_TICKS_LAST, TICK_BY_TICK = 96, 97, 98, 99
NUDGE_ID = 0  # no such message: the client's decoder ignores it (see FakeTWS on the 4096-byte pitfall)

TICK_BY_TICK_KINDS = {"Last": 1, "AllLast": 2, "BidAsk": 3, "MidPoint": 4}
PRICE_TICK_TYPES = frozenset({1, 2, 4, 6, 7, 9, 14, 66, 67, 68, 72, 73, 75, 76})  # sent as TICK_PRICE

ERROR_TEXT = {
    162: "Historical Market Data Service error message:Historical data request pacing violation",
    200: "No security definition has been found for the request",
    309: "Max number (3) of market depth requests has been reached",
    317: "Market depth data has been RESET. Please empty deep book contents before applying any new entries.",
    321: "Error validating request.-'bW' : cause - {reason}",
    322: "Error processing request.-'bW' : cause - Duplicate ticker id",
    354: "Requested market data is not subscribed.",
    420: "Invalid Real-time Query:Historical data request pacing violation",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2158: "Sec-def data farm connection is OK:secdefnj",
    10167: "Requested market data is not subscribed. Displaying delayed market data.",
    10189: "Failed to request tick-by-tick data.Trading TWS session is connected from a different IP address",
    10190: "Max number of tick-by-tick requests has been reached.",
}


@dataclass(frozen=True)
class FakeContract:
    """What the fake TWS knows about one contract (answers reqContractDetails, gates subscriptions)."""

    con_id: int
    symbol: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    primary_exchange: str = ""
    local_symbol: str = ""  # defaults to symbol
    trading_class: str = ""  # defaults to symbol
    min_tick: float = 0.01
    multiplier: str = ""
    last_trade_date: str = ""  # "YYYYMMDD" or "YYYYMMDD HH:MM"
    long_name: str = ""
    market_name: str = ""
    time_zone_id: str = "US/Eastern"
    trading_hours: str = ""
    liquid_hours: str = ""
    valid_exchanges: str = "SMART"
    order_types: str = "LMT,MKT"
    market_rule_ids: str = ""
    stock_type: str = ""
    sec_ids: tuple[tuple[str, str], ...] = ()
    bbo_exchange: str = "9c0001"  # tickReqParams
    snapshot_permissions: int = 3


def fake_contract(contract: Contract) -> FakeContract:
    """The FakeContract IB would report for a configured ib_stream Contract (extra: primary_exchange, ...)."""
    extra = contract.extra
    return FakeContract(
        contract.con_id,
        contract.symbol,
        sec_type=contract.sec_type,
        exchange=contract.exchange,
        currency=contract.currency,
        min_tick=contract.min_tick,
        primary_exchange=str(extra.get("primary_exchange", "")),
        local_symbol=str(extra.get("local_symbol", "")),
        multiplier=str(extra.get("multiplier", "")),
    )


AAPL = FakeContract(
    265598,
    "AAPL",
    primary_exchange="NASDAQ",
    market_name="NMS",
    trading_class="NMS",
    long_name="APPLE INC",
    valid_exchanges="SMART,NASDAQ,ISLAND",
    market_rule_ids="26,26",
    stock_type="COMMON",
    sec_ids=(("ISIN", "US0378331005"),),
)
ES = FakeContract(
    495512563,
    "ES",
    sec_type="FUT",
    exchange="CME",
    local_symbol="ESZ6",
    min_tick=0.25,
    multiplier="50",
    last_trade_date="20261218 08:30",
    long_name="E-mini S&P 500",
    time_zone_id="US/Central",
    valid_exchanges="CME,QBALGO",
)


@dataclass(frozen=True)
class BidAskTick:
    """A quote as tick-by-tick BidAsk (99, kind 3) or historical BID_ASK (97) carries it."""

    time: int  # epoch seconds
    bid: float
    ask: float
    bid_size: int
    ask_size: int
    bid_past_low: bool = False
    ask_past_high: bool = False


@dataclass(frozen=True)
class LastTick:
    """A trade as tick-by-tick Last/AllLast (99, kind 1/2) or historical TRADES (98) carries it."""

    time: int
    price: float
    size: int
    exchange: str = ""
    special_conditions: str = ""
    past_limit: bool = False
    unreported: bool = False


@dataclass(frozen=True)
class MidPointTick:
    """A midpoint as tick-by-tick MidPoint (99, kind 4) or historical MIDPOINT (96, size 0) carries it."""

    time: int
    mid_point: float
    size: int = 0


Tick = BidAskTick | LastTick | MidPointTick
HISTORICAL_KINDS: dict[str, type[Tick]] = {"BID_ASK": BidAskTick, "TRADES": LastTick, "MIDPOINT": MidPointTick}


@dataclass(frozen=True)
class MktDataTick:
    """One reqMktData tick: TICK_PRICE when `price` is set, else TICK_SIZE (`size`) or TICK_STRING (`text`)."""

    tick_type: int
    price: float | None = None
    size: int | None = None
    text: str | None = None
    attrib_mask: int = 0
    recv_time: datetime | None = None  # when the sample was received (replay pacing / assertions only)


@dataclass(frozen=True)
class DepthUpdate:
    """One depth row change: MARKET_DEPTH (12) when `market_maker` is None, else MARKET_DEPTH_L2 (13)."""

    position: int
    operation: int  # 0 insert, 1 update, 2 delete
    side: int  # 0 ask, 1 bid
    price: float
    size: int
    market_maker: str | None = None
    recv_time: datetime | None = None


# --- framing ---------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    text = repr(value) if isinstance(value, float) else str(value)
    if "\0" in text:
        raise ValueError(f"field {text!r} contains NUL")
    return text


def frame(*fields: Any) -> bytes:
    """Return one length-prefixed message: every field NUL-terminated, the last one included."""
    payload = "".join(_text(f) + "\0" for f in fields).encode()
    return struct.pack("!I", len(payload)) + payload


def whole(size: float | int, what: str = "size") -> int:
    """Return `size` as an int; ibapi 9.81 parses every size with int(), so a fraction would kill its loop."""
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"{what} {size!r} must be a whole number (ibapi 9.81 parses sizes as int)")
    return int(size)


def escaped(text: str, server_version: int) -> str:
    """Encode a signature-decoded string field: from sv 153 the client decodes those with 'unicode-escape'."""
    return text.encode("unicode_escape").decode("ascii") if server_version >= 153 else text


# --- server → client -------------------------------------------------------------------------------------------


def version_reply(server_version: int, connection_time: str) -> bytes:
    return frame(server_version, connection_time)


def next_valid_id(order_id: int) -> bytes:
    return frame(NEXT_VALID_ID, 1, order_id)


def managed_accounts(accounts: Sequence[str], server_version: int) -> bytes:
    return frame(MANAGED_ACCTS, 1, escaped(",".join(accounts), server_version))


def error(req_id: int, code: int, message: str, server_version: int) -> bytes:
    return frame(ERR_MSG, 2, req_id, code, escaped(message, server_version))


def current_time(epoch_seconds: int) -> bytes:
    return frame(CURRENT_TIME, 1, epoch_seconds)


def contract_data(req_id: int, c: FakeContract, server_version: int) -> bytes:
    """CONTRACT_DATA version 8, laid out as decoder.processContractDataMsg reads it (§4.1)."""
    long_name = escaped(c.long_name, server_version)
    fields: list[Any] = [CONTRACT_DATA, 8, req_id, c.symbol, c.sec_type, c.last_trade_date, 0.0, ""]
    fields += [c.exchange, c.currency, c.local_symbol or c.symbol, c.market_name, c.trading_class or c.symbol]
    fields += [c.con_id, c.min_tick, 1]  # mdSizeMultiplier (sv >= 110)
    fields += [c.multiplier, c.order_types, c.valid_exchanges, 1, 0, long_name, c.primary_exchange]
    fields += ["", "", "", "", c.time_zone_id, c.trading_hours, c.liquid_hours, "", 0]  # ... evRule, evMultiplier
    fields += [len(c.sec_ids), *(part for pair in c.sec_ids for part in pair)]
    fields += [0, "", "", c.market_rule_ids, ""]  # aggGroup, underSymbol, underSecType, marketRuleIds, realExpiration
    if server_version >= 152:
        fields.append(c.stock_type)
    return frame(*fields)


def contract_data_end(req_id: int) -> bytes:
    return frame(CONTRACT_DATA_END, 1, req_id)


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int) -> bytes:
    return frame(TICK_REQ_PARAMS, req_id, min_tick, bbo_exchange, snapshot_permissions)


def tick_snapshot_end(req_id: int) -> bytes:
    return frame(TICK_SNAPSHOT_END, 1, req_id)


def mkt_data(req_id: int, tick: MktDataTick, server_version: int) -> bytes:
    """TICK_PRICE (1) with its size (the client then calls tickSize itself), TICK_SIZE (2) or TICK_STRING (46)."""
    if tick.price is not None:
        return frame(TICK_PRICE, 6, req_id, tick.tick_type, float(tick.price), whole(tick.size or 0), tick.attrib_mask)
    if tick.size is not None:
        return frame(TICK_SIZE, 6, req_id, tick.tick_type, whole(tick.size))
    if tick.text is not None:
        return frame(TICK_STRING, 6, req_id, tick.tick_type, escaped(tick.text, server_version))
    raise ValueError(f"market-data tick {tick} has no price, size or text")


def depth(req_id: int, update: DepthUpdate, is_smart_depth: bool) -> bytes:
    """MARKET_DEPTH (12) for plain depth, MARKET_DEPTH_L2 (13) when a market maker is named."""
    size = whole(update.size)
    if update.market_maker is None:
        return frame(MARKET_DEPTH, 1, req_id, update.position, update.operation, update.side, float(update.price), size)
    return frame(
        MARKET_DEPTH_L2, 1, req_id, update.position, update.market_maker, update.operation, update.side,
        float(update.price), size, is_smart_depth,
    )  # fmt: skip


def tick_by_tick(req_id: int, kind: str, tick: Tick) -> bytes:
    """TICK_BY_TICK (99); BidAsk mask bit0 = bidPastLow, bit1 = askPastHigh (opposite of message 97)."""
    code = TICK_BY_TICK_KINDS[kind]
    if isinstance(tick, BidAskTick) and kind == "BidAsk":
        mask = tick.bid_past_low | tick.ask_past_high << 1
        return frame(
            TICK_BY_TICK, req_id, code, tick.time, float(tick.bid), float(tick.ask),
            whole(tick.bid_size), whole(tick.ask_size), mask,
        )  # fmt: skip
    if isinstance(tick, LastTick) and kind in ("Last", "AllLast"):
        mask = tick.past_limit | tick.unreported << 1
        return frame(
            TICK_BY_TICK, req_id, code, tick.time, float(tick.price), whole(tick.size), mask, tick.exchange,
            tick.special_conditions,
        )  # fmt: skip
    if isinstance(tick, MidPointTick) and kind == "MidPoint":
        return frame(TICK_BY_TICK, req_id, code, tick.time, float(tick.mid_point))
    raise TypeError(f"{type(tick).__name__} cannot be sent as tick-by-tick {kind}")


def historical_ticks(req_id: int, what_to_show: str, ticks: Sequence[Tick], done: bool) -> bytes:
    """HISTORICAL_TICKS (96, MIDPOINT), _BID_ASK (97: mask bit0 askPastHigh, bit1 bidPastLow) or _LAST (98)."""
    body: list[Any] = [req_id, len(ticks)]
    for t in ticks:
        if what_to_show == "BID_ASK" and isinstance(t, BidAskTick):
            mask = t.ask_past_high | t.bid_past_low << 1
            body += [t.time, mask, float(t.bid), float(t.ask), whole(t.bid_size), whole(t.ask_size)]
        elif what_to_show == "TRADES" and isinstance(t, LastTick):
            mask = t.past_limit | t.unreported << 1
            body += [t.time, mask, float(t.price), whole(t.size), t.exchange, t.special_conditions]
        elif what_to_show == "MIDPOINT" and isinstance(t, MidPointTick):
            body += [t.time, 0, float(t.mid_point), whole(t.size)]
        else:
            raise TypeError(f"{type(t).__name__} cannot be sent as historical {what_to_show}")
    msg_id = {"BID_ASK": HISTORICAL_TICKS_BID_ASK, "TRADES": HISTORICAL_TICKS_LAST, "MIDPOINT": HISTORICAL_TICKS}
    return frame(msg_id[what_to_show], *body, done)


# --- client → server -------------------------------------------------------------------------------------------

_CONTRACT = (
    "conId:i", "symbol", "secType", "lastTradeDateOrContractMonth", "strike:f", "right", "multiplier", "exchange",
    "primaryExchange", "currency", "localSymbol", "tradingClass",
)  # fmt: skip
_HISTORICAL_WINDOW = (
    "startDateTime", "endDateTime", "numberOfTicks:i", "whatToShow", "useRth:i", "ignoreSize:b", "miscOptions",
)  # fmt: skip
REQUEST_LAYOUTS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("reqMktData", ("version:i", "reqId:i", *_CONTRACT)),  # the rest is variable: see _mkt_data_tail
    2: ("cancelMktData", ("version:i", "reqId:i")),
    8: ("reqIds", ("version:i", "numIds:i")),
    9: ("reqContractDetails", ("version:i", "reqId:i", *_CONTRACT, "includeExpired:b", "secIdType", "secId")),
    10: ("reqMktDepth", ("version:i", "reqId:i", *_CONTRACT, "numRows:i", "isSmartDepth:b", "mktDepthOptions")),
    11: ("cancelMktDepth", ("version:i", "reqId:i", "isSmartDepth:b")),
    17: ("reqManagedAccts", ("version:i",)),
    49: ("reqCurrentTime", ("version:i",)),
    59: ("reqMarketDataType", ("version:i", "marketDataType:i")),
    71: ("startApi", ("version:i", "clientId:i", "optionalCapabilities")),
    96: ("reqHistoricalTicks", ("reqId:i", *_CONTRACT, "includeExpired:b", *_HISTORICAL_WINDOW)),
    97: ("reqTickByTickData", ("reqId:i", *_CONTRACT, "tickType", "numberOfTicks:i", "ignoreSize:b")),
    98: ("cancelTickByTickData", ("reqId:i",)),
}
REQUEST_NAMES = frozenset(name for name, _ in REQUEST_LAYOUTS.values()) | {"handshake"}


class RequestDecodeError(ValueError):
    """A client frame that does not match its 9.81 layout."""


def _convert(spec: str, value: str) -> Any:
    name, _, kind = spec.partition(":")
    try:
        if kind == "i":
            return int(value) if value else 0
        if kind == "f":
            return float(value) if value else 0.0
        if kind == "b":
            return bool(int(value)) if value else False
    except ValueError:
        raise RequestDecodeError(f"field {name} = {value!r} is not of type {kind}") from None
    return value


@dataclass
class _Cursor:
    fields: Sequence[str]
    at: int = 0
    out: dict[str, Any] = field(default_factory=dict)

    def take(self, *specs: str) -> None:
        for spec in specs:
            if self.at >= len(self.fields):
                raise RequestDecodeError(f"missing field {spec.partition(':')[0]}")
            self.out[spec.partition(":")[0]] = _convert(spec, self.fields[self.at])
            self.at += 1


def decode_request(fields: Sequence[str]) -> tuple[str, int, dict[str, Any]]:
    """Return (request name, message id, named fields) of one client frame; raise RequestDecodeError."""
    try:
        msg_id = int(fields[0])
    except (IndexError, ValueError):
        raise RequestDecodeError(f"bad message id in {list(fields)!r}") from None
    if msg_id not in REQUEST_LAYOUTS:
        return f"msg{msg_id}", msg_id, {"fields": list(fields[1:])}
    name, layout = REQUEST_LAYOUTS[msg_id]
    cursor = _Cursor(fields, 1)
    cursor.take(*layout)
    if name == "reqMktData":
        _mkt_data_tail(cursor)
    if cursor.at != len(fields):
        raise RequestDecodeError(f"{name}: {len(fields) - cursor.at} unexpected trailing field(s)")
    return name, msg_id, cursor.out


def _mkt_data_tail(c: _Cursor) -> None:
    if c.out["secType"] == "BAG":
        c.take("comboLegCount:i")
        legs = []
        for _ in range(c.out["comboLegCount"]):
            c.take("legConId:i", "legRatio:i", "legAction", "legExchange")
            legs.append({k: c.out.pop(k) for k in ("legConId", "legRatio", "legAction", "legExchange")})
        c.out["comboLegs"] = legs
    c.take("deltaNeutral:b")
    if c.out["deltaNeutral"]:
        c.take("deltaNeutralConId:i", "deltaNeutralDelta:f", "deltaNeutralPrice:f")
    c.take("genericTickList", "snapshot:b", "regulatorySnapshot:b", "mktDataOptions")


def parse_ib_datetime(text: str, default_tz: str) -> int | None:
    """Return epoch seconds of an IB request time ("20220302 01:00:00 [TZ]" or "20220302-01:00:00" UTC), None if empty."""
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 17 and text[8] == "-":
            return int(datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC).timestamp())
        stamp, _, zone = text[:17], text[17:18], text[18:].strip()
        tz = ZoneInfo(zone or default_tz)
        return int(datetime.strptime(stamp, "%Y%m%d %H:%M:%S").replace(tzinfo=tz).timestamp())
    except (ValueError, ZoneInfoNotFoundError) as e:
        raise RequestDecodeError(f"time {text!r} is not 'YYYYMMDD HH:MM:SS [TZ]' or 'YYYYMMDD-HH:MM:SS': {e}") from None
