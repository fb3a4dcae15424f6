"""Routes: replay of a stored range over the live protocol (`/v2/replay/{id}`, SSE): the same tick
envelope as live with the original timestamps in `data`, paced at `speed`× real time (0 = as fast
as possible), between an `info` replay_start and a `complete` (replay_complete).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ib_stream.api.params import check_range
from ib_stream.api.protocol import parse_stream_tick_types, tick_stream_id
from ib_stream.api.shutdown import Shutdown
from ib_stream.api.sse import SSE_RESPONSES, HeartbeatQuery, LimitQuery, check_limit, heartbeat_seconds, sse_stream
from ib_stream.api.state import ServiceState, State
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey
from ib_stream.errors import QueryError
from ib_stream.live.messages import complete_message, now_iso, streams_info, tick_message
from ib_stream.live.pump import Message
from ib_stream.times import iso_us, parse_http_time

router = APIRouter(tags=["replay"])
MAX_SPEED = 1_000_000.0
_CHUNK = 500  # events per write when nothing is due later
_MIN_SLEEP = 0.002  # shorter waits are merged into the next write
# The range is read window by window (memory stays bounded); a window grows while it is sparse.
_FIRST_WINDOW_NS = 60 * NS_PER_SECOND
_MAX_WINDOW_NS = 86_400 * NS_PER_SECOND
_SPARSE_TICKS = 20_000
_DENSE_TICKS = 200_000


async def windows(
    state: ServiceState, streams: Sequence[StreamKey], start_ns: int, end_ns: int
) -> AsyncGenerator[list[tuple[StreamKey, dict]], None]:
    """The range's ticks merged in time order, one window at a time (read off the event loop)."""
    size = _FIRST_WINDOW_NS
    at = start_ns
    while at < end_ns:
        until = min(end_ns, at + size)
        items = await state.read_merged(streams, at, until)
        if items:
            yield items
        if len(items) < _SPARSE_TICKS:
            size = min(size * 4, _MAX_WINDOW_NS)
        elif len(items) > _DENSE_TICKS:
            size = max(size // 2, NS_PER_SECOND)
        at = until


async def paced_events(
    state: ServiceState,
    stream_id: str,
    streams: Sequence[StreamKey],
    start_ns: int,
    end_ns: int,
    speed: float,
    limit: int | None,
    shutdown: Shutdown,
) -> AsyncGenerator[list[Message], None]:
    """Tick messages of the range, each written when due at `speed`× the original pace (from
    the first tick), then `complete` (replay_complete, limit_reached or server_shutdown)."""
    started = time.monotonic()
    first_ts: int | None = None
    total = 0
    parts: list[Message] = []
    async with contextlib.aclosing(windows(state, streams, start_ns, end_ns)) as chunks:
        async for items in chunks:
            for stream, record in items:
                ts = record["ts"]
                if first_ts is None:
                    first_ts = ts
                if speed > 0:
                    delay = started + (ts - first_ts) / NS_PER_SECOND / speed - time.monotonic()
                    if delay > _MIN_SLEEP:
                        if parts:
                            yield parts
                            parts = []
                        if await shutdown.sleep(delay):
                            yield [complete_message(stream_id, "server_shutdown", total, started)]
                            return
                parts.append(tick_message(stream_id, stream, record, now_iso()))
                total += 1
                if limit is not None and total >= limit:
                    parts.append(complete_message(stream_id, "limit_reached", total, started))
                    yield parts
                    return
                if len(parts) >= _CHUNK:
                    yield parts
                    parts = []
    parts.append(complete_message(stream_id, "replay_complete", total, started))
    yield parts


@router.get("/v2/replay/{contract_id}", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def replay(
    state: State,
    contract_id: int,
    start_time: str = Query(..., description="Start of the range (ISO-8601 with offset or Z)."),
    end_time: str = Query(..., description="End of the range, exclusive (ISO-8601 with offset or Z)."),
    tick_types: str | None = Query(None, description="Comma list (default: the contract's types)."),
    speed: float = Query(1.0, ge=0, le=MAX_SPEED, description="Multiple of real time; 0 = as fast as possible."),
    limit: int | None = LimitQuery,
    heartbeat: float | None = HeartbeatQuery,
) -> EventSourceResponse:
    """Re-play a stored range over SSE in the live envelope, at `speed`× the original pace."""
    _, default_types = await state.history_contract(contract_id)
    types = parse_stream_tick_types(tick_types) if tick_types is not None else default_types
    start_ns = parse_http_time(start_time, "start_time")
    end_ns = parse_http_time(end_time, "end_time")
    if end_ns <= start_ns:
        raise QueryError(
            f"end_time {end_time} is not after start_time {start_time}",
            details={"field": "end_time", "value": end_time, "start_time": start_time},
        )
    check_range(state.settings.api, start_ns, end_ns)
    limit = check_limit(limit, state.settings)
    streams = [StreamKey(contract_id, t) for t in types]
    stream_id = tick_stream_id(contract_id, types)
    shutdown = Shutdown()

    async def messages() -> AsyncGenerator[list[Message], None]:
        yield [
            streams_info(
                stream_id,
                "replay_start",
                contract_id,
                types,
                start_time=iso_us(start_ns),
                end_time=iso_us(end_ns),
                speed=speed,
                limit=limit,
            )
        ]
        events = paced_events(state, stream_id, streams, start_ns, end_ns, speed, limit, shutdown)
        async with contextlib.aclosing(events):
            async for batch in events:
                yield batch

    return sse_stream(messages(), stream_id, heartbeat_seconds(heartbeat, state.settings), shutdown)
