"""The service records from Interactive Brokers when configured: real ibapi client → fake TWS →
StreamingApp → store → /v2/historical; with IB configured but unreachable it says so and records
the simulated market."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from ib_stream.api.params import iso
from tests.e2e.conftest import AAPL, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.support.fake_tws import AAPL as FAKE_AAPL
from tests.support.fake_tws import ES as FAKE_ES
from tests.support.fake_tws import FakeTWS


def _wait(predicate: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_source_ib_records_the_ticks_tws_sends(tmp_path: Path) -> None:
    with FakeTWS([FAKE_AAPL, FAKE_ES]) as tws:
        settings = service_settings(
            tmp_path / "storage",
            source="ib",
            ib={"ports": (tws.port,), "client_id": 7, "reconnect_initial_seconds": 0.05},
        )
        server, stop = start_server(settings, sources=None)
        try:
            assert server.state.source_name == "ib"
            tws.wait_subscribed(AAPL, "reqTickByTickData", "Last", timeout=10)
            second = int(time.time())
            sent = [(second, 230.0 + i / 100, float(i + 1)) for i in range(5)]
            for t, price, size in sent:
                tws.emit_tick_by_tick(AAPL, "Last", time=t, price=price, size=size, exchange="NASDAQ")
            url = f"{server.url}/v2/historical/{AAPL}"
            params = {"tick_types": "last", "start_time": iso((second - 60) * 10**9), "format": "json"}

            def stored() -> bool:
                return httpx.get(url, params=params, timeout=5).json()["count"] == len(sent)

            _wait(stored)
            rows = httpx.get(url, params=params, timeout=5).json()["data"]
            assert [(r["ts"] // 10**9, r["price"], r["size"]) for r in rows] == sent
            assert {r["source"] for r in rows} == {"ib_tbt"}
            assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
        finally:
            stop()


def test_auto_with_ib_configured_but_unreachable_records_the_simulated_market(tmp_path: Path) -> None:
    with FakeTWS([FAKE_AAPL]) as tws:
        dead_port = tws.port
    settings = service_settings(tmp_path / "storage", source="auto", ib={"enabled": True, "ports": (dead_port,)})
    server, stop = start_server(settings, sources=None)
    try:
        assert server.state.source_name == "sim"
    finally:
        stop()
