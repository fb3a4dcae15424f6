"""The v2 streaming protocol at the API edge: parsing what a client asks for, stream ids, JSON
encoding, the /v3 buffer message formats and what /v2/info describes. Pure functions, no I/O (the
messages themselves are built by `ib_stream.live.messages`, shared with the live pump).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import InvalidTickTypeError, ValidationError
from ib_stream.live.messages import TICK_KIND, tick_data_fields
from ib_stream.times import iso_us

PROTOCOL_VERSION: Final = "2.0.0"
MESSAGE_TYPES: Final = ("tick", "info", "error", "complete")
WS_SERVER_TYPES: Final = ("connected", "subscribed", "unsubscribed", "pong")
WS_CLIENT_TYPES: Final = ("subscribe", "unsubscribe", "ping")

# /v3 buffer messages: record field -> (expanded name, compact name), per tick type.
_V3_FIELDS: Final[dict[TickType, tuple[tuple[str, str, str], ...]]] = {
    TickType.BID_ASK: (
        ("bid_price", "bid_price", "bp"),
        ("bid_size", "bid_size", "bs"),
        ("ask_price", "ask_price", "ap"),
        ("ask_size", "ask_size", "as"),
    ),
    TickType.LAST: (("price", "price", "p"), ("size", "size", "s")),
    TickType.MID_POINT: (("mid_point", "mid_point", "mp"),),
    TickType.DEPTH: (
        ("price", "price", "p"),
        ("size", "size", "s"),
        ("side", "side", "sd"),
        ("position", "position", "pos"),
        ("operation", "operation", "op"),
        ("by_price", "by_price", "byp"),
    ),
}
_V3_FIELDS[TickType.ALL_LAST] = _V3_FIELDS[TickType.LAST]


# ---- parsing what a client asks for --------------------------------------------------------------------
def parse_stream_tick_types(value: str | Iterable[str] | None, field: str = "tick_types") -> tuple[TickType, ...]:
    """Parse tick types (snake_case or PascalCase, comma list or sequence); raise INVALID_TICK_TYPE naming them."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidTickTypeError(field, value or "", "is required (e.g. bid_ask,last)")
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()] or [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise InvalidTickTypeError(field, value, "must be a list of tick type names")
    parsed: list[TickType] = []
    for item in items:
        try:
            tick_type = TickType.parse(item, field)
        except ValidationError:
            raise InvalidTickTypeError(field, item, _NOT_A_TICK_TYPE) from None
        if tick_type not in parsed:
            parsed.append(tick_type)
    if not parsed:
        raise InvalidTickTypeError(field, value, "is empty")
    return tuple(parsed)


_NOT_A_TICK_TYPE: Final = (
    "is not a tick type (use one of bid_ask, last, all_last, mid_point, depth or BidAsk, Last, AllLast, MidPoint)"
)


# ---- stream ids ----------------------------------------------------------------------------------------
_STREAM_NUMBERS = itertools.count(1)


def new_stream_id(contract_id: int, label: str) -> str:
    """A unique stream id: `{contract_id}_{tick_type or multi}_{unix ms}_{n}` (n counts up per process)."""
    return f"{contract_id}_{label}_{time.time_ns() // 1_000_000}_{next(_STREAM_NUMBERS):04d}"


def tick_stream_id(contract_id: int, types: Sequence[TickType]) -> str:
    """A new stream id for ticks of `types`: labelled by the one tick type, or `multi`."""
    return new_stream_id(contract_id, types[0].value if len(types) == 1 else "multi")


# ---- encoding ------------------------------------------------------------------------------------------
def encode(message: dict[str, Any]) -> bytes:
    """JSON bytes of a message (orjson: no NaN, numpy-aware)."""
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)


def contract_info(contract: Contract) -> dict[str, Any]:
    """What names a contract in messages: symbol, security type, exchange, currency."""
    return {
        "symbol": contract.symbol,
        "sec_type": contract.sec_type,
        "exchange": contract.exchange,
        "currency": contract.currency,
    }


# ---- /v3 buffer messages -------------------------------------------------------------------------------
def v3_message(stream: StreamKey, record: dict[str, Any], raw: bool) -> dict[str, Any]:
    """A tick as a /v3 buffer message: expanded (`raw=False`) or compact (`raw=True`).

    `ib_timestamp`/`ts` is the event time and `system_timestamp`/`st` the receive time, both in
    microseconds; `request_id`/`rid` is the tick's stream sequence number.
    """
    ts_us = record["ts"] // 1000
    st_us = record["recv_ts"] // 1000
    fields = _V3_FIELDS[stream.tick_type]
    if raw:
        out: dict[str, Any] = {
            "ts": ts_us,
            "st": st_us,
            "cid": stream.contract_id,
            "tt": stream.tick_type.value,
            "rid": record["seq"],
        }
        for name, _, short in fields:
            out[short] = record.get(name)
        return out
    out = {
        "contract_id": stream.contract_id,
        "tick_type": stream.tick_type.value,
        "ib_timestamp": ts_us,
        "ib_timestamp_iso": iso_us(record["ts"]),
        "system_timestamp": st_us,
        "system_timestamp_iso": iso_us(record["recv_ts"]),
        "request_id": record["seq"],
    }
    for name, long, _ in fields:
        out[long] = record.get(name)
    return out


V3_FIELD_MAPPING: Final[dict[str, str]] = {
    "ts": "ib_timestamp: event time, microseconds since the epoch (UTC)",
    "st": "system_timestamp: receive time, microseconds since the epoch (UTC)",
    "cid": "contract_id",
    "tt": "tick_type (bid_ask, last, all_last, mid_point, depth)",
    "rid": "request_id: the tick's per-stream sequence number (seq)",
    "bp": "bid_price",
    "bs": "bid_size",
    "ap": "ask_price",
    "as": "ask_size",
    "p": "price",
    "s": "size",
    "mp": "mid_point",
    "sd": "side (depth: bid/ask)",
    "pos": "position (depth)",
    "op": "operation (depth: insert/update/delete)",
}


# ---- what /v2/info and /v3/info describe ------------------------------------------------------------------
INFO_STATUSES: Final[dict[str, str]] = {
    "subscribed": "a live SSE stream started (contract_info, stream_config)",
    "buffer_start": "history follows (start_time, buffer_message_count)",
    "buffer_complete": "all history was sent",
    "live_start": "live ticks follow; after_seq names the last historical seq per tick type",
    "replay_start": "a replay starts (start_time, end_time, speed, total_ticks)",
}
COMPLETE_REASONS: Final[dict[str, str]] = {
    "limit_reached": "`limit` ticks were sent",
    "timeout": "`timeout` seconds passed",
    "replay_complete": "a replay sent every tick of its range",
    "server_shutdown": "the service is stopping",
}
ERROR_CODES: Final[dict[str, str]] = {
    "CONTRACT_NOT_FOUND": "the contract is not configured (HTTP 404 before an SSE stream starts)",
    "INVALID_TICK_TYPE": "an unknown tick type (HTTP 422 before an SSE stream starts)",
    "INVALID_INPUT": "a parameter or a WebSocket message field is invalid",
    "INVALID_MESSAGE": "WebSocket: a message that is not a JSON object of a known type",
    "UNKNOWN_STREAM": "WebSocket: unsubscribe names no open stream or subscription",
    "TOO_MANY_STREAMS": "WebSocket: the socket already carries the most streams it may",
    "SLOW_CONSUMER": "the client fell more than api.subscriber_queue_size ticks behind; the stream ends",
    "STORAGE_ERROR": "the history could not be read; the stream ends",
    "INTERNAL_ERROR": "an unexpected server error; the stream ends",
}
TICK_TYPE_DESCRIPTIONS: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "top-of-book quotes (IB tick-by-tick BidAsk)",
    TickType.LAST: "trades (IB tick-by-tick Last)",
    TickType.ALL_LAST: "all trades incl. odd lots and off-exchange (IB tick-by-tick AllLast)",
    TickType.MID_POINT: "midpoint of the quote (IB tick-by-tick MidPoint)",
    TickType.DEPTH: "L2 order-book updates (IB market depth)",
}
_PASCAL: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "BidAsk",
    TickType.LAST: "Last",
    TickType.ALL_LAST: "AllLast",
    TickType.MID_POINT: "MidPoint",
    TickType.DEPTH: "Depth",
}
ENDPOINTS: Final[dict[str, str]] = {
    "/v2/stream/{contract_id}/live/{tick_type}": "SSE: one tick type live (limit, timeout, heartbeat)",
    "/v2/stream/{contract_id}/live?tick_types=a,b": "SSE: several tick types live on one connection",
    "/v2/stream/{contract_id}/buffer?tick_types=&buffer_duration=1h&start_time=": "SSE: history, then live",
    "/v2/ws/stream": "WebSocket: subscribe / unsubscribe / ping, several streams per socket",
    "/v2/replay/{contract_id}?tick_types=&start_time=&end_time=&speed=": "SSE: a stored range re-played",
    "/v2/latest/{contract_id}?tick_types=": "JSON: the latest tick of each type, from memory",
    "/v3/buffer/{contract_id}/query?tick_types=&start_time=&end_time=&buffer_duration=&limit=&raw=": "JSON: history",
    "/v3/buffer/{contract_id}/info": "JSON: what is held for a contract",
    "/v2/info": "JSON: this description",
    "/v3/info": "JSON: the v3 buffer message format",
}


def protocol_description() -> dict[str, Any]:
    """The static part of /v2/info: version, tick types, endpoints, message types and codes."""
    return {
        "version": PROTOCOL_VERSION,
        "protocol": "v2",
        "tick_types": {
            t.value: {"description": TICK_TYPE_DESCRIPTIONS[t], "data_type": TICK_KIND[t], "alias": _PASCAL[t]}
            for t in TickType
        },
        "endpoints": ENDPOINTS,
        "message_types": {
            "tick": "one tick; data: contract_id, tick_type, type, timestamp, unix_time, seq, ts, recv_ts + fields",
            "info": "a stream event; data.status: " + ", ".join(INFO_STATUSES),
            "error": "data: code, message, details, recoverable; the stream ends",
            "complete": "data: reason, total_ticks, duration_seconds; the stream ends",
        },
        "websocket_message_types": {"client": list(WS_CLIENT_TYPES), "server": list(WS_SERVER_TYPES + MESSAGE_TYPES)},
        "envelope": ["type", "stream_id", "timestamp", "data"],
        "tick_data_fields": tick_data_fields(),
        "info_statuses": INFO_STATUSES,
        "complete_reasons": COMPLETE_REASONS,
        "error_codes": ERROR_CODES,
        "stream_id_format": "{contract_id}_{tick_type|multi}_{unix_ms}_{number}",
    }
