"""End to end: which live source the service runs with source `auto` and IB disabled — the simulator in a data
root of simulated data only, nothing (said in /health) in one holding imported or broker ticks."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from ib_stream.clock import SystemClock
from ib_stream.domain import TickType
from ib_stream.storage import TickStore
from tests.conftest import trade
from tests.e2e.conftest import AAPL, ES, start_server
from tests.e2e.conftest import test_settings as service_settings


def held(url: str) -> dict[tuple[int, str], int]:
    body = httpx.get(f"{url}/v2/contracts", timeout=5).json()
    return {(c["con_id"], s["tick_type"]): s["tick_count"] for c in body["contracts"] for s in c["streams"]}


def test_auto_never_simulates_into_a_data_root_holding_imported_ticks(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "storage", source="auto", ib={"enabled": False})
    with TickStore(settings.storage, SystemClock()) as store:  # an earlier import
        store.append_batch_sync(ES, TickType.LAST, [trade(time.time_ns() - 3600 * 10**9)], source="import")
    server, stop = start_server(settings, sources=None)
    try:
        assert server.state.source_name == "none" and server.state.streaming.sources == []
        time.sleep(1.0)  # the simulator (every 50 ms) would have stored ticks by now
        counts = held(server.url)
        assert counts[(ES, "last")] == 1 and sum(counts.values()) == 1
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        assert health["status"] == "degraded" and health["source"] == "none"
        assert health["recording"]["state"] == "not_recording" and not health["recording"]["ok"]
        assert f"{ES} (import)" in health["recording"]["detail"] and "ib.enabled" in health["recording"]["detail"]
    finally:
        stop()


def test_auto_simulates_in_a_data_root_of_simulated_ticks(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "storage", source="auto", ib={"enabled": False})
    server, stop = start_server(settings, sources=None)
    try:
        assert server.state.source_name == "sim"
        deadline = time.monotonic() + 10
        while held(server.url).get((AAPL, "bid_ask"), 0) == 0:
            assert time.monotonic() < deadline, "the simulator stored nothing"
            time.sleep(0.05)
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        assert health["status"] == "ok" and health["recording"]["state"] == "recording"
    finally:
        stop()
