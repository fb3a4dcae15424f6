"""End-to-end: live SSE streams of the v2 protocol against a real server — order and exact values,
several types, PascalCase aliases, limit/timeout `complete`, heartbeats, raw SSE framing, errors
before streaming, unsubscribe on disconnect, slow-consumer disconnect. Also holds the small SSE
client the other e2e tests use.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ib_stream.times import iso_us
from tests.conftest import quote, trade
from tests.e2e import conftest as e2e
from tests.e2e.conftest import AAPL, LiveServer

_LINE = re.compile(rb"^(?:(?:event|data|id|retry): .*|: ?.*)$")


# ---- a small SSE client ------------------------------------------------------------------------------
@dataclass
class Event:
    """One SSE block: its event name, its parsed data and any comment lines."""

    event: str | None = None
    data: dict[str, Any] | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        return self.data["type"] if self.data else None


def parse_block(block: bytes) -> Event:
    out = Event()
    for line in block.split(b"\n"):
        assert _LINE.match(line), f"not an SSE line: {line!r}"
        if line.startswith(b":"):
            out.comments.append(line[1:].strip().decode())
        elif line.startswith(b"event: "):
            out.event = line[7:].decode()
        elif line.startswith(b"data: "):
            assert out.data is None, "one data line per event"
            out.data = json.loads(line[6:])
    if out.data is not None:
        assert out.event == out.data["type"], "the event name is the message type"
    return out


class SSEStream:
    """Reads events off a streaming httpx response, keeping the raw bytes for framing checks."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.iter_raw()
        self._pending = b""
        self.raw = bytearray()
        self.ended = False

    def next(self) -> Event | None:
        """The next event (heartbeat comments included), or None when the server ended the stream."""
        while b"\n\n" not in self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.ended = True
                assert not self._pending, f"the stream ended inside an event: {self._pending!r}"
                return None
            self.raw += chunk
            self._pending += chunk
        block, self._pending = self._pending.split(b"\n\n", 1)
        return parse_block(block)

    def until(self, done: Callable[[Event], bool], max_events: int = 100_000) -> list[Event]:
        """Events up to and including the first for which `done` is true (fails if the stream ends first)."""
        got: list[Event] = []
        for _ in range(max_events):
            event = self.next()
            assert event is not None, f"the stream ended before the expected event; got {[e.kind for e in got]}"
            got.append(event)
            if done(event):
                return got
        raise AssertionError(f"no expected event within {max_events} events")

    def rest(self, max_events: int = 100_000) -> list[Event]:
        """Every event until the server ends the stream."""
        got: list[Event] = []
        for _ in range(max_events):
            event = self.next()
            if event is None:
                return got
            got.append(event)
        raise AssertionError("the stream did not end")


@contextmanager
def sse(client: httpx.Client, path: str) -> Iterator[SSEStream]:
    with client.stream("GET", path, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEStream(response)


def is_kind(kind: str, status: str | None = None) -> Callable[[Event], bool]:
    return lambda e: e.kind == kind and (status is None or (e.data or {})["data"].get("status") == status)


def ticks(events: list[Event]) -> list[dict[str, Any]]:
    return [e.data["data"] for e in events if e.kind == "tick" and e.data]


def assert_well_framed(raw: bytes) -> None:
    """Every event ends with a blank line; every line is an SSE field or a comment."""
    assert raw.endswith(b"\n\n") and b"\r" not in raw
    for block in raw[:-2].split(b"\n\n"):
        assert block, "an empty event (three newlines in a row)"
        parse_block(block)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(15.0)) as c:
        yield c


def _expected_trade(tick: dict[str, Any]) -> dict[str, Any]:
    want = {"price": tick["price"], "size": tick["size"], "exchange": tick.get("exchange", "")}
    want |= {"conditions": tick.get("conditions", ""), "past_limit": False, "unreported": False}
    if tick.get("side") is not None:
        want["side"] = tick["side"]
    return want


# ---- tests ----------------------------------------------------------------------------------------------
def test_live_ticks_arrive_in_seq_order_with_the_published_values(
    live_server: LiveServer, client: httpx.Client
) -> None:
    now = time.time_ns()
    published = [trade(now + i * 1000, i, side=(1, -1, None)[i % 3], conditions="I" * (i % 2)) for i in range(50)]
    with sse(client, f"/v2/stream/{AAPL}/live/last?limit=50") as stream:
        head = stream.until(is_kind("info", "subscribed"))
        assert head[-1].data["data"]["tick_types"] == ["last"]
        for i in range(0, 50, 10):
            live_server.publish(AAPL, "last", published[i : i + 10])
        events = stream.rest()
        raw = bytes(stream.raw)
    got = ticks(events)
    assert [t["seq"] for t in got] == list(range(1, 51))
    stream_id = head[-1].data["stream_id"]
    assert all(e.data["stream_id"] == stream_id for e in events if e.data)
    for tick, sent in zip(got, published, strict=True):
        assert tick["contract_id"] == AAPL and tick["tick_type"] == "last" and tick["type"] == "time_sales"
        assert tick["ts"] == sent["ts"] and tick["unix_time"] == sent["ts"] // 1_000_000_000
        assert tick["timestamp"] == iso_us(sent["ts"])
        assert {k: tick.get(k) for k in _expected_trade(sent)} == _expected_trade(sent)
        assert ("side" in tick) == (sent.get("side") is not None)
    complete = events[-1].data
    assert complete["type"] == "complete" and complete["stream_id"] == stream_id
    assert complete["data"]["reason"] == "limit_reached" and complete["data"]["total_ticks"] == 50
    assert complete["data"]["duration_seconds"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", complete["timestamp"])
    assert_well_framed(raw)


def test_several_types_on_one_stream_and_pascal_case_aliases(live_server: LiveServer, client: httpx.Client) -> None:
    now = time.time_ns()
    quotes = [quote(now + i, i) for i in range(10)]
    trades = [trade(now + i, i) for i in range(10)]
    with sse(client, f"/v2/stream/{AAPL}/live?tick_types=BidAsk,Last&limit=20") as stream:
        head = stream.until(is_kind("info", "subscribed"))
        assert head[-1].data["data"]["tick_types"] == ["bid_ask", "last"]
        assert head[-1].data["stream_id"].startswith(f"{AAPL}_multi_")
        for i in range(0, 10, 5):
            live_server.publish(AAPL, "bid_ask", quotes[i : i + 5])
            live_server.publish(AAPL, "last", trades[i : i + 5])
        got = ticks(stream.rest())
    by_type = {t: [x for x in got if x["tick_type"] == t] for t in ("bid_ask", "last")}
    assert [x["seq"] for x in by_type["bid_ask"]] == list(range(1, 11))
    assert [x["seq"] for x in by_type["last"]] == list(range(1, 11))
    for tick, sent in zip(by_type["bid_ask"], quotes, strict=True):
        assert tick["type"] == "bid_ask"
        assert [tick[k] for k in ("bid_price", "ask_price", "bid_size", "ask_size")] == [
            sent[k] for k in ("bid_price", "ask_price", "bid_size", "ask_size")
        ]
    with sse(client, f"/v2/stream/{AAPL}/live/MidPoint?limit=1") as stream:
        stream.until(is_kind("info", "subscribed"))
        live_server.publish(AAPL, "mid_point", [{"ts": now, "mid_point": 101.5}])
        (tick,) = ticks(stream.rest())
    assert tick["tick_type"] == "mid_point" and tick["type"] == "midpoint" and tick["midpoint"] == 101.5


def test_limit_counts_ticks_even_inside_one_batch(live_server: LiveServer, client: httpx.Client) -> None:
    now = time.time_ns()
    with sse(client, f"/v2/stream/{AAPL}/live/last?limit=3") as stream:
        stream.until(is_kind("info", "subscribed"))
        live_server.publish(AAPL, "last", [trade(now + i, i) for i in range(10)])
        events = stream.rest()
    assert [e.kind for e in events] == ["tick", "tick", "tick", "complete"]
    assert events[-1].data["data"]["total_ticks"] == 3


def test_timeout_ends_the_stream_with_complete(live_server: LiveServer, client: httpx.Client) -> None:
    started = time.monotonic()
    with sse(client, f"/v2/stream/{AAPL}/live/bid_ask?timeout=0.6") as stream:
        stream.until(is_kind("info", "subscribed"))
        live_server.publish(AAPL, "bid_ask", [quote(time.time_ns(), i) for i in range(4)])
        events = stream.rest()
    elapsed = time.monotonic() - started
    complete = events[-1].data["data"]
    assert events[-1].kind == "complete" and complete["reason"] == "timeout"
    assert complete["total_ticks"] == len(ticks(events)) == 4
    assert 0.5 <= complete["duration_seconds"] <= 5 and 0.5 <= elapsed < 10


def test_heartbeats_arrive_while_idle(client: httpx.Client) -> None:
    with sse(client, f"/v2/stream/{AAPL}/live/last?heartbeat=0.25&timeout=1.2") as stream:
        events = stream.rest()
        raw = bytes(stream.raw)
    beats = [e for e in events if e.data is None]
    assert len(beats) >= 3 and all(e.comments and e.comments[0].startswith("heartbeat ") for e in beats)
    assert events[-1].kind == "complete" and events[-1].data["data"]["total_ticks"] == 0
    assert_well_framed(raw)


def test_heartbeat_interval_comes_from_the_settings(tmp_path: Path) -> None:
    server, stop = e2e.start_server(e2e.test_settings(tmp_path / "storage", api={"heartbeat_seconds": 0.3}))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c, sse(c, f"/v2/stream/{AAPL}/live/last?timeout=1") as s:
            events = s.rest()
        assert sum(1 for e in events if e.data is None) >= 2
        assert events[0].data["data"]["stream_config"]["heartbeat_seconds"] == 0.3
    finally:
        stop()


_BAD_REQUESTS = [
    ("/v2/stream/1234/live/last", 404, "CONTRACT_NOT_FOUND", "contract_id"),
    (f"/v2/stream/{AAPL}/live/Trades", 422, "INVALID_TICK_TYPE", "tick_type"),
    (f"/v2/stream/{AAPL}/live?tick_types=last,nope", 422, "INVALID_TICK_TYPE", "tick_types"),
    (f"/v2/stream/{AAPL}/live", 422, "INVALID_INPUT", "tick_types"),
    (f"/v2/stream/{AAPL}/live/last?limit=0", 422, "INVALID_INPUT", "limit"),
    (f"/v2/stream/{AAPL}/live/last?limit=100000000", 422, "INVALID_INPUT", "limit"),
    (f"/v2/stream/{AAPL}/live/last?timeout=-1", 422, "INVALID_INPUT", "timeout"),
    (f"/v2/stream/{AAPL}/live/last?heartbeat=0.01", 422, "INVALID_INPUT", "heartbeat"),
    ("/v2/stream/abc/live/last", 422, "INVALID_INPUT", "contract_id"),
]


def test_errors_before_streaming_are_json_4xx(client: httpx.Client) -> None:
    for path, status, code, name in _BAD_REQUESTS:
        response = client.get(path)
        assert response.status_code == status, path
        error = response.json()["error"]
        assert error["code"] == code and error["details"]["field"] == name, (path, error)


def test_disconnects_leave_no_subscription_behind(live_server: LiveServer, client: httpx.Client) -> None:
    streaming = live_server.state.streaming
    paths = [f"/v2/stream/{AAPL}/live/last", f"/v2/stream/{AAPL}/live?tick_types=bid_ask,mid_point"]
    with sse(client, paths[0]) as one, sse(client, paths[1]) as two:
        one.until(is_kind("info", "subscribed"))
        two.until(is_kind("info", "subscribed"))
        assert streaming.subscriber_count == 2
    wait_for(lambda: streaming.subscriber_count == 0)
    with sse(client, f"/v2/stream/{AAPL}/live/last?limit=1") as stream:  # ended by the server
        stream.until(is_kind("info", "subscribed"))
        live_server.publish(AAPL, "last", [trade(time.time_ns())])
        stream.rest()
    wait_for(lambda: streaming.subscriber_count == 0)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return bytes(out)


def test_a_slow_consumer_gets_an_error_and_the_stream_closes(tmp_path: Path) -> None:
    server, stop = e2e.start_server(e2e.test_settings(tmp_path / "storage", api={"subscriber_queue_size": 10}))
    streaming = server.state.streaming
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that stops reading
            sock.settimeout(10)
            sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            path = f"/v2/stream/{AAPL}/live/last"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            wait_for(lambda: streaming.subscriber_count == 1)

            async def flood() -> int:
                sent = 0
                while streaming.stats.slow_disconnects == 0 and sent < 400_000:
                    batch = [trade(time.time_ns() + i, i) for i in range(8)]  # under the queue size
                    await streaming.publish(AAPL, "last", batch, "test")
                    sent += len(batch)
                return sent

            sent = server.run(flood(), timeout=60)
            assert streaming.stats.slow_disconnects == 1 and streaming.subscriber_count == 0
            received = bytearray()
            while chunk := sock.recv(1 << 16):
                received += chunk
        head, body = bytes(received).split(b"\r\n\r\n", 1)
        assert b" 200 " in head.split(b"\r\n")[0] and b"transfer-encoding: chunked" in head.lower()
        raw = _dechunk(body)
        assert_well_framed(raw)
        events = [parse_block(b) for b in raw[:-2].split(b"\n\n")]
        got = [e.data["data"]["seq"] for e in events if e.kind == "tick"]
        assert got == list(range(1, len(got) + 1)) and len(got) < sent  # in order, then cut off
        assert events[-1].kind == "error"
        error = events[-1].data["data"]
        assert error["code"] == "SLOW_CONSUMER" and error["recoverable"] is True and error["message"]
    finally:
        stop()


def test_the_stream_closes_when_the_service_stops(tmp_path: Path) -> None:
    server, stop = e2e.start_server(e2e.test_settings(tmp_path / "storage"))
    with httpx.Client(base_url=server.url, timeout=10) as c, sse(c, f"/v2/stream/{AAPL}/live/last") as stream:
        stream.until(is_kind("info", "subscribed"))
        asyncio.run_coroutine_threadsafe(server.state.streaming.stop(), server.loop).result(10)
        events = stream.rest()
    stop()
    assert events[-1].kind == "complete" and events[-1].data["data"]["reason"] == "server_shutdown"


def test_sigterm_ends_open_streams_with_complete(tmp_path: Path) -> None:
    port = e2e.free_port()
    command = [sys.executable, "-m", "ib_stream.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=e2e.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), timeout=30)
        live_path, buffer_path = f"/v2/stream/{AAPL}/live/bid_ask", f"/v2/stream/{AAPL}/buffer?tick_types=last"
        with httpx.Client(base_url=url, timeout=10) as c, sse(c, live_path) as live, sse(c, buffer_path) as buf:
            live.until(is_kind("tick"))
            buf.until(is_kind("info", "live_start"))
            process.send_signal(signal.SIGTERM)
            ends = [live.rest()[-1], buf.rest()[-1]]
        assert [e.kind for e in ends] == ["complete", "complete"]
        assert all(e.data["data"]["reason"] == "server_shutdown" for e in ends)
        output = process.communicate(timeout=15)[0].decode()
        assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert "without completing response" not in output and "Traceback" not in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/info", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
