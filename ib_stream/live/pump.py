"""The live pump, one for every live stream and transport: batches of items from a source (a
subscription, a history→live join, a bar feed) become protocol messages until `limit` counted
messages, `timeout` seconds, a slow-consumer disconnect or the service stopping; the last message
is always `complete` (limit_reached, timeout, server_shutdown) or `error`.

Transports (SSE, WebSocket) only frame and send what `pump` yields; `guarded` makes a failure
inside a stream its last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ib_stream.errors import IbStreamError, SlowConsumerError
from ib_stream.live.messages import complete_message, error_from_exception

log = logging.getLogger(__name__)
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Message = dict[str, Any]


class Source(Protocol[T_co]):
    """Where a live stream's items come from (`Subscription` is one)."""

    @property
    def closed(self) -> bool:
        """Whether the source stopped for good (the service is stopping)."""
        ...

    async def get(self, timeout: float | None = None) -> Sequence[T_co]:
        """Wait up to `timeout` seconds for items; [] when none came. Raise SlowConsumerError when
        the consumer fell too far behind. Cancelling a waiting `get` must lose nothing."""
        ...

    def resize(self, max_queue: int) -> None:
        """Change how far behind the consumer may fall before it is disconnected."""
        ...


class StopSignal(Protocol):
    """The service stopping (an `anyio.Event` or `asyncio.Event`)."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class SlowConsumer:
    """What a stream does about a consumer that falls behind: the source raises SlowConsumerError when
    its queue overflows, and the stream ends with that `error` (SLOW_CONSUMER, recoverable).
    `settle_queue`: the queue size once the first live batch was taken — a stream that subscribed
    with room for the items that arrived while its history was sent shrinks back to it."""

    settle_queue: int | None = None


async def pump(
    source: Source[T],
    stream_id: str,
    encode: Callable[[Sequence[T]], Iterable[Message]],
    *,
    limit: int | None,
    timeout: float | None,
    shutdown: StopSignal | None = None,
    slow_consumer: SlowConsumer = SlowConsumer(),
    counts: str = "tick",
    opening: Iterable[Message] = (),
    started: float | None = None,
) -> AsyncGenerator[list[Message], None]:
    """Yield the stream's messages in batches: `opening` first, then `encode(batch)` of each batch of
    `source`, until `limit` messages of type `counts` (the `opening` ones too; messages beyond it,
    even of the same batch, are not sent), `timeout` seconds since `started` (default: now), a
    slow-consumer disconnect or `shutdown` / the source closing. The last message is `complete` or
    `error`. The caller closes the source."""
    started = time.monotonic() if started is None else started
    deadline = None if timeout is None else started + timeout
    total = 0

    def counted(messages: Iterable[Message]) -> tuple[list[Message], bool]:
        nonlocal total
        out = []
        for message in messages:
            out.append(message)
            if message["type"] == counts:
                total += 1
                if limit is not None and total >= limit:
                    out.append(complete_message(stream_id, "limit_reached", total, started))
                    return out, True
        return out, False

    out, done = counted(opening)
    if out:
        yield out
    if done:
        return
    settle = slow_consumer.settle_queue
    stopping = asyncio.ensure_future(shutdown.wait()) if shutdown is not None else None
    try:
        while True:
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    yield [complete_message(stream_id, "timeout", total, started)]
                    return
            try:
                items = await _next(source, wait, stopping)
            except SlowConsumerError as e:
                yield [error_from_exception(stream_id, e)]
                return
            if items is None or (not items and source.closed):
                yield [complete_message(stream_id, "server_shutdown", total, started)]
                return
            if settle is not None:
                source.resize(settle)
                settle = None
            out, done = counted(encode(items)) if items else ([], False)
            if out:
                yield out
            if done:
                return
    finally:
        if stopping is not None:
            stopping.cancel()


async def _next(source: Source[T], wait: float | None, stopping: asyncio.Future[Any] | None) -> Sequence[T] | None:
    """`source.get(wait)`, or None when the service started stopping first."""
    if stopping is None:
        return await source.get(wait)
    if stopping.done():
        return None
    get = asyncio.ensure_future(source.get(wait))
    try:
        await asyncio.wait({get, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not get.done():
            get.cancel()  # nothing is lost: a waiting get takes nothing (and the stream ends)
    return get.result() if get.done() and not get.cancelled() else None


async def guarded(batches: AsyncGenerator[list[Message], None], stream_id: str) -> AsyncGenerator[list[Message], None]:
    """The batches of a stream whose failure becomes its last message, an `error` (an unexpected
    one is logged). Closes `batches` when done."""
    async with contextlib.aclosing(batches):
        try:
            async for batch in batches:
                yield batch
        except Exception as e:
            if not isinstance(e, IbStreamError):
                log.exception("stream %s failed", stream_id)
            yield [error_from_exception(stream_id, e)]
