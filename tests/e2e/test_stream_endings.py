"""End-to-end: every live stream ends the same way, whatever it carries and however — SSE ticks,
WebSocket ticks, SSE bars, WebSocket bars and the buffer stream (history, then live), against a real
server: `limit` ends with `complete` limit_reached after exactly that many ticks (bars), `timeout`
with `complete` timeout, a client that stops reading gets `error` SLOW_CONSUMER as its last message,
and the service stopping (SIGTERM) ends each with `complete` server_shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ib_stream.clock import NS_PER_SECOND
from tests.conftest import trade
from tests.e2e import conftest as e2e
from tests.e2e.conftest import AAPL, LiveServer
from tests.e2e.test_live_sse import SSEStream, wait_for

SMALL_BUFFER = 4096  # the receive buffer of a client that stops reading
Message = dict[str, Any]


# ---- one reader for every kind of stream ----------------------------------------------------------------
class Reader:
    """The messages of one stream, after its live part began."""

    def next(self) -> Message | None:
        """The next message of the stream, or None once the connection ended."""
        raise NotImplementedError

    def socket(self) -> socket.socket:
        raise NotImplementedError

    def read_again(self) -> None:
        """A client that stopped reading with a small receive buffer reads again, with a full-size one."""
        self.socket().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    def until_end(self) -> list[Message]:
        """Messages up to the first `complete` or `error` (or until the connection ends)."""
        got: list[Message] = []
        while (message := self.next()) is not None:
            got.append(message)
            if message["type"] in ("complete", "error"):
                return got
        return got


class SseReader(Reader):
    def __init__(self, stream: SSEStream) -> None:
        self.stream = stream

    def socket(self) -> socket.socket:
        sock: socket.socket = self.stream.response.extensions["network_stream"].get_extra_info("socket")
        return sock

    def next(self) -> Message | None:
        while (event := self.stream.next()) is not None:
            if event.data is not None:  # not a heartbeat
                return event.data
        return None


class WsReader(Reader):
    def __init__(self, ws: ClientConnection, stream_id: str | None = None) -> None:
        self.ws = ws
        self.stream_id = stream_id  # a socket of several streams: only this one's messages

    def socket(self) -> socket.socket:
        return self.ws.socket

    def next(self) -> Message | None:
        while True:
            try:
                message: Message = json.loads(self.ws.recv(timeout=15))
            except ConnectionClosed:
                return None
            if self.stream_id is None or message.get("stream_id") == self.stream_id:
                return message

    def after_pong(self) -> list[Message]:
        """This stream's messages that arrive before the answer to a ping sent now."""
        self.ws.send(json.dumps({"type": "ping", "id": "last"}))
        got = []
        while (message := json.loads(self.ws.recv(timeout=15)))["type"] != "pong":
            got.append(message)
        return [m for m in got if m.get("stream_id") == self.stream_id]


def _until(reader: Reader, done: Callable[[Message], bool]) -> None:
    while (message := reader.next()) is not None:
        if done(message):
            return
    raise AssertionError("the stream ended before its live part began")


def _is_info(status: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "info" and m["data"]["status"] == status


@contextmanager
def _sse(url: str, path: str, query: dict[str, Any], ready: str, small: bool) -> Iterator[Reader]:
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)] if small else None
    transport = httpx.HTTPTransport(socket_options=options)
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(30.0), transport=transport) as client,
        client.stream("GET", f"{path}&{urlencode(query)}") as response,
    ):
        assert response.status_code == 200, response.read()
        reader = SseReader(SSEStream(response))
        _until(reader, _is_info(ready))
        yield reader


def _ws_connect(url: str, path: str, small: bool) -> ClientConnection:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if small:  # and the client stops reading the socket once one message waits
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.connect((host, int(port)))
    # Uncompressed, so that what is sent fills the buffers as it does over SSE.
    return connect(
        f"ws://{host}:{port}{path}", sock=sock, open_timeout=10, max_queue=1 if small else 16, compression=None
    )


@contextmanager
def sse_ticks(url: str, query: dict[str, Any], small: bool = False) -> Iterator[Reader]:
    with _sse(url, f"/v2/stream/{AAPL}/live/last?heartbeat=0.5", query, "subscribed", small) as reader:
        yield reader


@contextmanager
def buffer_stream(url: str, query: dict[str, Any], small: bool = False) -> Iterator[Reader]:
    path = f"/v2/stream/{AAPL}/buffer?tick_types=last&buffer_duration=1h"
    with _sse(url, path, query, "live_start", small) as reader:
        yield reader


@contextmanager
def sse_bars(url: str, query: dict[str, Any], small: bool = False) -> Iterator[Reader]:
    path = f"/v2/stream/{AAPL}/bars?resolution=1s&obi_source=quotes&alerts=false"
    with _sse(url, path, query, "live_start", small) as reader:
        yield reader


@contextmanager
def ws_bars(url: str, query: dict[str, Any], small: bool = False) -> Iterator[Reader]:
    path = f"/v2/ws/bars/{AAPL}?resolution=1s&obi_source=quotes&alerts=false&{urlencode(query)}"
    with _ws_connect(url, path, small) as ws:
        reader = WsReader(ws)
        _until(reader, _is_info("live_start"))
        yield reader


@contextmanager
def ws_ticks(url: str, query: dict[str, Any], small: bool = False) -> Iterator[Reader]:
    config = {{"timeout": "timeout_seconds"}.get(k, k): v for k, v in query.items()}
    with _ws_connect(url, "/v2/ws/stream", small) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "connected"
        data = {"contract_id": AAPL, "tick_types": ["last"], "config": config}
        ws.send(json.dumps({"type": "subscribe", "id": "s", "data": data}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "subscribed", reply
        yield WsReader(ws, reply["data"]["streams"][0]["stream_id"])


@dataclass(frozen=True)
class Kind:
    name: str
    open: Callable[..., contextlib.AbstractContextManager[Reader]]
    counts: str  # the message type `limit` counts


KINDS = [
    Kind("sse_ticks", sse_ticks, "tick"),
    Kind("ws_ticks", ws_ticks, "tick"),
    Kind("sse_bars", sse_bars, "bar"),
    Kind("ws_bars", ws_bars, "bar"),
    Kind("buffer", buffer_stream, "tick"),
]
BY_NAME = {k.name: k for k in KINDS}
kinds = pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])


# ---- traffic --------------------------------------------------------------------------------------------
@contextmanager
def publishing(server: LiveServer, every: float = 0.03) -> Iterator[None]:
    """Trades published in batches of two, one batch every `every` seconds, while the block runs
    (each batch brings two ticks and an upsert of the forming bar)."""
    stop = threading.Event()

    async def publish() -> None:
        i = 0
        while not stop.is_set():
            now = time.time_ns()
            await server.state.streaming.publish(AAPL, "last", [trade(now, i), trade(now + 1, i + 1)], "test")
            i += 2
            await asyncio.sleep(every)

    running = asyncio.run_coroutine_threadsafe(publish(), server.loop)
    try:
        yield
    finally:
        stop.set()
        running.result(10)


def flood_until_slow(server: LiveServer) -> None:
    """Publish trades as fast as the store takes them until a subscriber was disconnected as slow; one
    second apart, so that each batch (8 trades, under the queue size) also brings 8 new one-second bars.
    The service's clock moves with them (it refuses ticks from the future)."""
    streaming = server.state.streaming
    clock = server.clock
    assert clock is not None

    async def flood() -> None:
        i, start = 0, time.time_ns()
        while streaming.stats.slow_disconnects == 0:
            assert i < 2_000_000, "no subscriber fell behind"
            batch = [trade(start + (i + k) * NS_PER_SECOND, i + k) for k in range(8)]
            clock.advance_to(batch[-1]["ts"])
            await streaming.publish(AAPL, "last", batch, "test")
            i += 8

    server.run(flood(), timeout=120)


def counted(kind: Kind, messages: list[Message]) -> list[Message]:
    return [m for m in messages if m["type"] == kind.counts]


def assert_ticks_in_order(kind: Kind, messages: list[Message]) -> None:
    if kind.counts == "tick":  # live ticks from the first, none skipped
        seqs = [m["data"]["seq"] for m in counted(kind, messages)]
        assert seqs == list(range(1, len(seqs) + 1)), seqs


# ---- tests ----------------------------------------------------------------------------------------------
@kinds
def test_limit_ends_with_complete_after_exactly_that_many(kind: Kind, live_server: LiveServer) -> None:
    with kind.open(live_server.url, {"limit": 3}) as reader, publishing(live_server):
        messages = reader.until_end()
        wait_for(lambda: live_server.state.streaming.subscriber_count == 0)  # the stream stopped listening
        # Nothing follows: an SSE stream or the bar socket ends, the tick socket stays open for more.
        after = reader.after_pong() if isinstance(reader, WsReader) and reader.stream_id else reader.next()
    assert len(counted(kind, messages)) == 3 and messages[-1]["type"] == "complete", [m["type"] for m in messages]
    assert messages[-1]["data"]["reason"] == "limit_reached" and messages[-1]["data"]["total_ticks"] == 3
    assert_ticks_in_order(kind, messages)
    assert not after, after


@kinds
def test_timeout_ends_with_complete_timeout(kind: Kind, live_server: LiveServer) -> None:
    started = time.monotonic()
    with kind.open(live_server.url, {"timeout": 1.0}) as reader:
        now = time.time_ns()
        live_server.publish(AAPL, "last", [trade(now, 1), trade(now + 1, 2)])
        messages = reader.until_end()
    elapsed = time.monotonic() - started
    done = messages[-1]
    assert done["type"] == "complete" and done["data"]["reason"] == "timeout", [m["type"] for m in messages]
    assert done["data"]["total_ticks"] == len(counted(kind, messages)) == (2 if kind.counts == "tick" else 1)
    assert 0.9 <= done["data"]["duration_seconds"] < 10 and 0.9 <= elapsed < 15
    assert_ticks_in_order(kind, messages)


@pytest.fixture
def small_queue_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A service whose subscribers may fall at most 10 ticks behind."""
    server, stop = e2e.start_server(
        e2e.test_settings(tmp_path / "storage", api={"subscriber_queue_size": 10}), clock=e2e.AheadClock()
    )
    yield server
    stop()


@kinds
def test_a_slow_consumer_gets_the_error_as_its_last_message(kind: Kind, small_queue_server: LiveServer) -> None:
    streaming = small_queue_server.state.streaming
    with kind.open(small_queue_server.url, {}, small=True) as reader:
        flood_until_slow(small_queue_server)  # while the client reads nothing
        assert streaming.stats.slow_disconnects == 1
        reader.read_again()
        messages = reader.until_end()
    error = messages[-1]
    assert error["type"] == "error", [m["type"] for m in messages[-3:]]
    assert error["data"]["code"] == "SLOW_CONSUMER" and error["data"]["recoverable"] is True
    assert error["data"]["details"] == {"max_queue": 10}
    assert counted(kind, messages) and all(m["type"] in (kind.counts, "error") for m in messages)
    assert_ticks_in_order(kind, messages)
    wait_for(lambda: streaming.subscriber_count == 0)


def test_the_service_stopping_ends_every_stream_with_complete_server_shutdown(tmp_path: Path) -> None:
    port = e2e.free_port()
    command = [sys.executable, "-m", "ib_stream.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=e2e.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), timeout=30)
        with contextlib.ExitStack() as stack:
            readers = {kind.name: stack.enter_context(kind.open(url, {})) for kind in KINDS}
            process.send_signal(signal.SIGTERM)
            ends = {name: _last(reader.until_end()) for name, reader in readers.items()}
        assert ends == dict.fromkeys(BY_NAME, ("complete", "server_shutdown"))
        output = process.communicate(timeout=15)[0].decode()
        assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert "Traceback" not in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def _last(messages: list[Message]) -> tuple[str, str | None] | str:
    if not messages:
        return "closed with no last message"
    last = messages[-1]
    return last["type"], last["data"].get("reason", last["data"].get("code"))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/info", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
