"""End to end: `GET /v2/depth/{contract_id}` on a real server — the book at an instant equals an independent replay."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ib_stream.api.routes import depth
from ib_stream.store.layout import HOUR_NS
from ib_stream.store.snapshots import SnapshotWriter
from ib_stream.times import iso_ns
from tests.e2e.conftest import AAPL, LiveServer

HOURS = 3


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """The live service with the depth route (included here while the app does not register it)."""
    if not any(getattr(route, "path", "") == "/v2/depth/{contract_id}" for route in live_server.app.routes):
        live_server.app.include_router(depth.router)
    return live_server


def ib_rows(start_ns: int, count: int, seed: int = 3) -> list[dict[str, Any]]:
    """IB-like position depth over HOURS hours: initial inserts, then updates with some inserts and deletes."""
    rng = random.Random(seed)
    ticks: list[dict[str, Any]] = []
    held = {"bid": 0, "ask": 0}
    step = HOURS * HOUR_NS // count
    for i in range(count):
        side = rng.choice(("bid", "ask"))
        r = rng.random()
        if held[side] < 5 or (r < 0.1 and held[side] < 10):
            op, pos = "insert", rng.randint(0, held[side])
            held[side] += 1
        elif r < 0.2:
            op, pos = "delete", rng.randint(0, held[side] - 1)
            held[side] -= 1
        else:
            op, pos = "update", rng.randint(0, held[side] - 1)
        sign = -1 if side == "bid" else 1
        price = round(230.0 + sign * (0.01 + pos * 0.01 + rng.randint(0, 2) * 0.01), 2)
        ticks.append({"ts": start_ns + i * step, "side": side, "position": pos, "operation": op, "price": price,
                      "size": float(rng.randint(1, 40) * 100), "market_maker": ""})  # fmt: skip
    return ticks


def reference(ticks: list[dict[str, Any]], at_ns: int) -> dict[str, list[list[float]]]:
    """IB's row semantics replayed plainly over the ticks stamped at or before at_ns."""
    rows: dict[str, list[list[float]]] = {"bid": [], "ask": []}
    for t in ticks:
        if t["ts"] > at_ns:
            break
        side = rows[t["side"]]
        if t["operation"] == "insert":
            side.insert(t["position"], [t["price"], t["size"]])
        elif t["operation"] == "update":
            side[t["position"]] = [t["price"], t["size"]]
        else:
            del side[t["position"]]
    return rows


@pytest.fixture
def recorded(server: LiveServer) -> Iterator[tuple[LiveServer, list[dict[str, Any]], int]]:
    closed = server.state.clock.now_ns() - 120 * 10**9  # clear of the writer's grace at the top of an hour
    start = closed - closed % HOUR_NS - HOURS * HOUR_NS  # three closed hours
    ticks = ib_rows(start, 3000)
    for i in range(0, len(ticks), 500):
        server.publish(AAPL, "depth", ticks[i : i + 500])
    report = SnapshotWriter.for_engine(server.store.engine).update()
    assert report.written == HOURS
    yield server, ticks, start


def test_the_book_at_an_instant_equals_a_replay(recorded: tuple[LiveServer, list[dict[str, Any]], int]) -> None:
    server, ticks, start = recorded
    for at_ns in (start + HOUR_NS + 123_456_789, start + 2 * HOUR_NS + 17 * 60 * 10**9, ticks[-1]["ts"]):
        at = iso_ns(at_ns)
        response = httpx.get(f"{server.url}/v2/depth/{AAPL}", params={"at": at, "levels": 3}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = reference(ticks, at_ns)
        assert body["contract_id"] == AAPL and body["at"] == at and body["levels"] == 3
        assert body["mode"] == "position_rows"
        assert body["bids"] == expected["bid"][:3] and body["asks"] == expected["ask"][:3]
        for side in ("bid", "ask"):
            running, cumulative = 0.0, []
            for price, size in expected[side][:3]:
                running += size
                cumulative.append([price, running])
            assert body["cumulative"][f"{side}s"] == cumulative
        hour = at_ns - at_ns % HOUR_NS
        assert body["snapshot_used"] == iso_ns(hour)
        assert body["deltas_replayed"] == sum(1 for t in ticks if hour <= t["ts"] <= at_ns)
        assert body["last_update"] == iso_ns(max(t["ts"] for t in ticks if t["ts"] <= at_ns))


def test_defaults_now_and_ten_levels(recorded: tuple[LiveServer, list[dict[str, Any]], int]) -> None:
    server, ticks, start = recorded
    body = httpx.get(f"{server.url}/v2/depth/{AAPL}", timeout=30).json()
    expected = reference(ticks, ticks[-1]["ts"])
    assert body["levels"] == 10 and body["bids"] == expected["bid"][:10] and body["asks"] == expected["ask"][:10]
    assert body["snapshot_used"] == iso_ns(start + HOURS * HOUR_NS) and body["deltas_replayed"] == 0


def test_before_any_depth_the_book_is_empty(server: LiveServer) -> None:
    body = httpx.get(f"{server.url}/v2/depth/{AAPL}", params={"at": "2001-01-01T00:00:00Z"}, timeout=30).json()
    assert body["bids"] == [] and body["asks"] == [] and body["mode"] is None
    assert body["snapshot_used"] is None and body["deltas_replayed"] == 0 and body["last_update"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"at": "2025-01-10T14:00:00"}, "at"),  # no offset
        ({"at": "yesterday"}, "at"),
        ({"levels": 0}, "levels"),
        ({"levels": 1001}, "levels"),
        ({"levels": "ten"}, "levels"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(server: LiveServer, params: dict[str, Any], field: str) -> None:
    response = httpx.get(f"{server.url}/v2/depth/{AAPL}", params=params, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == field and field in error["message"]


def test_an_unknown_contract_is_404(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/v2/depth/999999", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "CONTRACT_NOT_FOUND"
