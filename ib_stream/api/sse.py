"""SSE transport of the v2 protocol: event framing, the EventSourceResponse (sse-starlette) with
heartbeats, and the live pump that turns a subscription into framed tick events, honouring
`limit` and `timeout` and ending with `complete` or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anyio
from fastapi import Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from ib_stream.api.protocol import (
    PROTOCOL_VERSION,
    complete_message,
    encode,
    error_from_exception,
    now_iso,
    tick_message,
)
from ib_stream.domain import StreamKey
from ib_stream.errors import IbStreamError, SlowConsumerError, ValidationError
from ib_stream.settings import Settings
from ib_stream.streaming import LiveItem, Subscription

log = logging.getLogger(__name__)
SEP = "\n"  # every field ends with \n and every event with a blank line
HEARTBEAT_MIN_SECONDS = 0.2
HEARTBEAT_MAX_SECONDS = 3600.0
MAX_TIMEOUT_SECONDS = 7 * 86400.0
SHUTDOWN_GRACE_SECONDS = 2.0  # time a stream gets to send `complete` (server_shutdown) when the service stops

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


class Shutdown:
    """The service stopping, as one stream sees it: sse-starlette sets `event` (then allows
    SHUTDOWN_GRACE_SECONDS before cancelling), and the stream's waits race it so the stream can
    end with `complete` (server_shutdown) instead of being cut off."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self._waiter: asyncio.Future[None] | None = None

    def _stop(self) -> asyncio.Future[None]:
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self.event.wait())
        return self._waiter

    async def get(self, sub: Subscription, timeout: float | None) -> list[LiveItem] | None:
        """`sub.get(timeout)`, or None when the service is stopping first."""
        if self.event.is_set():
            return None
        get = asyncio.ensure_future(sub.get(timeout))
        try:
            waiters: set[asyncio.Future[Any]] = {get, self._stop()}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()  # nothing is lost: items stay queued until the next get
        return get.result() if get.done() and not get.cancelled() else None

    async def sleep(self, seconds: float) -> bool:
        """Sleep; return True when the service started stopping meanwhile."""
        await asyncio.wait({self._stop()}, timeout=seconds)
        return self.event.is_set()

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()


def event_stream(
    chunks: AsyncIterator[bytes],
    heartbeat: float,
    shutdown: Shutdown | None = None,
    headers: Mapping[str, str] | None = None,
) -> EventSourceResponse:
    """The SSE response: framed chunks plus a heartbeat comment every `heartbeat` seconds."""
    return EventSourceResponse(
        chunks,
        ping=heartbeat,
        sep=SEP,
        ping_message_factory=_heartbeat,
        headers={"X-Stream-Protocol": "v2", "X-IB-Stream-Version": PROTOCOL_VERSION, **(headers or {})},
        shutdown_event=shutdown.event if shutdown is not None else None,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS if shutdown is not None else 0,
    )


def event_stream_guarded(
    chunks: AsyncGenerator[bytes, None], stream_id: str, heartbeat: float, shutdown: Shutdown | None = None
) -> EventSourceResponse:
    """`event_stream` whose stream ends with an `error` event when the generator fails."""
    return event_stream(_guarded(chunks, stream_id, shutdown), heartbeat, shutdown)


async def _guarded(
    chunks: AsyncGenerator[bytes, None], stream_id: str, shutdown: Shutdown | None
) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(chunks):
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as e:  # an error during a stream becomes its last event
            if not isinstance(e, IbStreamError):
                log.exception("stream %s failed", stream_id)
            yield frame(error_from_exception(stream_id, e))
        finally:
            if shutdown is not None:
                shutdown.close()


def check_limit(limit: int | None, settings: Settings) -> int | None:
    """`limit` within 1..api.max_limit, or a 422 naming it."""
    if limit is not None and limit > settings.api.max_limit:
        raise ValidationError("limit", limit, f"must be at most {settings.api.max_limit} (api.max_limit)")
    return limit


def heartbeat_seconds(heartbeat: float | None, settings: Settings) -> float:
    return heartbeat if heartbeat is not None else settings.api.heartbeat_seconds


async def pump_live(
    sub: Subscription,
    stream_id: str,
    *,
    limit: int | None,
    timeout: float | None,
    skip_through: Mapping[StreamKey, int] | None = None,
    queue_size_after_first_drain: int | None = None,
    shutdown: Shutdown | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield framed tick events from `sub` until `limit` ticks, `timeout` seconds, a slow-consumer
    disconnect (an `error`) or the service stopping; the last event is always `complete` or `error`.

    Ticks whose seq is <= `skip_through[stream]` were already sent (the history of a buffer stream)
    and are skipped. The caller unsubscribes.
    """
    started = time.monotonic()
    deadline = started + timeout if timeout is not None else None
    total = 0
    while True:
        wait = None
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                yield frame(complete_message(stream_id, "timeout", total, started))
                return
        try:
            got = await (shutdown.get(sub, wait) if shutdown is not None else sub.get(wait))
        except SlowConsumerError as e:
            yield frame(error_from_exception(stream_id, e))
            return
        if got is None:
            yield frame(complete_message(stream_id, "server_shutdown", total, started))
            return
        items = got
        if queue_size_after_first_drain is not None:
            sub.resize(queue_size_after_first_drain)
            queue_size_after_first_drain = None
        if not items:
            if sub.closed:
                yield frame(complete_message(stream_id, "server_shutdown", total, started))
                return
            continue
        stamp = now_iso()
        parts = []
        for stream, record in items:
            if skip_through is not None and record["seq"] <= skip_through.get(stream, 0):
                continue
            parts.append(frame(tick_message(stream_id, stream, record, stamp)))
            total += 1
            if limit is not None and total >= limit:
                parts.append(frame(complete_message(stream_id, "limit_reached", total, started)))
                yield b"".join(parts)
                return
        if parts:
            yield b"".join(parts)
