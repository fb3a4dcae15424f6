"""The v2 streaming protocol's messages, whatever carries them (SSE, WebSocket, replay): the envelope,
stored tick records as tick `data`, and the `info`, `error` and `complete` messages. Pure functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import IbStreamError
from ib_stream.streaming import LiveItem
from ib_stream.times import iso_us

# `data.type` of a tick: the kind of market data, as IB-Studies names it.
TICK_KIND: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "bid_ask",
    TickType.LAST: "time_sales",
    TickType.ALL_LAST: "time_sales",
    TickType.MID_POINT: "midpoint",
    TickType.DEPTH: "depth",
}
# The type's fields carried in tick `data` (record name -> protocol name); `side` of a trade is
# added only when known.
_TICK_FIELDS: Final[dict[TickType, tuple[tuple[str, str], ...]]] = {
    TickType.BID_ASK: (
        ("bid_price", "bid_price"),
        ("ask_price", "ask_price"),
        ("bid_size", "bid_size"),
        ("ask_size", "ask_size"),
        ("bid_past_low", "bid_past_low"),
        ("ask_past_high", "ask_past_high"),
    ),
    TickType.LAST: (
        ("price", "price"),
        ("size", "size"),
        ("exchange", "exchange"),
        ("conditions", "conditions"),
        ("past_limit", "past_limit"),
        ("unreported", "unreported"),
    ),
    TickType.MID_POINT: (("mid_point", "midpoint"),),
    TickType.DEPTH: (
        ("side", "side"),
        ("position", "position"),
        ("operation", "operation"),
        ("price", "price"),
        ("size", "size"),
        ("market_maker", "market_maker"),
        ("by_price", "by_price"),
    ),
}
_TICK_FIELDS[TickType.ALL_LAST] = _TICK_FIELDS[TickType.LAST]
# Errors a client may retry unchanged (the server or the connection was the problem, not the request).
RECOVERABLE_CODES: Final = frozenset({"SLOW_CONSUMER", "STORAGE_ERROR", "INTERNAL_ERROR", "SERVER_SHUTDOWN"})


# ---- times ---------------------------------------------------------------------------------------------
def now_iso() -> str:
    """The current UTC time as the protocol writes it (`iso_us`)."""
    return iso_us(time.time_ns())


# ---- messages ------------------------------------------------------------------------------------------
def envelope(kind: str, stream_id: str, data: dict[str, Any], timestamp: str | None = None) -> dict[str, Any]:
    """The message envelope every server message uses."""
    return {"type": kind, "stream_id": stream_id, "timestamp": timestamp or now_iso(), "data": data}


def tick_data(stream: StreamKey, record: dict[str, Any]) -> dict[str, Any]:
    """A stored tick record as protocol tick `data` (event time in `timestamp`, `unix_time`, `ts`)."""
    ts = record["ts"]
    data: dict[str, Any] = {
        "contract_id": stream.contract_id,
        "tick_type": stream.tick_type.value,
        "type": TICK_KIND[stream.tick_type],
        "timestamp": iso_us(ts),
        "unix_time": ts // NS_PER_SECOND,
        "seq": record["seq"],
        "ts": ts,
        "recv_ts": record["recv_ts"],
    }
    for name, shown in _TICK_FIELDS[stream.tick_type]:
        data[shown] = record.get(name)
    if stream.tick_type in (TickType.LAST, TickType.ALL_LAST) and record.get("side") is not None:
        data["side"] = record["side"]
    return data


def tick_message(stream_id: str, stream: StreamKey, record: dict[str, Any], timestamp: str) -> dict[str, Any]:
    return envelope("tick", stream_id, tick_data(stream, record), timestamp)


def tick_encoder(stream_id: str) -> Callable[[Sequence[LiveItem]], Iterator[dict[str, Any]]]:
    """The encoder of a tick stream for `pump`: one `tick` message per item, all stamped alike."""

    def encode(items: Sequence[LiveItem]) -> Iterator[dict[str, Any]]:
        return tick_messages(stream_id, items, now_iso())

    return encode


def tick_messages(stream_id: str, items: Iterable[LiveItem], timestamp: str) -> Iterator[dict[str, Any]]:
    """`tick` messages of (stream, record) items (built as they are taken: a limit may stop early)."""
    return (tick_message(stream_id, stream, record, timestamp) for stream, record in items)


def tick_data_fields() -> dict[str, list[str]]:
    """The fields of tick `data` per tick type (for /v2/info and the docs)."""
    common = ["contract_id", "tick_type", "type", "timestamp", "unix_time", "seq", "ts", "recv_ts"]
    out = {}
    for tick_type, fields in _TICK_FIELDS.items():
        extra = ["side (when known)"] if tick_type in (TickType.LAST, TickType.ALL_LAST) else []
        out[tick_type.value] = common + [shown for _, shown in fields] + extra
    return out


def info_message(stream_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """An `info` message: `data.status` names the event (subscribed, buffer_start, live_start, ...)."""
    return envelope("info", stream_id, {"status": status, **fields})


def streams_info(
    stream_id: str, status: str, contract_id: int, types: Sequence[TickType], **fields: Any
) -> dict[str, Any]:
    """An `info` message about a contract's tick streams: contract_id and tick_types, then `fields`."""
    return info_message(stream_id, status, contract_id=contract_id, tick_types=[t.value for t in types], **fields)


def error_message(
    stream_id: str, code: str, message: str, details: dict[str, Any] | None = None, recoverable: bool = False
) -> dict[str, Any]:
    return envelope(
        "error", stream_id, {"code": code, "message": message, "details": details or {}, "recoverable": recoverable}
    )


def error_from_exception(stream_id: str, error: Exception) -> dict[str, Any]:
    """The `error` message for an exception raised while a stream runs."""
    if isinstance(error, IbStreamError):
        code = error.code
        return error_message(stream_id, code, error.message, error.details, code in RECOVERABLE_CODES)
    return error_message(stream_id, "INTERNAL_ERROR", "internal server error", {}, True)


def complete_message(stream_id: str, reason: str, total_ticks: int, started: float, **extra: Any) -> dict[str, Any]:
    """The `complete` message; `started` is the stream's time.monotonic() at its start."""
    data = {"reason": reason, "total_ticks": total_ticks, "duration_seconds": round(time.monotonic() - started, 3)}
    return envelope("complete", stream_id, {**data, **extra})
