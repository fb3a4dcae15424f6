"""Routes: history joined to the live stream (`/v2/stream/{id}/buffer`, seamless by seq), the /v3
buffer query for IB-Studies (history as one JSON document, expanded or compact), and the protocol
and holdings descriptions (`/v2/info`, `/v3/info`, `/v3/buffer/{id}/info`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ib_stream.api.params import check_range, parse_duration
from ib_stream.api.protocol import (
    PROTOCOL_VERSION,
    V3_FIELD_MAPPING,
    contract_info,
    parse_stream_tick_types,
    protocol_description,
    tick_stream_id,
    v3_message,
)
from ib_stream.api.shutdown import Shutdown
from ib_stream.api.sse import (
    SSE_RESPONSES,
    HeartbeatQuery,
    LimitQuery,
    TimeoutQuery,
    check_limit,
    heartbeat_seconds,
    sse_stream,
)
from ib_stream.api.state import ServiceState, State
from ib_stream.domain import StreamKey
from ib_stream.errors import QueryError, ValidationError
from ib_stream.live.messages import info_message, streams_info, tick_encoder, tick_messages
from ib_stream.live.pump import Message, SlowConsumer, pump
from ib_stream.live.reader import join_live
from ib_stream.streaming import LiveItem
from ib_stream.times import iso_us, parse_http_time

router = APIRouter(tags=["buffer"])
_HISTORY_CHUNK = 1000  # historical events per write
_HISTORY_QUEUE_FACTOR = 10  # the live queue may grow this much larger while the history is being sent


@router.get("/v2/stream/{contract_id}/buffer", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def buffer_stream(
    state: State,
    contract_id: int,
    tick_types: str | None = Query(None, description="Comma list (default: the contract's recorded types)."),
    buffer_duration: str = Query("1h", description="History to send first: 30s, 15m, 1h, 1d, ..."),
    start_time: str | None = Query(None, description="Send history from this time instead (ISO-8601 with offset)."),
    limit: int | None = LimitQuery,
    timeout: float | None = TimeoutQuery,
    heartbeat: float | None = HeartbeatQuery,
) -> EventSourceResponse:
    """History (since start_time or for buffer_duration) then the live stream, with no gap and no
    duplicate at the seam; `limit` and `timeout` apply to the live part."""
    contract = state.streaming.require_contract(contract_id)
    types = parse_stream_tick_types(tick_types) if tick_types is not None else contract.tick_types
    now = state.clock.now_ns()
    if start_time is not None:
        start_ns = parse_http_time(start_time, "start_time")
    else:
        start_ns = now - parse_duration(buffer_duration, "buffer_duration")
    check_range(state.settings.api, start_ns, now)
    limit = check_limit(limit, state.settings)
    stream_id = tick_stream_id(contract_id, types)
    beat = heartbeat_seconds(heartbeat, state.settings)
    shutdown = Shutdown()
    queue_size = state.streaming.queue_size

    async def messages() -> AsyncGenerator[list[Message], None]:
        # Subscribed first, so every tick made durable during the history read reaches the queue,
        # which may grow larger while the history is sent.
        join = await join_live(state.streaming, contract_id, types, start_ns, queue_size * _HISTORY_QUEUE_FACTOR)
        try:
            items, through = join.history.items, join.history.through
            yield [
                streams_info(
                    stream_id,
                    "buffer_start",
                    contract_id,
                    types,
                    contract_info=contract_info(contract),
                    buffer_duration=None if start_time is not None else buffer_duration,
                    start_time=iso_us(start_ns),
                    buffer_message_count=len(items),
                )
            ]
            for i in range(0, len(items), _HISTORY_CHUNK):
                yield list(tick_messages(stream_id, items[i : i + _HISTORY_CHUNK], iso_us(state.clock.now_ns())))
            yield [
                info_message(stream_id, "buffer_complete", contract_id=contract_id, buffer_message_count=len(items)),
                streams_info(
                    stream_id,
                    "live_start",
                    contract_id,
                    types,
                    after_seq={s.tick_type.value: seq for s, seq in through.items()},
                    stream_config={"limit": limit, "timeout_seconds": timeout, "heartbeat_seconds": beat},
                ),
            ]
            live = pump(
                join, stream_id, tick_encoder(stream_id), limit=limit, timeout=timeout, shutdown=shutdown.event,
                slow_consumer=SlowConsumer(settle_queue=queue_size),
            )  # fmt: skip
            async with contextlib.aclosing(live):
                async for batch in live:
                    yield batch
        finally:
            join.close()

    return sse_stream(messages(), stream_id, beat, shutdown)


# ---- /v3 buffer query ------------------------------------------------------------------------------------
def query_messages(items: Sequence[LiveItem], limit: int, raw: bool) -> list[dict[str, Any]]:
    """The first `limit` merged ticks as /v3 messages."""
    return [v3_message(stream, record, raw) for stream, record in items[:limit]]


@router.get("/v3/buffer/{contract_id}/query")
async def v3_buffer_query(
    state: State,
    contract_id: int,
    tick_types: str | None = Query(None, description="Comma list (default: the contract's types)."),
    start_time: str | None = Query(None, description="ISO-8601 with offset; with end_time, the range asked for."),
    end_time: str | None = Query(None, description="ISO-8601 with offset (exclusive)."),
    buffer_duration: str = Query("1h", description="The range when start_time and end_time are not both given."),
    limit: int | None = Query(None, ge=1, description="At most this many messages (default: api.max_limit)."),
    raw: bool = Query(False, description="Compact v3 field names (ts, st, cid, tt, rid, bp, ...)."),
    format: str = Query("json", description="Only json."),
) -> dict[str, Any]:
    """History of a contract merged in time order, in the /v3 message format IB-Studies reads."""
    if format != "json":
        raise ValidationError("format", format, "is not supported (use json)")
    _, default_types = await state.history_contract(contract_id)
    types = parse_stream_tick_types(tick_types) if tick_types is not None else default_types
    now = state.clock.now_ns()
    end_ns = parse_http_time(end_time, "end_time") if end_time is not None else None
    start_ns = parse_http_time(start_time, "start_time") if start_time is not None else None
    if start_ns is None or end_ns is None:
        duration = parse_duration(buffer_duration, "buffer_duration")
        if start_ns is not None:
            end_ns = now
        else:
            end_ns = end_ns if end_ns is not None else now
            start_ns = end_ns - duration
    if end_ns <= start_ns:
        raise QueryError(
            f"end_time {iso_us(end_ns)} is not after start_time {iso_us(start_ns)}",
            details={"field": "end_time", "value": iso_us(end_ns), "start_time": iso_us(start_ns)},
        )
    check_range(state.settings.api, start_ns, end_ns)
    limit = check_limit(limit, state.settings) or state.settings.api.max_limit
    items = await state.read_merged([StreamKey(contract_id, t) for t in types], start_ns, end_ns)
    messages = await state.run(query_messages, items, limit, raw)
    return {
        "contract_id": contract_id,
        "tick_types": [t.value for t in types],
        "format": "json",
        "time_range": {"start": iso_us(start_ns), "end": iso_us(end_ns)},
        "total_messages": len(messages),
        "raw_format": raw,
        "messages": messages,
    }


# ---- what is held ----------------------------------------------------------------------------------------
@router.get("/v3/buffer/{contract_id}/info")
async def v3_buffer_info(state: State, contract_id: int) -> dict[str, Any]:
    """What is held for a contract, per tick type (catalog + hot tier)."""
    contract, types = await state.history_contract(contract_id)
    return {
        "contract_id": contract_id,
        "contract_info": contract_info(contract) if contract is not None else None,
        "configured": contract is not None,
        "tick_types": [t.value for t in types],
        "timestamp": iso_us(state.clock.now_ns()),
        "streams": await state.holdings(contract_id),
    }


def _contracts(state: ServiceState) -> list[dict[str, Any]]:
    return [
        {"contract_id": c.con_id, **contract_info(c), "tick_types": [t.value for t in c.tick_types]}
        for c in state.contracts
    ]


@router.get("/v2/info")
async def v2_info(state: State) -> dict[str, Any]:
    """The v2 streaming protocol (version, tick types, endpoints, message types) and what is held."""
    api = state.settings.api
    return {
        **protocol_description(),
        "server_time": iso_us(state.clock.now_ns()),
        "heartbeat_seconds": api.heartbeat_seconds,
        "limits": {
            "max_limit": api.max_limit,
            "max_range_days": api.max_range_days,
            "subscriber_queue_size": api.subscriber_queue_size,
        },
        "contracts": _contracts(state),
        "streams": await state.holdings(),
    }


@router.get("/v3/info")
async def v3_info(state: State) -> dict[str, Any]:
    """The /v3 buffer message format (field mapping) and what is held."""
    return {
        "version": "3.0",
        "description": "History for IB-Studies: ticks of a range merged in time order, expanded or compact; "
        "the files the store keeps (Parquet archive, JSON-lines buffer)",
        "protocol_version": PROTOCOL_VERSION,
        "optimizations": {
            "archive": "Parquet, zstd, hourly partitions sorted by (ts, seq); reads only the row groups a range needs",
            "buffer": "JSON lines in 15-minute segments, the recent ticks also in memory",
            "compact_messages": "raw=true: short field names (ts, st, cid, tt, rid, bp, bs, ap, as, p, s, mp)",
        },
        "formats": ["json"],
        "field_mapping": V3_FIELD_MAPPING,
        "expanded_fields": [
            "contract_id",
            "tick_type",
            "ib_timestamp",
            "ib_timestamp_iso",
            "system_timestamp",
            "system_timestamp_iso",
            "request_id",
            "bid_price",
            "bid_size",
            "ask_price",
            "ask_size",
            "price",
            "size",
            "mid_point",
        ],
        "endpoints": {
            "/v3/buffer/{contract_id}/query": "history merged in time order (raw=true: compact names)",
            "/v3/buffer/{contract_id}/info": "what is held for a contract",
            "/v3/storage/stats": "files, sizes and ticks held, and the optimization summary",
            "/v3/storage/files/{contract_id}": "the files of a contract, newest first (tick_type=, format=)",
        },
        "server_time": iso_us(state.clock.now_ns()),
        "contracts": _contracts(state),
        "streams": await state.holdings(),
    }
