"""End-to-end: live order-flow bars over SSE and WebSocket against a real server — upserts of the
forming bar (same ts → replace, new ts → append, final once the next bar starts) with values checked
against a pandas resample and plain Python CVD / OBI, history bars from the store before live, alerts
pushed on the stream and queryable at /v2/alerts, and 4xx errors naming the field."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from websockets.sync.client import connect

from ib_stream.alerts.engine import AlertEngine, stop_task
from ib_stream.clock import NS_PER_SECOND
from ib_stream.live_settings import AlertsConfig, ObiImbalanceRule
from tests.e2e.conftest import AAPL, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.e2e.test_live_sse import Event, SSEStream, is_kind, sse, wait_for

MINUTE = 60 * NS_PER_SECOND
RULES = AlertsConfig(rules=(ObiImbalanceRule(threshold=0.5, bars=1),))


@pytest.fixture
def server(live_server: LiveServer, tmp_path: Path) -> Iterator[LiveServer]:
    """The live server with an alert engine of known rules (the test service runs none of its own)."""
    state = live_server.state
    before = state.alerts
    subscribers = state.streaming.subscriber_count

    async def start() -> tuple[AlertEngine, asyncio.Task[None]]:
        engine = AlertEngine.open(RULES, tmp_path / "alerts")
        return engine, asyncio.get_running_loop().create_task(engine.run(state.streaming))

    engine, task = live_server.run(start())
    state.alerts = engine
    wait_for(lambda: state.streaming.subscriber_count >= subscribers + len(state.contracts))
    yield live_server
    live_server.run(stop_task(task))
    engine.close()
    state.alerts = before


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(15.0)) as c:
        yield c


def next_minute() -> int:
    now = time.time_ns()
    return now - now % MINUTE + MINUTE


def market(base: int, minutes: int) -> tuple[list[dict], list[dict]]:
    """Per minute: 4 quotes (minute 0 bid-heavy: OBI 0.8, then balanced-ish) and 5 trades with recorded sides."""
    quotes, trades = [], []
    for m in range(minutes):
        for k in range(4):
            bid_size, ask_size = (900.0, 100.0) if m == 0 else (300.0 + 10 * k, 400.0)
            quotes.append({"ts": base + m * MINUTE + k * 15 * NS_PER_SECOND, "bid_price": 99.99 + m,
                           "ask_price": 100.01 + m, "bid_size": bid_size, "ask_size": ask_size})  # fmt: skip
        for k in range(5):
            trades.append({"ts": base + m * MINUTE + (k * 11 + 1) * NS_PER_SECOND, "price": 100.0 + m + k * 0.25,
                           "size": float(1 + k + m), "side": 1 if (k + m) % 3 else -1})  # fmt: skip
    return quotes, trades


def expected_bars(quotes: list[dict], trades: list[dict]) -> dict[int, dict[str, float]]:
    """Closed-bar values computed here: pandas resample for OHLC and volume, plain Python for CVD and OBI."""
    frame = pd.DataFrame(trades, index=pd.to_datetime([t["ts"] for t in trades], unit="ns"))
    ohlc = frame["price"].resample("1min").ohlc().join(frame["size"].resample("1min").sum())
    out = {}
    for stamp, row in ohlc.iterrows():
        start = int(pd.Timestamp(stamp).value)
        inside = [t for t in trades if start <= t["ts"] < start + MINUTE]
        before = sum(t["side"] * t["size"] for t in trades if t["ts"] < start)
        path = [before + sum(t["side"] * t["size"] for t in inside[: i + 1]) for i in range(len(inside))]
        obi = [(q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]) for q in quotes
               if start <= q["ts"] < start + MINUTE]  # fmt: skip
        carried = [(q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]) for q in quotes if q["ts"] < start]
        open_obi = carried[-1] if carried else obi[0]
        out[start] = {
            "open": row["open"], "high": row["high"], "low": row["low"], "close": row["close"], "volume": row["size"],
            "buy_volume": sum(t["size"] for t in inside if t["side"] == 1),
            "sell_volume": sum(t["size"] for t in inside if t["side"] == -1),
            "delta": path[-1] - before, "cvd_open": before, "cvd_close": path[-1],
            "cvd_high": max([before, *path]), "cvd_low": min([before, *path]),
            "obi_open": open_obi, "obi_close": obi[-1], "obi_high": max([open_obi, *obi]),
            "obi_low": min([open_obi, *obi]),
        }  # fmt: skip
    return out


def assert_bar(got: dict[str, Any], want: dict[str, float]) -> None:
    for name, value in want.items():
        assert got[name] == pytest.approx(value), (got["timestamp"], name)


def publish_minute(server: LiveServer, quotes: list[dict], trades: list[dict], base: int, minute: int) -> None:
    """Publish a minute of ticks, the service's clock moved to its end first (ticks from the future are refused)."""
    lo, hi = base + minute * MINUTE, base + (minute + 1) * MINUTE
    assert server.clock is not None
    server.clock.advance_to(hi)
    server.publish(AAPL, "bid_ask", [q for q in quotes if lo <= q["ts"] < hi])
    server.publish(AAPL, "last", [t for t in trades if lo <= t["ts"] < hi])


def bars_of(events: list[Event]) -> list[dict[str, Any]]:
    return [e.data["data"] for e in events if e.kind == "bar" and e.data]


def test_forming_bars_are_upserted_then_final_with_the_right_values_and_the_alert_arrives(
    server: LiveServer, client: httpx.Client
) -> None:
    base = next_minute()
    quotes, trades = market(base, 3)
    path = f"/v2/stream/{AAPL}/bars?resolution=1m&obi_source=quotes&timeout=30"
    with sse(client, path) as stream:
        head = stream.until(is_kind("info", "live_start"))
        subscribed = head[0].data["data"]
        assert subscribed["status"] == "subscribed" and subscribed["kinds"] == ["ohlc", "cvd", "obi"]
        assert subscribed["obi_source"] == "quotes" and subscribed["alerts"] is True
        assert bars_of(head) == []  # nothing stored yet
        events: list[Event] = []
        for minute in range(3):
            publish_minute(server, quotes, trades, base, minute)
            events += until_bar(stream, base + minute * MINUTE)
        if not any(e.kind == "alert" for e in events):
            events += stream.until(lambda e: e.kind == "alert")
    bars = bars_of(events)
    # Upserts: one ts per bar, in order; a bar is sent forming (final false) and again final once the next starts.
    upserted: dict[int, dict[str, Any]] = {}
    for bar in bars:
        assert bar["ts"] in upserted or not upserted or bar["ts"] > max(upserted)
        assert not upserted.get(bar["ts"], {}).get("final") or bar["final"]
        upserted[bar["ts"]] = bar
    assert sorted(upserted) == [base, base + MINUTE, base + 2 * MINUTE]
    assert [b["final"] for b in (upserted[t] for t in sorted(upserted))] == [True, True, False]
    assert any(not b["final"] for b in bars if b["ts"] == base)  # minute 0 was first sent while forming
    want = expected_bars(quotes, trades)
    for ts in (base, base + MINUTE):
        assert_bar(upserted[ts], want[ts])
    # The bid-heavy first minute (OBI 0.8 ≥ 0.5) fired once, when it closed.
    alerts = [e.data["data"] for e in events if e.kind == "alert"]
    assert len(alerts) == 1 and alerts[0]["kind"] == "obi_imbalance" and alerts[0]["direction"] == "bid"
    assert alerts[0]["bar_ts"] == base and alerts[0]["ts"] == base + MINUTE
    history = client.get("/v2/alerts", params={"contract_id": AAPL}).json()
    assert history["enabled"] and [a["id"] for a in history["alerts"]] == [alerts[0]["id"]]
    assert history["alerts"][0] == alerts[0]  # the event's data is the history's object, times included
    later = pd.Timestamp(base + MINUTE + 1, unit="ns", tz="UTC").isoformat()
    assert client.get("/v2/alerts", params={"since": later}).json()["alerts"] == []
    assert client.get("/v2/alerts/rules").json()["rules"][0]["kind"] == "obi_imbalance"


def until_bar(stream: SSEStream, ts: int) -> list[Event]:
    """Events until a bar with this ts and the trades of its minute (5) has been upserted."""
    return stream.until(lambda e: e.kind == "bar" and e.data["data"]["ts"] == ts and e.data["data"]["trade_count"] == 5)


def test_history_bars_come_first_from_the_store_then_the_live_forming_bar(
    server: LiveServer, client: httpx.Client
) -> None:
    if time.time_ns() % MINUTE > 50 * NS_PER_SECOND:  # keep the bar in progress the same while the test runs
        time.sleep((MINUTE - time.time_ns() % MINUTE) / NS_PER_SECOND + 0.05)
    now = time.time_ns()
    base = now - now % MINUTE - 3 * MINUTE  # three closed minutes, then the minute in progress
    quotes, trades = market(base, 4)
    now_bar = base + 3 * MINUTE
    server.publish(AAPL, "bid_ask", [q for q in quotes if q["ts"] < now])
    server.publish(AAPL, "last", [t for t in trades if t["ts"] < now])
    with sse(client, f"/v2/stream/{AAPL}/bars?resolution=1m&obi_source=quotes&history=3&kinds=ohlc,cvd&alerts=false") as stream:  # fmt: skip
        head = stream.until(is_kind("info", "live_start"))
        opened = time.time_ns()
        assert opened - opened % MINUTE == now_bar, "the test took more than 10 s to set up"
        first = bars_of(head)
        assert [b["ts"] for b in first] == [base, base + MINUTE, base + 2 * MINUTE, now_bar]
        assert [b["final"] for b in first] == [True, True, True, False]
        assert "obi_open" not in first[0] and "cvd_close" in first[0]
        want = expected_bars(quotes, [t for t in trades if t["ts"] < now])
        for bar in first[:3]:
            assert_bar(bar, {k: v for k, v in want[bar["ts"]].items() if not k.startswith("obi")})
        # A live trade lands in the forming bar, which continues from the stored part of it.
        tick = {"ts": max(now, now_bar + 1), "price": 77.0, "size": 2.0, "side": 1}
        server.publish(AAPL, "last", [tick])
        bar = stream.until(lambda e: e.kind == "bar" and e.data["data"]["close"] == 77.0)[-1].data["data"]
    with sse(client, f"/v2/stream/{AAPL}/bars?resolution=1m&history=3&limit=2&alerts=false") as stream:
        ended = stream.rest()  # the limit is reached by the bars already held: no live part
    assert [e.kind for e in ended] == ["info", "bar", "bar", "complete"]
    assert ended[-1].data["data"]["reason"] == "limit_reached" and ended[1].data["data"]["ts"] == base
    stored = [t for t in trades if now_bar <= t["ts"] < now]
    assert bar["ts"] == now_bar and bar["trade_count"] == len(stored) + 1
    assert bar["cvd_close"] == pytest.approx(sum(t["side"] * t["size"] for t in trades if t["ts"] < now) + 2.0)


def test_websocket_variant_sends_the_same_messages(server: LiveServer) -> None:
    base = next_minute()
    quotes, trades = market(base, 2)
    url = server.url.replace("http://", "ws://") + f"/v2/ws/bars/{AAPL}?resolution=1m&kinds=ohlc&limit=4"
    with connect(url, open_timeout=10) as socket:
        messages = [json.loads(socket.recv(timeout=10)) for _ in range(2)]
        assert [m["data"]["status"] for m in messages] == ["subscribed", "live_start"]
        assert messages[0]["data"]["obi_source"] == "auto"
        publish_minute(server, quotes, trades, base, 0)
        publish_minute(server, quotes, trades, base, 1)
        while messages[-1]["type"] != "complete":
            messages.append(json.loads(socket.recv(timeout=10)))
    bars = [m["data"] for m in messages if m["type"] == "bar"]
    assert len(bars) == 4 and messages[-1]["data"]["reason"] == "limit_reached"
    # Minute 0: opened by its quotes, replaced with its trades, final once minute 1's quotes arrive.
    assert [b["ts"] for b in bars] == [base, base, base, base + MINUTE]
    assert [(b["final"], b["trade_count"]) for b in bars] == [(False, 0), (False, 5), (True, 5), (False, 0)]
    want = expected_bars(quotes, trades)[base]
    assert_bar(bars[2], {k: want[k] for k in ("open", "high", "low", "close", "volume", "buy_volume")})
    assert "cvd_close" not in bars[2]


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("resolution=1d", 422, "resolution"),
        ("resolution=2m", 422, "resolution"),
        ("kinds=ohlc,volume", 422, "kinds"),
        ("history=99999", 422, "history"),
        ("obi_source=magic", 422, "obi_source"),
        ("session=overnight_nope", 422, "session"),
        ("trades=bid_ask", 422, "trades"),
        ("levels=0", 422, "levels"),
    ],
)
def test_bad_parameters_are_4xx_errors_naming_the_field(
    client: httpx.Client, query: str, status: int, field: str
) -> None:
    response = client.get(f"/v2/stream/{AAPL}/bars?{query}")
    assert response.status_code == status, response.text
    assert response.json()["error"]["details"]["field"] == field


def test_unknown_contract_and_bad_since(client: httpx.Client) -> None:
    response = client.get("/v2/stream/1/bars")
    assert response.status_code == 404 and response.json()["error"]["code"] == "CONTRACT_NOT_FOUND"
    response = client.get("/v2/alerts", params={"since": "yesterday"})
    assert response.status_code == 422 and response.json()["error"]["details"]["field"] == "since"


def test_the_service_runs_the_alert_engine_and_the_json_sink_from_its_settings(tmp_path: Path) -> None:
    viz = tmp_path / "viz"
    settings = service_settings(
        tmp_path / "storage",
        # No lateness allowance: these 1.2 s of ticks are all there is, so a bar is final once the next one starts.
        alerts={"enabled": True, "resolution": "1s", "lateness_seconds": 0,
                "rules": [{"kind": "obi_imbalance", "threshold": 0.5, "bars": 1}]},
        json_sink={"enabled": True, "directory": str(viz), "contract_id": AAPL, "resolution": "1s",
                   "min_write_interval_ms": 20, "window": 5, "lateness_seconds": 0},
    )  # fmt: skip
    server, stop = start_server(settings)
    try:
        rules = httpx.get(f"{server.url}/v2/alerts/rules", timeout=10).json()
        assert rules["enabled"] and [r["kind"] for r in rules["rules"]] == ["obi_imbalance"]
        for i in range(12):  # live ticks, stamped now: a 1-second bar builder drops ticks older than a bar
            now = time.time_ns()
            server.publish(AAPL, "bid_ask", [{"ts": now, "bid_price": 99.9, "ask_price": 100.1, "bid_size": 900.0,
                                              "ask_size": 100.0}])  # fmt: skip
            server.publish(AAPL, "last", [{"ts": now + 1, "price": 100.0 + i, "size": 1.0 + i, "side": 1}])
            time.sleep(0.1)

        def ohlc() -> list[list[float]] | None:
            try:
                rows = json.loads((viz / "ohlc_data.json").read_text())
            except (FileNotFoundError, ValueError):
                return None
            return rows if rows and rows[-1][4] == 111.0 else None

        rows = poll(ohlc)
        assert len(rows) <= 5  # the window
        assert json.loads((viz / "metrics_data.json").read_text())
        assert set(json.loads((viz / "depth_data.json").read_text())) == {"bids", "asks"}
        alerts = poll(lambda: httpx.get(f"{server.url}/v2/alerts", params={"contract_id": AAPL}, timeout=10)
                      .json()["alerts"])  # fmt: skip
        assert alerts and alerts[0]["rule"].startswith("obi_imbalance")
    finally:
        stop()


def poll(fetch: Any, timeout: float = 15.0) -> Any:
    """Call `fetch` until it returns something truthy (bounded); return it."""
    deadline = time.monotonic() + timeout
    while not (value := fetch()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value
