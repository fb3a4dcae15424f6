"""End to end: `POST /v2/ticks` — bearer token, durable append seen live, idempotency, rejected ticks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ib_stream.domain import TickType
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MS = 1_000_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live, stop = start_server(service_settings(tmp_path / "storage", api={"token": TOKEN}))
    yield live
    stop()


def batch(n: int = 3, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contract_id": AAPL,
        "tick_type": "last",
        "ticks": [trade(T0_NS + i * MS, i) for i in range(n)],
        "source": "producer-1",
    }
    body.update(over)
    return body


def post(server: LiveServer, body: Any, headers: dict[str, str] | None = AUTH) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/ticks", json=body, headers=headers or {}, timeout=10)


def stored(server: LiveServer, tick_type: str = "last") -> Any:
    return server.run(server.state.query.query_range(AAPL, tick_type, T0_NS - 10**12, T0_NS + 10**12))


def test_disabled_without_a_configured_token(live_server: LiveServer) -> None:
    for headers in (None, AUTH):
        response = post(live_server, batch(), headers)
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "INGEST_DISABLED" and "api.token" in error["message"]
    assert len(stored(live_server)) == 0


@pytest.mark.parametrize(
    "headers", [None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]
)
def test_missing_or_wrong_token_is_401(server: LiveServer, headers: dict[str, str] | None) -> None:
    response = post(server, batch(), headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
    assert len(stored(server)) == 0


def test_authorised_batch_is_stored_and_seen_live(server: LiveServer) -> None:
    subscription = server.run(_subscribe(server))
    response = post(server, batch(5))
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("contract_id", "tick_type", "first_seq", "last_seq", "count", "rejected")} == {
        "contract_id": AAPL,
        "tick_type": "last",
        "first_seq": 1,
        "last_seq": 5,
        "count": 5,
        "rejected": [],
    }
    frame = stored(server)
    assert frame["seq"].tolist() == [1, 2, 3, 4, 5]
    assert set(frame["source"]) == {"producer-1"}
    live = server.run(subscription.get(5))
    assert [record["seq"] for _, record in live] == [1, 2, 3, 4, 5]
    # The next batch continues the stream's sequence; PascalCase names are accepted.
    again = post(server, batch(2, tick_type="Last")).json()
    assert (again["first_seq"], again["last_seq"]) == (6, 7)


async def _subscribe(server: LiveServer) -> Any:
    return server.state.streaming.subscribe(AAPL, [TickType.LAST])


def test_retry_with_the_same_idempotency_key_stores_once(server: LiveServer) -> None:
    body = batch(4, idempotency_key="batch-0001")
    first = post(server, body).json()
    second = post(server, body).json()
    assert first["replayed"] is False and second["replayed"] is True
    assert {k: v for k, v in first.items() if k != "replayed"} == {k: v for k, v in second.items() if k != "replayed"}
    assert len(stored(server)) == 4
    # The same key for a different batch is a conflict, and stores nothing.
    conflict = post(server, batch(1, idempotency_key="batch-0001"))
    assert conflict.status_code == 409
    assert conflict.json()["error"]["details"] == {"field": "idempotency_key", "value": "batch-0001"}
    assert len(stored(server)) == 4
    # Another key is another batch.
    assert post(server, batch(4, idempotency_key="batch-0002")).json()["first_seq"] == 5


def test_concurrent_retries_store_once(server: LiveServer) -> None:
    body = batch(200, idempotency_key="concurrent")

    async def send_all() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10) as client:
            responses = await asyncio.gather(*(client.post("/v2/ticks", json=body) for _ in range(8)))
        return [r.json() for r in responses]

    results = asyncio.run(send_all())
    assert sorted(r["replayed"] for r in results) == [False] + [True] * 7
    assert {(r["first_seq"], r["last_seq"]) for r in results} == {(1, 200)}
    assert len(stored(server)) == 200


def test_a_bad_tick_rejects_the_batch_naming_index_field_and_value(server: LiveServer) -> None:
    ticks = [trade(T0_NS, 0), trade(T0_NS + MS, 1, price=-2.5), trade(T0_NS + 2 * MS, 2)]
    response = post(server, batch(ticks=ticks, idempotency_key="bad"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_TICK"
    assert error["details"] == {"field": "price", "value": -2.5, "tick_type": "last", "index": 1}
    assert "price" in error["message"] and "-2.5" in error["message"]
    assert len(stored(server)) == 0
    # A failed batch is not remembered: the corrected retry with the same key is stored.
    ticks[1]["price"] = 2.5
    assert post(server, batch(ticks=ticks, idempotency_key="bad")).json()["count"] == 3


def test_skip_stores_the_good_ticks_and_reports_the_others(server: LiveServer) -> None:
    ticks: list[Any] = [
        quote(T0_NS, 0),
        quote(T0_NS + MS, 1, ask_price="high"),
        {"ts": 1_736_517_600, "bid_price": 1.0, "bid_size": 1.0, "ask_price": 1.0, "ask_size": 1.0},  # seconds
        quote(T0_NS + 3 * MS, 3, seq=9),
        quote(T0_NS + 4 * MS, 4),
    ]
    body = post(server, batch(ticks=ticks, tick_type="bid_ask", on_error="skip")).json()
    assert (body["count"], body["first_seq"], body["last_seq"]) == (2, 1, 2)
    assert [(r["index"], r["field"], r["value"]) for r in body["rejected"]] == [
        (1, "ask_price", "high"),
        (2, "ts", 1_736_517_600),
        (3, "seq", 9),
    ]
    assert all(r["message"] for r in body["rejected"])
    assert stored(server, "bid_ask")["timestamp"].astype("int64").tolist() == [T0_NS, T0_NS + 4 * MS]
    # All rejected: nothing stored, no seq given.
    nothing = post(server, batch(ticks=[{"ts": 1}], on_error="skip")).json()
    assert (nothing["count"], nothing["first_seq"], nothing["last_seq"]) == (0, None, None)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"contract_id": 7}, 404, "contract_id"),
        ({"tick_type": "trades"}, 422, "tick_type"),
        ({"ticks": []}, 422, "ticks"),
        ({"ticks": [1, 2]}, 422, "ticks.0"),
        ({"on_error": "ignore"}, 422, "on_error"),
        ({"source": ""}, 422, "source"),
        ({"unknown": 1}, 422, "unknown"),
        ({"contract_id": "AAPL"}, 422, "contract_id"),
    ],
    ids=lambda v: str(v),
)
def test_bad_batches_are_4xx_naming_the_field(
    server: LiveServer, change: dict[str, Any], status: int, field: str
) -> None:
    response = post(server, batch(**change))
    assert response.status_code == status, response.text
    assert response.json()["error"]["details"]["field"] == field
    assert len(stored(server)) == 0


def test_ingest_outcomes_are_counted(server: LiveServer) -> None:
    post(server, batch(1, idempotency_key="m"))
    post(server, batch(1, idempotency_key="m"))
    post(server, batch(ticks=[{"ts": 1}]))
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for outcome, value in (("stored", 1.0), ("replayed", 1.0), ("rejected", 1.0)):
        assert f'ib_stream_ingest_batches_total{{outcome="{outcome}"}} {value}' in text


def test_an_integer_too_large_for_a_float_is_a_422(server: LiveServer) -> None:
    response = post(server, batch(ticks=[trade(T0_NS, 0, price=10**400)]))
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "price"


# ---- event time: a tick from the future is refused -------------------------------------------------------------
YEAR_NS = 365 * 86_400 * 10**9


def held_since(server: LiveServer, since: int) -> Any:
    return server.run(server.state.query.query_range(AAPL, "last", since, since + 20 * YEAR_NS))


def test_a_tick_ten_years_ahead_is_refused_naming_it_and_nothing_of_the_batch_is_stored(server: LiveServer) -> None:
    now = server.state.clock.now_ns()
    future = now + 10 * YEAR_NS  # the tester's 2036 tick
    body = batch(source="producer-1", ticks=[trade(now - 2 * 10**9, 0), trade(future, 1)])
    response = post(server, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_TICK"
    details = error["details"]
    assert (details["index"], details["field"], details["value"], details["tick_type"]) == (1, "ts", future, "last")
    limit = details["limit_ns"]
    assert now + 60 * 10**9 <= limit <= server.state.clock.now_ns() + 60 * 10**9  # the default skew: 60 s
    assert details["setting"] == "api.max_future_skew_seconds" and details["max_future_skew_seconds"] == 60
    assert str(future) in error["message"] and details["limit"] in error["message"]
    assert "api.max_future_skew_seconds" in error["message"]
    assert len(held_since(server, now - 10 * 10**9)) == 0  # not even the good first tick
    assert server.state.streaming.stats.future_ticks_refused == 1
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "ib_stream_future_ticks_refused_total 1.0" in metrics


def test_with_skip_the_future_tick_is_listed_and_the_others_are_stored(server: LiveServer) -> None:
    now = server.state.clock.now_ns()
    ticks = [trade(now - 3 * 10**9, 0), trade(now + 10 * YEAR_NS, 1), {"ts": now, "price": -1.0,
             "size": 1.0}, trade(now - 10**9, 3)]  # fmt: skip
    response = post(server, batch(ticks=ticks, on_error="skip"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2 and (body["first_seq"], body["last_seq"]) == (1, 2)
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, "ts"), (2, "price")]
    held = held_since(server, now - 10 * 10**9)
    assert [int(t.value) for t in held["timestamp"]] == [now - 3 * 10**9, now - 10**9]


def test_a_tick_slightly_ahead_within_the_skew_is_stored(tmp_path: Path) -> None:
    live, stop = start_server(
        service_settings(tmp_path / "storage", api={"token": TOKEN, "max_future_skew_seconds": 5})
    )
    try:
        now = live.state.clock.now_ns()
        assert post(live, batch(ticks=[trade(now + 2 * 10**9)])).status_code == 200
        refused = post(live, batch(ticks=[trade(now + 30 * 10**9)]))
        assert refused.status_code == 422 and refused.json()["error"]["details"]["max_future_skew_seconds"] == 5
        assert len(held_since(live, now - 10**9)) == 1
    finally:
        stop()
