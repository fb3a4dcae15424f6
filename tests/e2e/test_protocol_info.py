"""End-to-end: what the service says about the protocol and its holdings (`/v2/info`, `/v3/info`,
`/v3/buffer/{id}/info`) and the latest tick of each type from memory (`/v2/latest`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ib_stream.api.reads import holdings
from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.storage import TickStore
from ib_stream.times import iso_us
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade
from tests.e2e.conftest import AAPL, ES, LiveServer

NS = 1_000_000_000


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=httpx.Timeout(15.0)) as c:
        yield c


def _stream(body: dict[str, Any], contract_id: int, tick_type: str) -> dict[str, Any]:
    found = [s for s in body["streams"] if s["contract_id"] == contract_id and s["tick_type"] == tick_type]
    assert len(found) == 1, body["streams"]
    return found[0]


def test_v2_info_describes_the_protocol_and_what_is_held(live_server: LiveServer, client: httpx.Client) -> None:
    empty = client.get("/v2/info").json()
    assert empty["streams"] == []
    t0 = time.time_ns() - 60 * NS
    live_server.publish(AAPL, "last", [trade(t0 + i * NS, i) for i in range(7)])
    live_server.publish(ES, "bid_ask", [quote(t0 + i * NS, i) for i in range(3)])
    body = client.get("/v2/info").json()
    assert body["version"] == "2.0.0" and body["protocol"] == "v2"
    assert set(body["tick_types"]) == {"bid_ask", "last", "all_last", "mid_point", "depth"}
    assert (
        body["tick_types"]["last"]["data_type"] == "time_sales" and body["tick_types"]["bid_ask"]["alias"] == "BidAsk"
    )
    assert body["tick_types"]["mid_point"]["data_type"] == "midpoint"
    assert set(body["message_types"]) == {"tick", "info", "error", "complete"}
    assert body["envelope"] == ["type", "stream_id", "timestamp", "data"]
    assert any(path.startswith("/v2/stream/{contract_id}/buffer") for path in body["endpoints"])
    assert "/v2/ws/stream" in body["endpoints"]
    assert {"SLOW_CONSUMER", "CONTRACT_NOT_FOUND", "INVALID_TICK_TYPE"} <= set(body["error_codes"])
    assert {"limit_reached", "timeout"} <= set(body["complete_reasons"])
    assert "midpoint" in body["tick_data_fields"]["mid_point"] and "unix_time" in body["tick_data_fields"]["last"]
    assert body["heartbeat_seconds"] == live_server.settings.api.heartbeat_seconds
    assert {c["contract_id"] for c in body["contracts"]} == {AAPL, ES}
    last = _stream(body, AAPL, "last")
    assert last["tick_count"] == 7 and last["last_seq"] == 7 and last["archived_ticks"] == 0
    assert last["first_time"] == iso_us(t0) and last["last_time"] == iso_us(t0 + 6 * NS)
    assert _stream(body, ES, "bid_ask")["tick_count"] == 3
    assert len(body["streams"]) == 2


def test_v3_info_and_buffer_info(live_server: LiveServer, client: httpx.Client) -> None:
    t0 = time.time_ns() - 10 * NS
    live_server.publish(AAPL, "mid_point", [{"ts": t0 + i, "mid_point": 100.0 + i} for i in range(4)])
    v3 = client.get("/v3/info").json()
    assert v3["version"] == "3.0" and v3["formats"] == ["json"]
    assert {"ts", "st", "cid", "tt", "rid", "bp", "bs", "ap", "as", "p", "s", "mp"} <= set(v3["field_mapping"])
    assert "/v3/buffer/{contract_id}/query" in v3["endpoints"]
    assert _stream(v3, AAPL, "mid_point")["tick_count"] == 4
    info = client.get(f"/v3/buffer/{AAPL}/info").json()
    assert info["contract_id"] == AAPL and info["configured"] is True and info["contract_info"]["symbol"] == "AAPL"
    assert [s["tick_type"] for s in info["streams"]] == ["mid_point"]
    assert info["streams"][0]["first_time"] == iso_us(t0) and info["streams"][0]["last_time"] == iso_us(t0 + 3)
    assert client.get(f"/v3/buffer/{ES}/info").json()["streams"] == []
    missing = client.get("/v3/buffer/5/info")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "CONTRACT_NOT_FOUND"


def test_latest_is_the_most_recent_tick_of_each_type(live_server: LiveServer, client: httpx.Client) -> None:
    before = client.get(f"/v2/latest/{AAPL}").json()
    assert before["ticks"] == {"bid_ask": None, "last": None, "mid_point": None, "depth": None}
    now = time.time_ns()
    live_server.publish(AAPL, "last", [trade(now + i, i) for i in range(5)])
    live_server.publish(AAPL, "last", [trade(now + 9, 99, price=231.5, side=-1)])
    live_server.publish(AAPL, "bid_ask", [quote(now, 3)])

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("/v2/latest read the store")

    engine = live_server.store.engine
    original = engine.read_stream
    engine.read_stream = fail  # type: ignore[method-assign]
    try:
        body = client.get(f"/v2/latest/{AAPL}?tick_types=Last,BidAsk,mid_point").json()
    finally:
        engine.read_stream = original  # type: ignore[method-assign]
    assert body["contract_id"] == AAPL and body["tick_types"] == ["last", "bid_ask", "mid_point"]
    last = body["ticks"]["last"]
    assert last["seq"] == 6 and last["price"] == 231.5 and last["side"] == -1 and last["ts"] == now + 9
    assert last["type"] == "time_sales" and last["timestamp"] == iso_us(now + 9)
    assert body["ticks"]["bid_ask"]["bid_price"] == quote(now, 3)["bid_price"]
    assert body["ticks"]["mid_point"] is None
    assert client.get("/v2/latest/77").json()["error"]["code"] == "CONTRACT_NOT_FOUND"
    assert client.get(f"/v2/latest/{AAPL}?tick_types=nope").status_code == 422


def test_holdings_count_archived_and_hot_ticks_once(store: TickStore, clock: ManualClock) -> None:
    stream = StreamKey(CONTRACT, TickType.LAST)
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(10)], "t")
    clock.advance(20 * 60)  # the segment is sealed and can be archived
    store.run_archival()
    store.append_batch_sync(CONTRACT, "last", [trade(T0_NS + seconds(1000 + i), i) for i in range(5)], "t")
    (held,) = holdings(store, [stream])
    assert held["archived_ticks"] == 10 and held["archive_files"] >= 1
    assert held["hot_ticks"] == 15  # the hot tier still holds the archived ticks too
    assert held["tick_count"] == 15 and held["last_seq"] == 15
    assert held["first_time"] == iso_us(T0_NS) and held["last_time"] == iso_us(T0_NS + seconds(1004))
    assert holdings(store, [StreamKey(CONTRACT, TickType.BID_ASK)]) == []
