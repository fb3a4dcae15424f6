"""WebSocket transport of the v2 protocol: a stream's messages (from `ib_stream.live.pump`) sent as
JSON text frames, one message each; a failure of the stream becomes its last message (an `error`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

from fastapi import WebSocket

from ib_stream.api.protocol import encode
from ib_stream.api.shutdown import Shutdown
from ib_stream.live.pump import Message, guarded


async def send_stream(
    messages: AsyncGenerator[list[Message], None],
    stream_id: str,
    send: Callable[[list[Message]], Awaitable[None]],
    shutdown: Shutdown,
) -> None:
    """Send a stream's message batches with `send` until its last message (`complete` or `error`)."""
    with shutdown.running():
        async with contextlib.aclosing(guarded(messages, stream_id)) as batches:
            async for batch in batches:
                await send(batch)


async def send_json(websocket: WebSocket, messages: Iterable[Message]) -> None:
    """Send messages, each as one JSON text frame."""
    for message in messages:
        await websocket.send_text(encode(message).decode())
