"""Routes: live SSE streams of the v2 protocol (one tick type or several) and the latest tick of
each type from memory (`/v2/latest`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ib_stream.api.protocol import contract_info, parse_stream_tick_types, tick_stream_id
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
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import InvalidTickTypeError
from ib_stream.live.messages import now_iso, streams_info, tick_data, tick_encoder
from ib_stream.live.pump import Message, pump

router = APIRouter(tags=["live"])


@router.get("/v2/stream/{contract_id}/live/{tick_type}", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def live_stream_one(
    state: State,
    contract_id: int,
    tick_type: str,
    limit: int | None = LimitQuery,
    timeout: float | None = TimeoutQuery,
    heartbeat: float | None = HeartbeatQuery,
) -> EventSourceResponse:
    """Stream one tick type of a contract live (SSE), from now on."""
    types = parse_stream_tick_types(tick_type, "tick_type")
    if len(types) != 1:
        raise InvalidTickTypeError("tick_type", tick_type, "must be one tick type (use /live?tick_types=a,b)")
    return _live(state, contract_id, types, limit, timeout, heartbeat)


@router.get("/v2/stream/{contract_id}/live", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def live_stream_many(
    state: State,
    contract_id: int,
    tick_types: str = Query(..., description="Comma list, e.g. bid_ask,last (PascalCase BidAsk, Last, ... too)."),
    limit: int | None = LimitQuery,
    timeout: float | None = TimeoutQuery,
    heartbeat: float | None = HeartbeatQuery,
) -> EventSourceResponse:
    """Stream several tick types of a contract live (SSE) on one connection, from now on."""
    return _live(state, contract_id, parse_stream_tick_types(tick_types), limit, timeout, heartbeat)


def _live(
    state: ServiceState,
    contract_id: int,
    types: tuple[TickType, ...],
    limit: int | None,
    timeout: float | None,
    heartbeat: float | None,
) -> EventSourceResponse:
    contract = state.streaming.require_contract(contract_id)
    limit = check_limit(limit, state.settings)
    stream_id = tick_stream_id(contract_id, types)
    beat = heartbeat_seconds(heartbeat, state.settings)
    shutdown = Shutdown()

    async def messages() -> AsyncGenerator[list[Message], None]:
        # Subscribing inside the generator: a response that never starts (HEAD, early disconnect)
        # leaves no subscription behind.
        sub = state.streaming.subscribe(contract_id, types)
        try:
            subscribed = streams_info(
                stream_id,
                "subscribed",
                contract_id,
                types,
                contract_info=contract_info(contract),
                stream_config={"limit": limit, "timeout_seconds": timeout, "heartbeat_seconds": beat},
            )
            live = pump(
                sub, stream_id, tick_encoder(stream_id), limit=limit, timeout=timeout, shutdown=shutdown.event,
                opening=[subscribed],
            )  # fmt: skip
            async with contextlib.aclosing(live):
                async for batch in live:
                    yield batch
        finally:
            state.streaming.unsubscribe(sub)

    return sse_stream(messages(), stream_id, beat, shutdown)


@router.get("/v2/latest/{contract_id}")
async def latest(
    state: State,
    contract_id: int,
    tick_types: str | None = Query(None, description="Comma list (default: the contract's recorded types)."),
) -> dict[str, Any]:
    """The most recent tick of each type, from memory (null for a type with none yet)."""
    contract = state.streaming.require_contract(contract_id)
    types = parse_stream_tick_types(tick_types) if tick_types is not None else contract.tick_types
    found = state.streaming.latest(contract_id, types)
    return {
        "contract_id": contract_id,
        "symbol": contract.symbol,
        "timestamp": now_iso(),
        "tick_types": [t.value for t in types],
        "ticks": {
            t.value: tick_data(StreamKey(contract_id, t), record) if record is not None else None
            for t, record in found.items()
        },
    }
