"""End-to-end: history then live on one SSE stream (`/v2/stream/{id}/buffer`) with no gap and no
duplicate at the seam while ticks are published at >= 5,000/s, the history window, and the /v3
buffer query in both message formats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ib_stream.times import iso_us, parse_http_time
from tests.conftest import quote, trade
from tests.e2e.conftest import AAPL, LiveServer
from tests.e2e.test_live_sse import is_kind, sse, ticks

NS = 1_000_000_000
HOUR = 3600 * NS


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(20.0)) as c:
        yield c


def test_history_then_live_has_no_gap_and_no_duplicate_under_load(
    live_server: LiveServer, client: httpx.Client
) -> None:
    streaming = live_server.state.streaming
    rate, batch, seconds = 8_000, 200, 3.0
    base = time.time_ns()

    async def publish() -> tuple[dict[str, int], float]:
        loop = asyncio.get_running_loop()
        counts = {"bid_ask": 0, "last": 0}
        n = 0
        started = loop.time()
        while loop.time() - started < seconds:
            tick_type = ("bid_ask", "last")[(n // batch) % 2]
            make = quote if tick_type == "bid_ask" else trade
            await streaming.publish(AAPL, tick_type, [make(base + (n + i) * 1000, n + i) for i in range(batch)], "t")
            counts[tick_type] += batch
            n += batch
            ahead = started + n / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return counts, loop.time() - started

    publisher = asyncio.run_coroutine_threadsafe(publish(), live_server.loop)
    time.sleep(1.0)  # a second of history first; the stream opens while ticks keep arriving
    seqs: dict[str, list[int]] = {"bid_ask": [], "last": []}
    phases: dict[str, dict[str, int]] = {"history": {"bid_ask": 0, "last": 0}, "live": {"bid_ask": 0, "last": 0}}
    statuses: list[str] = []
    deadline = time.monotonic() + 30
    last_tick_at = time.monotonic()
    with sse(client, f"/v2/stream/{AAPL}/buffer?tick_types=bid_ask,last&buffer_duration=1h&heartbeat=0.2") as stream:
        phase = "before"
        while True:
            event = stream.next()
            assert event is not None and time.monotonic() < deadline
            if event.kind == "info":
                statuses.append(event.data["data"]["status"])
                phase = {"buffer_start": "history", "live_start": "live"}.get(statuses[-1], phase)
            elif event.kind == "tick":
                assert phase in ("history", "live") and statuses[-1] != "buffer_complete"
                data = event.data["data"]
                seqs[data["tick_type"]].append(data["seq"])
                phases[phase][data["tick_type"]] += 1
                last_tick_at = time.monotonic()
            else:
                assert event.data is None, f"unexpected {event.data}"  # a heartbeat
            if publisher.done():
                counts = publisher.result()[0]
                if all(len(seqs[t]) >= counts[t] for t in counts) or time.monotonic() - last_tick_at > 2:
                    break  # everything arrived, or nothing more will
    counts, elapsed = publisher.result()
    achieved = sum(counts.values()) / elapsed
    assert achieved >= 5_000, f"published only {achieved:.0f} ticks/s"
    assert statuses == ["buffer_start", "buffer_complete", "live_start"]
    for tick_type, count in counts.items():
        assert seqs[tick_type] == list(range(1, count + 1)), f"{tick_type}: gap or duplicate at the seam"
        assert phases["history"][tick_type] > 0 and phases["live"][tick_type] > 0
    assert streaming.subscriber_count <= 1  # this stream, until the server notices the close


def test_history_window_then_live(live_server: LiveServer, client: httpx.Client) -> None:
    now = time.time_ns()
    old = [trade(now - 2 * HOUR + i * NS, i) for i in range(5)]
    recent = [trade(now - HOUR // 2 + i * NS, 10 + i) for i in range(5)]
    live_server.publish(AAPL, "last", old)
    live_server.publish(AAPL, "last", recent)
    with sse(client, f"/v2/stream/{AAPL}/buffer?tick_types=Last&buffer_duration=1h&limit=2") as stream:
        head = stream.until(is_kind("info", "live_start"))
        live_server.publish(AAPL, "last", [trade(now + i, 20 + i) for i in range(3)])
        tail = stream.rest()
    start = head[0].data["data"]
    assert start["status"] == "buffer_start" and start["buffer_message_count"] == 5 and start["buffer_duration"] == "1h"
    assert [t["seq"] for t in ticks(head)] == [6, 7, 8, 9, 10]
    assert [t["price"] for t in ticks(head)] == [t["price"] for t in recent]
    assert head[-1].data["data"]["after_seq"] == {"last": 10}
    assert [t["seq"] for t in ticks(tail)] == [11, 12]
    assert tail[-1].kind == "complete" and tail[-1].data["data"]["total_ticks"] == 2  # limit counts live ticks
    since = iso_us(now - 3 * HOUR).replace("+00:00", "Z")
    with sse(client, f"/v2/stream/{AAPL}/buffer?tick_types=last&start_time={since}&limit=1") as stream:
        head = stream.until(is_kind("info", "live_start"))
    assert [t["seq"] for t in ticks(head)] == list(range(1, 14))
    assert head[0].data["data"]["start_time"] == since


_BAD_BUFFER_QUERIES = [
    ("tick_types=last&start_time=2025-01-10T10:00:00", 422, "INVALID_INPUT", "start_time"),
    ("tick_types=last&buffer_duration=forever", 422, "INVALID_INPUT", "buffer_duration"),
    ("tick_types=last&buffer_duration=300d", 400, "INVALID_QUERY", "start_time"),
    ("tick_types=bogus", 422, "INVALID_TICK_TYPE", "tick_types"),
]


def test_buffer_stream_errors_before_streaming(client: httpx.Client) -> None:
    for query, status, code, field in _BAD_BUFFER_QUERIES:
        response = client.get(f"/v2/stream/{AAPL}/buffer?{query}")
        assert response.status_code == status, query
        error = response.json()["error"]
        assert error["code"] == code and error["details"]["field"] == field, (query, error)
    assert client.get("/v2/stream/42/buffer").json()["error"]["code"] == "CONTRACT_NOT_FOUND"


# ---- /v3/buffer/{id}/query --------------------------------------------------------------------------------
def _publish_mixed(live_server: LiveServer, t0: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    quotes = [quote(t0 + i * 2 * NS, i) for i in range(6)]  # at 0, 2, 4, ... s
    trades = [trade(t0 + (i * 2 + 1) * NS, i, side=-1) for i in range(6)]  # at 1, 3, 5, ... s
    live_server.publish(AAPL, "bid_ask", quotes)
    live_server.publish(AAPL, "last", trades)
    return quotes, trades


def test_v3_query_expanded_messages_in_time_order(live_server: LiveServer, client: httpx.Client) -> None:
    t0 = (time.time_ns() // NS - 600) * NS
    quotes, trades = _publish_mixed(live_server, t0)
    start, end = iso_us(t0 + NS), iso_us(t0 + 9 * NS)  # [1 s, 9 s): trades 0..3, quotes 1..4
    body = client.get(f"/v3/buffer/{AAPL}/query?tick_types=BidAsk,last&start_time={start}&end_time={end}").json()
    assert set(body) == {
        "contract_id",
        "tick_types",
        "format",
        "time_range",
        "total_messages",
        "raw_format",
        "messages",
    }
    assert body["contract_id"] == AAPL and body["tick_types"] == ["bid_ask", "last"] and body["format"] == "json"
    assert body["time_range"] == {"start": start, "end": end} and body["raw_format"] is False
    messages = body["messages"]
    assert body["total_messages"] == len(messages) == 8
    assert [m["ib_timestamp"] for m in messages] == [(t0 + k * NS) // 1000 for k in range(1, 9)]
    assert [m["tick_type"] for m in messages] == ["last", "bid_ask"] * 4
    first_trade, first_quote = messages[0], messages[1]
    assert first_trade == {
        "contract_id": AAPL,
        "tick_type": "last",
        "ib_timestamp": trades[0]["ts"] // 1000,
        "ib_timestamp_iso": iso_us(trades[0]["ts"]),
        "system_timestamp": first_trade["system_timestamp"],
        "system_timestamp_iso": iso_us(first_trade["system_timestamp"] * 1000),
        "request_id": 1,
        "price": trades[0]["price"],
        "size": trades[0]["size"],
    }
    assert first_trade["system_timestamp"] >= t0 // 1000
    assert first_quote["request_id"] == 2 and first_quote["bid_price"] == quotes[1]["bid_price"]
    assert set(first_quote) - {"bid_price", "bid_size", "ask_price", "ask_size"} == set(first_trade) - {"price", "size"}
    limited = client.get(f"/v3/buffer/{AAPL}/query?tick_types=bid_ask,last&start_time={start}&end_time={end}&limit=3")
    assert [m["ib_timestamp"] for m in limited.json()["messages"]] == [m["ib_timestamp"] for m in messages[:3]]


def test_v3_query_raw_messages_and_buffer_duration(live_server: LiveServer, client: httpx.Client) -> None:
    t0 = time.time_ns() - 30 * NS
    quotes, trades = _publish_mixed(live_server, t0)
    live_server.publish(AAPL, "mid_point", [{"ts": t0, "mid_point": 100.01}])
    body = client.get(f"/v3/buffer/{AAPL}/query?tick_types=bid_ask,last,mid_point&buffer_duration=1m&raw=true").json()
    assert body["raw_format"] is True and body["total_messages"] == 13
    messages = body["messages"]
    assert [m["ts"] for m in messages] == sorted(m["ts"] for m in messages)
    mid = next(m for m in messages if m["tt"] == "mid_point")
    assert set(mid) == {"ts", "st", "cid", "tt", "rid", "mp"} and mid["mp"] == 100.01 and mid["cid"] == AAPL
    quote0 = next(m for m in messages if m["tt"] == "bid_ask")
    assert quote0 == {
        "ts": quotes[0]["ts"] // 1000,
        "st": quote0["st"],
        "cid": AAPL,
        "tt": "bid_ask",
        "rid": 1,
        "bp": quotes[0]["bid_price"],
        "bs": quotes[0]["bid_size"],
        "ap": quotes[0]["ask_price"],
        "as": quotes[0]["ask_size"],
    }
    trade_last = [m for m in messages if m["tt"] == "last"][-1]
    assert set(trade_last) == {"ts", "st", "cid", "tt", "rid", "p", "s"} and trade_last["p"] == trades[-1]["price"]
    start, end = body["time_range"]["start"], body["time_range"]["end"]
    assert 59 <= (_ns(end) - _ns(start)) / NS <= 61
    empty = client.get(f"/v3/buffer/{AAPL}/query?tick_types=last&buffer_duration=1s").json()
    assert empty["total_messages"] == 0 and empty["messages"] == []


def _ns(text: str) -> int:
    return parse_http_time(text, "t")


_BAD_V3_QUERIES = [
    ("start_time=2025-01-10T10:00:00Z&end_time=2025-01-10T09:00:00Z", 400, "end_time"),
    ("start_time=2025-01-10T10:00:00&end_time=2025-01-10T11:00:00Z", 422, "start_time"),
    ("start_time=2024-01-10T10:00:00Z&end_time=2025-01-10T11:00:00Z", 400, "start_time"),
    ("limit=0", 422, "limit"),
    ("limit=999999999", 422, "limit"),
    ("format=protobuf", 422, "format"),
    ("tick_types=ticks", 422, "tick_types"),
    ("buffer_duration=1y", 422, "buffer_duration"),
]


def test_v3_query_errors(client: httpx.Client) -> None:
    for query, status, field in _BAD_V3_QUERIES:
        response = client.get(f"/v3/buffer/{AAPL}/query?{query}")
        assert response.status_code == status, (query, response.text)
        assert response.json()["error"]["details"]["field"] == field, query
    missing = client.get("/v3/buffer/7/query")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "CONTRACT_NOT_FOUND"
