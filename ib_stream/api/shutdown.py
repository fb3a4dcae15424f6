"""The service stopping, as every live stream sees it, SSE and WebSocket alike: a running stream holds
a `Shutdown`, and when uvicorn starts shutting down — before it closes any connection — each stream of
its event loop is told (`event` is set) and given up to SHUTDOWN_GRACE_SECONDS to end with `complete`
(server_shutdown). uvicorn closes WebSockets at once (code 1012) when it shuts down, so a stream told
any later could not say goodbye; sse-starlette also sets the event of an SSE stream when it notices
the exit itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Iterator

import anyio
import uvicorn

SHUTDOWN_GRACE_SECONDS = 2.0  # time the streams get to send `complete` (server_shutdown) when the service stops
_POLL_SECONDS = 0.02

# Per event loop (one per server): the streams running on it, and whether it is shutting down.
_running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[Shutdown]] = weakref.WeakKeyDictionary()
_stopping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_installed = False


class Shutdown:
    """The service stopping, as one stream sees it: `event` is set when it starts to (the stream's
    pump then ends with `complete` server_shutdown)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self._waiter: asyncio.Future[None] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold this around a running stream: the service stopping meanwhile sets `event`, and
        shutting down waits (a bounded time) until the stream ended."""
        _drain_before_uvicorn_shutdown()
        loop = asyncio.get_running_loop()
        streams = _running.setdefault(loop, set())
        streams.add(self)
        if loop in _stopping:
            self.event.set()
        try:
            yield
        finally:
            streams.discard(self)
            self.close()

    async def sleep(self, seconds: float) -> bool:
        """Sleep; return True when the service started stopping meanwhile."""
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self.event.wait())
        await asyncio.wait({self._waiter}, timeout=seconds)
        return self.event.is_set()

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()


async def drain(grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Tell every stream running on this event loop that the service stops and wait until each has
    ended, at most `grace` seconds; a stream that starts meanwhile is told at once."""
    loop = asyncio.get_running_loop()
    _stopping.add(loop)
    streams = _running.get(loop, set())
    for stream in list(streams):
        stream.event.set()
    deadline = loop.time() + grace
    while streams and loop.time() < deadline:
        await asyncio.sleep(_POLL_SECONDS)


def is_stopping(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the server of this event loop is shutting down (safe to ask from any thread)."""
    return loop in _stopping


def install() -> None:
    """Make uvicorn tell this module when it starts shutting down (idempotent; streams do it too)."""
    _drain_before_uvicorn_shutdown()


def _drain_before_uvicorn_shutdown() -> None:
    # uvicorn has no hook between "stop" and "close the connections": wrap its shutdown, once per
    # process (sse-starlette wraps its exit handler the same way).
    global _installed
    if _installed:
        return
    _installed = True
    close_connections = uvicorn.Server.shutdown

    async def shutdown(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            await drain()
            await close_connections(self, sockets)
        finally:
            _stopping.discard(loop)

    uvicorn.Server.shutdown = shutdown  # type: ignore[method-assign]
