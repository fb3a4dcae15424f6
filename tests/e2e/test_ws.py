"""End-to-end: the v2 WebSocket against a real server — greeting, subscribe/subscribed, ticks in
order with the published values, per-stream limit/timeout `complete`, unsubscribe, ping/pong,
errors that leave the socket open, and no subscription left after a disconnect.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer
from tests.e2e.test_live_sse import wait_for


@pytest.fixture
def ws(live_server: LiveServer) -> Iterator[ClientConnection]:
    with connect(live_server.url.replace("http://", "ws://") + "/v2/ws/stream", open_timeout=10) as socket:
        yield socket


def recv(socket: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(socket.recv(timeout=10))
    return message


def recv_until(socket: ClientConnection, done: Callable[[dict[str, Any]], bool], limit: int = 10_000) -> list[dict]:
    got = []
    for _ in range(limit):
        got.append(recv(socket))
        if done(got[-1]):
            return got
    raise AssertionError("expected message not received")


def send(socket: ClientConnection, message: dict[str, Any]) -> None:
    socket.send(json.dumps(message))


def subscribe(socket: ClientConnection, request_id: str, tick_types: Any, **config: Any) -> dict[str, str]:
    """Subscribe and return {tick_type: stream_id} from the `subscribed` reply."""
    data: dict[str, Any] = {"contract_id": AAPL, "tick_types": tick_types}
    if config:
        data["config"] = config
    send(socket, {"type": "subscribe", "id": request_id, "data": data})
    reply = recv_until(socket, lambda m: m.get("id") == request_id)[-1]
    assert reply["type"] == "subscribed", reply
    return {s["tick_type"]: s["stream_id"] for s in reply["data"]["streams"]}


def test_greeting_subscribe_and_ticks_in_order(live_server: LiveServer, ws: ClientConnection) -> None:
    hello = recv(ws)
    assert hello["type"] == "connected" and hello["data"]["version"] == "2.0.0"
    assert "bid_ask" in hello["data"]["capabilities"]["supported_tick_types"]
    streams = subscribe(ws, "s1", ["BidAsk", "last"])
    assert set(streams) == {"bid_ask", "last"} and len(set(streams.values())) == 2
    now = time.time_ns()
    quotes = [quote(now + i, i) for i in range(30)]
    trades = [trade(now + i, i, side=1 if i % 2 else None) for i in range(30)]
    for i in range(0, 30, 10):
        live_server.publish(AAPL, "bid_ask", quotes[i : i + 10])
        live_server.publish(AAPL, "last", trades[i : i + 10])
    got = [recv(ws) for _ in range(60)]
    assert all(m["type"] == "tick" for m in got)
    by_stream = {t: [m for m in got if m["stream_id"] == sid] for t, sid in streams.items()}
    assert [m["data"]["seq"] for m in by_stream["bid_ask"]] == list(range(1, 31))
    assert [m["data"]["seq"] for m in by_stream["last"]] == list(range(1, 31))
    for message, sent in zip(by_stream["bid_ask"], quotes, strict=True):
        data = message["data"]
        assert data["tick_type"] == "bid_ask" and data["type"] == "bid_ask" and data["ts"] == sent["ts"]
        assert all(data[k] == sent[k] for k in ("bid_price", "bid_size", "ask_price", "ask_size"))
    for message, sent in zip(by_stream["last"], trades, strict=True):
        data = message["data"]
        assert data["type"] == "time_sales" and data["price"] == sent["price"] and data["size"] == sent["size"]
        assert data.get("side") == sent.get("side") and data["exchange"] == sent["exchange"]


def test_limit_and_timeout_complete_each_stream(live_server: LiveServer, ws: ClientConnection) -> None:
    recv(ws)
    limited = subscribe(ws, "lim", "last", limit=3)["last"]
    timed = subscribe(ws, "tmo", ["mid_point"], timeout_seconds=0.4)["mid_point"]
    live_server.publish(AAPL, "last", [trade(time.time_ns() + i, i) for i in range(5)])
    got = recv_until(ws, lambda m: m["type"] == "complete" and m["stream_id"] == limited)
    assert [m["data"]["seq"] for m in got if m["type"] == "tick"] == [1, 2, 3]
    assert got[-1]["data"]["reason"] == "limit_reached" and got[-1]["data"]["total_ticks"] == 3
    done = recv_until(ws, lambda m: m["type"] == "complete" and m["stream_id"] == timed)[-1]
    assert done["data"]["reason"] == "timeout" and done["data"]["total_ticks"] == 0
    assert done["data"]["duration_seconds"] >= 0.35
    wait_for(lambda: live_server.state.streaming.subscriber_count == 0)
    send(ws, {"type": "ping", "id": "still-open"})
    assert recv(ws)["type"] == "pong"


def test_unsubscribe_by_stream_id_and_by_subscribe_id(live_server: LiveServer, ws: ClientConnection) -> None:
    recv(ws)
    streaming = live_server.state.streaming
    first = subscribe(ws, "a", ["bid_ask", "last"])
    barrier = subscribe(ws, "b", ["mid_point"])["mid_point"]
    assert streaming.subscriber_count == 3
    send(ws, {"type": "unsubscribe", "id": "u1", "data": {"stream_id": first["last"]}})
    reply = recv(ws)
    assert reply == {**reply, "type": "unsubscribed", "id": "u1"} and reply["data"]["streams"] == [first["last"]]
    assert streaming.subscriber_count == 2
    live_server.publish(AAPL, "last", [trade(time.time_ns())])
    live_server.publish(AAPL, "bid_ask", [quote(time.time_ns())])
    live_server.publish(AAPL, "mid_point", [{"ts": time.time_ns(), "mid_point": 100.0}])
    got = recv_until(ws, lambda m: m["stream_id"] == barrier)
    assert first["last"] not in {m["stream_id"] for m in got}
    send(ws, {"type": "unsubscribe", "id": "u2", "data": {"id": "a"}})
    reply = recv_until(ws, lambda m: m.get("id") == "u2")[-1]
    assert reply["type"] == "unsubscribed" and reply["data"]["streams"] == [first["bid_ask"]]
    assert streaming.subscriber_count == 1


_BAD_MESSAGES = [
    ("not json", "INVALID_MESSAGE"),
    ("[1, 2]", "INVALID_MESSAGE"),
    ('{"type": "dance", "id": "x"}', "INVALID_MESSAGE"),
    ('{"type": "subscribe", "id": "x", "data": {"contract_id": 1, "tick_types": ["last"]}}', "CONTRACT_NOT_FOUND"),
    (
        '{"type": "subscribe", "id": "x", "data": {"contract_id": 265598, "tick_types": ["Trades"]}}',
        "INVALID_TICK_TYPE",
    ),
    ('{"type": "subscribe", "id": "x", "data": {"contract_id": 265598}}', "INVALID_TICK_TYPE"),
    ('{"type": "subscribe", "id": "x", "data": {"contract_id": "AAPL", "tick_types": ["last"]}}', "INVALID_INPUT"),
    (
        '{"type": "subscribe", "id": "x", "data": {"contract_id": 265598, "tick_types": ["last"], '
        '"config": {"limit": 0}}}',
        "INVALID_INPUT",
    ),
    (
        '{"type": "subscribe", "id": "x", "data": {"contract_id": 265598, "tick_types": ["last"], '
        '"config": {"timeout_seconds": "soon"}}}',
        "INVALID_INPUT",
    ),
    ('{"type": "subscribe", "id": "x", "data": [1]}', "INVALID_INPUT"),
    ('{"type": "unsubscribe", "id": "x", "data": {"stream_id": "nope"}}', "UNKNOWN_STREAM"),
    ('{"type": "unsubscribe", "id": "x", "data": {}}', "INVALID_INPUT"),
    ('{"type": "unsubscribe", "id": "x", "data": {"stream_id": [1]}}', "INVALID_INPUT"),
    ('{"type": "subscribe", "id": "x", "data": {"contract_id": 265598, "tick_types": {"a": 1}}}', "INVALID_TICK_TYPE"),
    (
        '{"type": "subscribe", "id": "x", "data": {"contract_id": 265598, "tick_types": ["last"], "config": 5}}',
        "INVALID_INPUT",
    ),
]


def test_bad_messages_get_an_error_and_the_socket_stays_open(live_server: LiveServer, ws: ClientConnection) -> None:
    recv(ws)
    for message, code in _BAD_MESSAGES:
        ws.send(message)
        error = recv(ws)
        assert error["type"] == "error" and error["data"]["code"] == code, (message, error)
        assert error["data"]["message"] and error["data"]["recoverable"] is False
        assert set(error) >= {"type", "stream_id", "timestamp", "data"}
        assert error["id"] == ("x" if '"id": "x"' in message else None)
    send(ws, {"type": "ping", "id": "p", "timestamp": "2025-01-10T14:00:00Z"})
    pong = recv(ws)
    assert pong["type"] == "pong" and pong["id"] == "p"
    assert pong["data"]["client_timestamp"] == "2025-01-10T14:00:00Z" and pong["data"]["server_timestamp"]
    assert live_server.state.streaming.subscriber_count == 0


def test_several_subscriptions_per_socket_and_cleanup_on_disconnect(live_server: LiveServer) -> None:
    streaming = live_server.state.streaming
    url = live_server.url.replace("http://", "ws://") + "/v2/ws/stream"
    with connect(url, open_timeout=10) as socket:
        recv(socket)
        aapl = subscribe(socket, "1", ["last"])["last"]
        send(socket, {"type": "subscribe", "id": "2", "data": {"contract_id": ES, "tick_types": "last,bid_ask"}})
        es = {s["tick_type"]: s["stream_id"] for s in recv(socket)["data"]["streams"]}
        assert streaming.subscriber_count == 3
        live_server.publish(ES, "last", [trade(time.time_ns(), price=6000.25)])
        live_server.publish(AAPL, "last", [trade(time.time_ns(), price=230.5)])
        got = {m["stream_id"]: m["data"] for m in (recv(socket), recv(socket))}
        assert got[es["last"]]["contract_id"] == ES and got[es["last"]]["price"] == 6000.25
        assert got[aapl]["contract_id"] == AAPL and got[aapl]["price"] == 230.5
    wait_for(lambda: streaming.subscriber_count == 0)
