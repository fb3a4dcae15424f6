"""SSE transport of the v2 protocol: event framing, the EventSourceResponse (sse-starlette) with
heartbeats that carries a stream's messages (from `ib_stream.live.pump`), and the query parameters
the SSE endpoints share.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from ib_stream.api.protocol import PROTOCOL_VERSION, encode
from ib_stream.api.shutdown import SHUTDOWN_GRACE_SECONDS, Shutdown
from ib_stream.errors import ValidationError
from ib_stream.live.messages import now_iso
from ib_stream.live.pump import Message, guarded
from ib_stream.settings import Settings

SEP = "\n"  # every field ends with \n and every event with a blank line
HEARTBEAT_MIN_SECONDS = 0.2
HEARTBEAT_MAX_SECONDS = 3600.0
MAX_TIMEOUT_SECONDS = 7 * 86400.0

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-sent events of the v2 protocol.", "content": {"text/event-stream": {}}}
}
# Shared query parameters of the SSE endpoints.
LimitQuery = Query(None, ge=1, description="End the stream with `complete` (limit_reached) after this many ticks.")
TimeoutQuery = Query(
    None, gt=0, le=MAX_TIMEOUT_SECONDS, description="End the stream with `complete` (timeout) after this many seconds."
)
HeartbeatQuery = Query(
    None,
    ge=HEARTBEAT_MIN_SECONDS,
    le=HEARTBEAT_MAX_SECONDS,
    description="Seconds between heartbeat comments (default: the api.heartbeat_seconds setting).",
)


def frame(message: dict[str, Any]) -> bytes:
    """One SSE event: `event: <type>`, `data: <json>`, then a blank line."""
    return b"event: " + message["type"].encode() + b"\ndata: " + encode(message) + b"\n\n"


def _heartbeat() -> ServerSentEvent:
    # A comment line: every SSE client ignores it, every proxy sees traffic.
    return ServerSentEvent(comment=f"heartbeat {now_iso()}", sep=SEP)


def sse_stream(
    messages: AsyncGenerator[list[Message], None], stream_id: str, heartbeat: float, shutdown: Shutdown
) -> EventSourceResponse:
    """The SSE response of a stream's message batches (each batch one write) plus a heartbeat comment
    every `heartbeat` seconds; a failure of the stream becomes its last event (an `error`)."""
    return EventSourceResponse(
        _frames(messages, stream_id, shutdown),
        ping=heartbeat,
        sep=SEP,
        ping_message_factory=_heartbeat,
        headers={"X-Stream-Protocol": "v2", "X-IB-Stream-Version": PROTOCOL_VERSION},
        shutdown_event=shutdown.event,  # sse-starlette noticing the exit itself (api.shutdown tells first)
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _frames(
    messages: AsyncGenerator[list[Message], None], stream_id: str, shutdown: Shutdown
) -> AsyncGenerator[bytes, None]:
    with shutdown.running():
        async with contextlib.aclosing(guarded(messages, stream_id)) as batches:
            async for batch in batches:
                yield b"".join(frame(m) for m in batch)


def check_limit(limit: int | None, settings: Settings) -> int | None:
    """`limit` within 1..api.max_limit, or a 422 naming it."""
    if limit is not None and limit > settings.api.max_limit:
        raise ValidationError("limit", limit, f"must be at most {settings.api.max_limit} (api.max_limit)")
    return limit


def heartbeat_seconds(heartbeat: float | None, settings: Settings) -> float:
    return heartbeat if heartbeat is not None else settings.api.heartbeat_seconds
