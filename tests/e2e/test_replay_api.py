"""End-to-end: `/v2/replay/{id}` re-plays exactly the stored ticks of a range in the live envelope,
as fast as possible with speed=0 and at about duration/speed otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ib_stream.times import iso_us
from tests.conftest import quote, trade
from tests.e2e.conftest import AAPL, LiveServer
from tests.e2e.test_live_sse import Event, assert_well_framed, sse, ticks

NS = 1_000_000_000


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(20.0)) as c:
        yield c


def _store(live_server: LiveServer, t0: int, span_s: float, n: int) -> tuple[list[dict[str, Any]], list[dict]]:
    """n quotes and n trades spread over `span_s` seconds from t0 (trades half a step after quotes)."""
    step = int(span_s * NS / n)
    quotes = [quote(t0 + i * step, i) for i in range(n)]
    trades = [trade(t0 + i * step + step // 2, i, side=1) for i in range(n)]
    for i in range(0, n, 100):
        live_server.publish(AAPL, "bid_ask", quotes[i : i + 100])
        live_server.publish(AAPL, "last", trades[i : i + 100])
    return quotes, trades


def _replay(client: httpx.Client, query: str) -> tuple[list[Event], float, bytes]:
    started = time.monotonic()
    with sse(client, f"/v2/replay/{AAPL}?{query}") as stream:
        events = stream.rest()
        raw = bytes(stream.raw)
    return events, time.monotonic() - started, raw


def test_speed_zero_replays_exactly_the_stored_ticks_in_order(live_server: LiveServer, client: httpx.Client) -> None:
    t0 = (time.time_ns() // NS - 3600) * NS
    quotes, trades = _store(live_server, t0, 10.0, 300)
    start, end = iso_us(t0), iso_us(t0 + 10 * NS)
    events, elapsed, raw = _replay(client, f"tick_types=bid_ask,Last&start_time={start}&end_time={end}&speed=0")
    assert events[0].kind == "info" and events[0].data["data"]["status"] == "replay_start"
    info = events[0].data["data"]
    assert info["start_time"] == start and info["end_time"] == end and info["speed"] == 0
    got = ticks(events)
    expected = sorted(
        [("bid_ask", q["ts"], i + 1, q) for i, q in enumerate(quotes)]
        + [("last", t["ts"], i + 1, t) for i, t in enumerate(trades)],
        key=lambda x: x[1],
    )
    assert [(t["tick_type"], t["ts"], t["seq"]) for t in got] == [x[:3] for x in expected]
    for tick, (_, _, _, sent) in zip(got, expected, strict=True):
        fields = (
            ("bid_price", "bid_size", "ask_price", "ask_size") if tick["tick_type"] == "bid_ask" else ("price", "size")
        )
        assert all(tick[f] == sent[f] for f in fields)
        assert tick["timestamp"] == iso_us(sent["ts"])  # original event time
    assert {e.data["stream_id"] for e in events if e.data} == {events[0].data["stream_id"]}
    complete = events[-1].data["data"]
    assert events[-1].kind == "complete" and complete["reason"] == "replay_complete" and complete["total_ticks"] == 600
    assert elapsed < 5
    assert_well_framed(raw)


def test_a_sub_range_and_limit(live_server: LiveServer, client: httpx.Client) -> None:
    t0 = (time.time_ns() // NS - 3600) * NS
    _store(live_server, t0, 10.0, 100)  # a quote every 0.1 s
    start, end = iso_us(t0 + 2 * NS), iso_us(t0 + 3 * NS)
    events, _, _ = _replay(client, f"tick_types=bid_ask&start_time={start}&end_time={end}&speed=0")
    assert [t["seq"] for t in ticks(events)] == list(range(21, 31))
    events, _, _ = _replay(client, f"tick_types=bid_ask&start_time={iso_us(t0)}&end_time={end}&speed=0&limit=5")
    assert [t["seq"] for t in ticks(events)] == [1, 2, 3, 4, 5]
    assert events[-1].data["data"] == {**events[-1].data["data"], "reason": "limit_reached", "total_ticks": 5}
    events, _, _ = _replay(client, f"start_time={iso_us(t0 - 3600 * NS)}&end_time={iso_us(t0 - 60 * NS)}&speed=0")
    assert ticks(events) == [] and events[-1].data["data"]["total_ticks"] == 0
    assert events[0].data["data"]["tick_types"] == ["bid_ask", "last", "mid_point", "depth"]


@pytest.mark.parametrize(("speed", "low", "high"), [(4.0, 0.4, 2.0), (1.0, 1.4, 3.5)])
def test_speed_paces_the_replay(
    live_server: LiveServer, client: httpx.Client, speed: float, low: float, high: float
) -> None:
    t0 = (time.time_ns() // NS - 3600) * NS
    _store(live_server, t0, 2.0, 200)  # ticks over [0, 2) s: ~2 s of market time
    query = f"tick_types=bid_ask,last&start_time={iso_us(t0)}&end_time={iso_us(t0 + 3 * NS)}&speed={speed}"
    events, elapsed, _ = _replay(client, query)
    assert len(ticks(events)) == 400
    assert low <= elapsed <= high, f"speed {speed}: {elapsed:.2f} s for ~{2 / speed:.2f} s of paced ticks"
    arrival = events[-1].data["data"]["duration_seconds"]
    assert low - 0.2 <= arrival <= high


_BAD_REPLAYS = [
    ("start_time=2025-01-10T10:00:00Z&end_time=2025-01-10T09:00:00Z", 400, "INVALID_QUERY", "end_time"),
    ("start_time=2025-01-10T10:00:00&end_time=2025-01-10T11:00:00Z", 422, "INVALID_INPUT", "start_time"),
    ("start_time=2025-01-10T10:00:00Z", 422, "INVALID_INPUT", "end_time"),
    ("start_time=2025-01-10T10:00:00Z&end_time=2025-01-10T11:00:00Z&speed=-1", 422, "INVALID_INPUT", "speed"),
    (
        "start_time=2025-01-10T10:00:00Z&end_time=2025-01-10T11:00:00Z&tick_types=x",
        422,
        "INVALID_TICK_TYPE",
        "tick_types",
    ),
    ("start_time=2024-01-10T10:00:00Z&end_time=2025-01-10T11:00:00Z", 400, "INVALID_QUERY", "start_time"),
]


def test_replay_errors(client: httpx.Client) -> None:
    for query, status, code, field in _BAD_REPLAYS:
        response = client.get(f"/v2/replay/{AAPL}?{query}")
        assert response.status_code == status, (query, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["details"]["field"] == field, (query, error)
    missing = client.get("/v2/replay/99?start_time=2025-01-10T10:00:00Z&end_time=2025-01-10T11:00:00Z")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "CONTRACT_NOT_FOUND"
