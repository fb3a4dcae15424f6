"""Routes: history joined to the live stream (`/v2/stream/{id}/buffer`, seamless by seq), the /v3
buffer query for IB-Studies (history as one JSON document, expanded or compact), and the protocol
and holdings descriptions (`/v2/info`, `/v3/info`, `/v3/buffer/{id}/info`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ib_stream.api.params import parse_duration, parse_time
from ib_stream.api.protocol import (
    PROTOCOL_VERSION,
    V3_FIELD_MAPPING,
    contract_info,
    new_stream_id,
    parse_stream_tick_types,
    protocol_description,
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
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import ContractNotFoundError, QueryError, ValidationError
from ib_stream.live.messages import info_message, iso_us, tick_encoder, tick_messages
from ib_stream.live.pump import Message, SlowConsumer, pump
from ib_stream.live.reader import join_live, read_merged
from ib_stream.store.tickstore import TickStore

router = APIRouter(tags=["buffer"])
_HISTORY_CHUNK = 1000  # historical events per write
_HISTORY_QUEUE_FACTOR = 10  # the live queue may grow this much larger while the history is being sent
T = TypeVar("T")


async def off_loop(state: ServiceState, fn: Callable[[], T]) -> T:
    """Run blocking store work (files, SQLite) on the store's executor."""
    return await asyncio.get_running_loop().run_in_executor(state.store.executor, fn)


async def history_contract(state: ServiceState, contract_id: int) -> tuple[Contract | None, tuple[TickType, ...]]:
    """The configured contract and its tick types, or for a contract that is only stored (imported,
    no longer recorded) None and the stored types; CONTRACT_NOT_FOUND when neither."""
    contract = state.streaming.contracts.get(contract_id)
    if contract is not None:
        return contract, contract.tick_types
    stored = {s for s in state.store.buffer.streams() if s.contract_id == contract_id}
    stored |= {s for s in await off_loop(state, state.store.index.streams) if s.contract_id == contract_id}
    if not stored:
        known = ", ".join(str(c) for c in sorted(state.streaming.contracts))
        raise ContractNotFoundError(
            f"contract_id {contract_id} is neither configured nor stored (configured: {known})",
            details={"field": "contract_id", "value": contract_id},
        )
    return None, tuple(sorted({s.tick_type for s in stored}, key=list(TickType).index))


def check_range(state: ServiceState, start_ns: int, end_ns: int, field: str = "start_time") -> None:
    """Refuse ranges longer than api.max_range_days (naming the field)."""
    days = (end_ns - start_ns) / NS_PER_SECOND / 86400
    if days > state.settings.api.max_range_days:
        raise QueryError(
            f"{field} {iso_us(start_ns)} asks for {days:.1f} days; at most {state.settings.api.max_range_days:g} "
            "days per request (api.max_range_days)",
            details={"field": field, "value": iso_us(start_ns), "max_range_days": state.settings.api.max_range_days},
        )


# ---- history then live ------------------------------------------------------------------------------
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
        start_ns = parse_time(start_time, "start_time")
    else:
        start_ns = now - parse_duration(buffer_duration, "buffer_duration")
    check_range(state, start_ns, now)
    limit = check_limit(limit, state.settings)
    stream_id = new_stream_id(contract_id, types[0].value if len(types) == 1 else "multi")
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
                info_message(
                    stream_id,
                    "buffer_start",
                    contract_id=contract_id,
                    tick_types=[t.value for t in types],
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
                info_message(
                    stream_id,
                    "live_start",
                    contract_id=contract_id,
                    tick_types=[t.value for t in types],
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
def query_messages(
    store: TickStore, streams: Sequence[StreamKey], start_ns: int, end_ns: int, limit: int, raw: bool
) -> list[dict[str, Any]]:
    """Ticks of [start, end) of the streams, merged in time order, as /v3 messages (at most `limit`)."""
    return [
        v3_message(stream, record, raw)
        for stream, record in read_merged(store.engine, streams, start_ns, end_ns)[:limit]
    ]


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
    _, default_types = await history_contract(state, contract_id)
    types = parse_stream_tick_types(tick_types) if tick_types is not None else default_types
    now = state.clock.now_ns()
    end_ns = parse_time(end_time, "end_time") if end_time is not None else None
    start_ns = parse_time(start_time, "start_time") if start_time is not None else None
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
    check_range(state, start_ns, end_ns)
    limit = check_limit(limit, state.settings) or state.settings.api.max_limit
    streams = [StreamKey(contract_id, t) for t in types]
    s, e, n = start_ns, end_ns, limit
    messages = await off_loop(state, lambda: query_messages(state.store, streams, s, e, n, raw))
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
def holdings(store: TickStore, streams: Sequence[StreamKey]) -> list[dict[str, Any]]:
    """Per stream: ticks held (catalog + hot tier, each tick once), first/last event time, last seq."""
    archived_seqs = store.index.archived_seqs()
    out = []
    for stream in streams:
        files = store.index.files(stream)
        hot = store.buffer.hot(stream)
        chunks = hot.snapshot().chunks if hot is not None else ()
        archived = sum(f.tick_count for f in files)
        # The catalog holds every seq <= archived_seq; the hot tier is a contiguous seq suffix.
        hot_only = 0
        if chunks:
            below = max(chunks[0].first_seq - 1, archived_seqs.get(stream, 0))
            hot_only = max(0, chunks[-1].last_seq - below)
        firsts = [f.start_time for f in files] + [c.min_ts for c in chunks]
        lasts = [f.end_time for f in files] + [c.max_ts for c in chunks]
        if not firsts:
            continue
        out.append(
            {
                "contract_id": stream.contract_id,
                "tick_type": stream.tick_type.value,
                "tick_count": archived + hot_only,
                "archived_ticks": archived,
                "archive_files": len(files),
                "hot_ticks": sum(c.table.num_rows for c in chunks),
                "first_time": iso_us(min(firsts)),
                "last_time": iso_us(max(lasts)),
                "last_seq": max([f.last_seq for f in files] + [c.last_seq for c in chunks]),
            }
        )
    return out


async def held_streams(state: ServiceState, contract_id: int | None = None) -> list[dict[str, Any]]:
    def work() -> list[dict[str, Any]]:
        streams = set(state.store.index.streams()) | set(state.store.buffer.streams())
        chosen = sorted(s for s in streams if contract_id is None or s.contract_id == contract_id)
        return holdings(state.store, chosen)

    return await off_loop(state, work)


@router.get("/v3/buffer/{contract_id}/info")
async def v3_buffer_info(state: State, contract_id: int) -> dict[str, Any]:
    """What is held for a contract, per tick type (catalog + hot tier)."""
    contract, types = await history_contract(state, contract_id)
    return {
        "contract_id": contract_id,
        "contract_info": contract_info(contract) if contract is not None else None,
        "configured": contract is not None,
        "tick_types": [t.value for t in types],
        "timestamp": iso_us(state.clock.now_ns()),
        "streams": await held_streams(state, contract_id),
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
        "streams": await held_streams(state),
    }


@router.get("/v3/info")
async def v3_info(state: State) -> dict[str, Any]:
    """The /v3 buffer message format (field mapping) and what is held."""
    return {
        "version": "3.0",
        "protocol_version": PROTOCOL_VERSION,
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
        },
        "server_time": iso_us(state.clock.now_ns()),
        "contracts": _contracts(state),
        "streams": await held_streams(state),
    }
