"""Routes: the v2 WebSocket (`/v2/ws/stream`): the server greets with `connected`; clients
`subscribe` (one stream per tick type, each with its own limit/timeout and `complete`),
`unsubscribe` and `ping`; bad messages get an `error` and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ib_stream.api.protocol import PROTOCOL_VERSION, new_stream_id, parse_stream_tick_types
from ib_stream.api.shutdown import Shutdown
from ib_stream.api.sse import MAX_TIMEOUT_SECONDS
from ib_stream.api.state import ServiceState
from ib_stream.api.websocket import send_json, send_stream
from ib_stream.domain import TickType
from ib_stream.errors import IbStreamError, NotFoundError, QueryError, ValidationError
from ib_stream.live.messages import error_from_exception, now_iso, tick_encoder
from ib_stream.live.pump import Message, pump
from ib_stream.streaming import Subscription

log = logging.getLogger(__name__)
router = APIRouter(tags=["live"])
MAX_STREAMS_PER_SOCKET = 50


class InvalidMessageError(ValidationError):
    """A WebSocket message that is not a JSON object of a known type."""

    code = "INVALID_MESSAGE"


class UnknownStreamError(NotFoundError):
    """`unsubscribe` names no open stream or subscription of this socket."""

    code = "UNKNOWN_STREAM"


class TooManyStreamsError(QueryError):
    """A `subscribe` would carry the socket past MAX_STREAMS_PER_SOCKET streams."""

    code = "TOO_MANY_STREAMS"


@dataclass(eq=False)
class WsStream:
    """One stream of a socket: one tick type of one `subscribe`."""

    stream_id: str
    request_id: Any
    tick_type: TickType
    sub: Subscription
    limit: int | None
    timeout: float | None
    shutdown: Shutdown = field(default_factory=Shutdown, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class WsSession:
    """One client socket: its streams, their tasks and the one send lock they share."""

    def __init__(self, websocket: WebSocket, state: ServiceState) -> None:
        self.ws = websocket
        self.state = state
        self.streams: dict[str, WsStream] = {}
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        """Greet, then answer client messages until the socket closes; then stop every stream."""
        try:
            await self.send(
                {
                    "type": "connected",
                    "timestamp": now_iso(),
                    "data": {
                        "version": PROTOCOL_VERSION,
                        "capabilities": {
                            "max_streams_per_connection": MAX_STREAMS_PER_SOCKET,
                            "supported_tick_types": [t.value for t in TickType],
                            "ping_interval_seconds": self.state.settings.api.heartbeat_seconds,
                        },
                    },
                }
            )
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                await self.handle(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            await self.stop(list(self.streams.values()))

    async def send(self, message: Message) -> None:
        await self.send_batch([message])

    async def send_batch(self, messages: list[Message]) -> None:
        """Send messages together: another stream's messages do not come between them."""
        async with self._send_lock:
            await send_json(self.ws, messages)

    # ---- client messages -------------------------------------------------------------------------------
    async def handle(self, text: str) -> None:
        request_id: Any = None
        try:
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise InvalidMessageError("message", text[:200], "is not JSON") from None
            if not isinstance(message, dict):
                raise InvalidMessageError("message", text[:200], "must be a JSON object")
            request_id = message.get("id")
            kind = message.get("type")
            data = message.get("data") if message.get("data") is not None else {}
            if not isinstance(data, dict):
                raise ValidationError("data", data, "must be a JSON object")
            if kind == "ping":
                await self.send(
                    {
                        "type": "pong",
                        "id": request_id,
                        "timestamp": now_iso(),
                        "data": {"server_timestamp": now_iso(), "client_timestamp": message.get("timestamp")},
                    }
                )
            elif kind == "subscribe":
                await self.subscribe(request_id, data)
            elif kind == "unsubscribe":
                await self.unsubscribe(request_id, data)
            else:
                raise InvalidMessageError("type", kind, "is not a message type (use subscribe, unsubscribe or ping)")
        except IbStreamError as e:
            await self.send({**error_from_exception("", e), "id": request_id})  # about the socket, not a stream
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise
        except Exception as e:  # a bug must not cost the client its other streams
            log.exception("websocket message %r failed", text[:200])
            await self.send({**error_from_exception("", e), "id": request_id})

    async def subscribe(self, request_id: Any, data: dict[str, Any]) -> None:
        contract_id = _contract_id(data.get("contract_id"))
        self.state.streaming.require_contract(contract_id)
        types = parse_stream_tick_types(data.get("tick_types"), "data.tick_types")
        config = data.get("config") if data.get("config") is not None else {}
        if not isinstance(config, dict):
            raise ValidationError("data.config", config, "must be a JSON object")
        limit = _limit(config.get("limit"), self.state.settings.api.max_limit)
        timeout = _timeout(config.get("timeout_seconds"))
        if len(self.streams) + len(types) > MAX_STREAMS_PER_SOCKET:
            raise TooManyStreamsError(
                f"this socket carries {len(self.streams)} streams; at most {MAX_STREAMS_PER_SOCKET} per socket",
                details={"open_streams": len(self.streams), "max": MAX_STREAMS_PER_SOCKET},
            )
        new = []
        for tick_type in types:  # subscribed before `subscribed` is sent: no tick after it is missed
            sub = self.state.streaming.subscribe(contract_id, [tick_type])
            stream = WsStream(new_stream_id(contract_id, tick_type.value), request_id, tick_type, sub, limit, timeout)
            self.streams[stream.stream_id] = stream
            new.append(stream)
        await self.send(
            {
                "type": "subscribed",
                "id": request_id,
                "timestamp": now_iso(),
                "data": {
                    "contract_id": contract_id,
                    "streams": [{"stream_id": s.stream_id, "tick_type": s.tick_type.value} for s in new],
                    "config": {"limit": limit, "timeout_seconds": timeout},
                },
            }
        )
        for stream in new:
            stream.task = asyncio.create_task(self.run_stream(stream), name=f"ws-{stream.stream_id}")

    async def unsubscribe(self, request_id: Any, data: dict[str, Any]) -> None:
        wanted = data.get("stream_id")
        if wanted is not None:
            if not isinstance(wanted, str):
                raise ValidationError("data.stream_id", wanted, "must be a string")
            chosen = [self.streams[wanted]] if wanted in self.streams else []
        elif data.get("id") is not None:
            chosen = [s for s in self.streams.values() if s.request_id == data["id"]]
            wanted = data["id"]
        else:
            raise ValidationError("data", data, "needs stream_id (one stream) or id (every stream of a subscribe)")
        if not chosen:
            raise UnknownStreamError(
                f"no open stream or subscription {wanted!r} on this socket", details={"value": wanted}
            )
        await self.stop(chosen)
        await self.send(
            {
                "type": "unsubscribed",
                "id": request_id,
                "timestamp": now_iso(),
                "data": {"streams": [s.stream_id for s in chosen]},
            }
        )

    # ---- streams ---------------------------------------------------------------------------------------
    async def run_stream(self, stream: WsStream) -> None:
        """Send the stream's ticks until its limit, timeout, a slow-consumer disconnect or shutdown."""
        sid = stream.stream_id
        shutdown = stream.shutdown.event
        live = pump(stream.sub, sid, tick_encoder(sid), limit=stream.limit, timeout=stream.timeout, shutdown=shutdown)
        try:
            await send_stream(live, sid, self.send_batch, stream.shutdown)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the socket closed; `run` cleans up
        except Exception as e:  # e.g. a message that cannot be encoded: the stream ends with an error
            log.exception("websocket stream %s failed", sid)
            with contextlib.suppress(Exception):
                await self.send(error_from_exception(sid, e))
        finally:
            self.state.streaming.unsubscribe(stream.sub)
            self.streams.pop(sid, None)

    async def stop(self, streams: list[WsStream]) -> None:
        """Stop streams: cancel their pumps (so nothing of them follows) and unsubscribe."""
        tasks = []
        for stream in streams:
            self.streams.pop(stream.stream_id, None)
            self.state.streaming.unsubscribe(stream.sub)
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
                tasks.append(stream.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _contract_id(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("data.contract_id", value, "must be an integer contract id")
    return value


def _limit(value: Any, max_limit: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_limit:
        raise ValidationError("data.config.limit", value, f"must be an integer from 1 to {max_limit}")
    return value


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise ValidationError("data.config.timeout_seconds", value, f"must be a number in (0, {MAX_TIMEOUT_SECONDS:g}]")
    return float(value)


@router.websocket("/v2/ws/stream")
async def ws_stream(websocket: WebSocket) -> None:
    """The v2 WebSocket: subscribe / unsubscribe / ping; several streams per socket."""
    await websocket.accept()
    state: ServiceState = websocket.app.state.service
    await WsSession(websocket, state).run()
