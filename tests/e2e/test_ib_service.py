"""The service records from Interactive Brokers when configured: real ibapi client → fake TWS →
StreamingApp → store → /v2/historical; with IB enabled but unreachable it keeps retrying, records a
`broker_unreachable` gap, says so in /health, and never records the simulated market instead."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
from typer.testing import CliRunner

from ib_stream.cli import app
from ib_stream.times import iso_us
from tests.e2e.conftest import AAPL, REPO, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.support.fake_tws import AAPL as FAKE_AAPL
from tests.support.fake_tws import ES as FAKE_ES
from tests.support.fake_tws import FakeTWS, LastTick


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
            params = {"tick_types": "last", "start_time": iso_us((second - 60) * 10**9), "format": "json"}

            def stored() -> bool:
                return httpx.get(url, params=params, timeout=5).json()["count"] == len(sent)

            _wait(stored)
            rows = httpx.get(url, params=params, timeout=5).json()["data"]
            assert [(r["ts"] // 10**9, r["price"], r["size"]) for r in rows] == sent
            assert {r["source"] for r in rows} == {"ib_tbt"}
            assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
            # The source's state in /health and /metrics.
            ib = httpx.get(f"{server.url}/health", timeout=5).json()["sources"]["ib"]
            assert ib["connected"] is True and ib["port"] == tws.port
            assert ib["subscriptions"][str(AAPL)]["last"] == "tbt"
            metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
            assert 'ib_stream_source_connected{source="ib"} 1.0' in metrics
            assert 'ib_stream_source_reconnects_total{source="ib"} 0.0' in metrics
        finally:
            stop()


def test_auto_with_ib_enabled_but_unreachable_records_a_gap_and_no_simulated_ticks(tmp_path: Path) -> None:
    with FakeTWS([FAKE_AAPL]) as tws:
        dead_port = tws.port  # nothing listens here any more
    settings = service_settings(
        tmp_path / "storage",
        source="auto",
        ib={"enabled": True, "ports": (dead_port,), "reconnect_initial_seconds": 0.05, "reconnect_max_seconds": 0.2},
    )
    started = time.time_ns()
    server, stop = start_server(settings, sources=None)
    try:
        assert server.state.source_name == "ib"
        streams = [(c.con_id, t.value) for c in server.state.contracts if c.record for t in c.tick_types]
        coverage = {}

        def every_stream_in_a_broker_unreachable_gap() -> bool:
            for con_id in {c for c, _ in streams}:
                body = httpx.get(f"{server.url}/v2/contracts/{con_id}/coverage", timeout=5).json()
                for stream in body["streams"]:
                    coverage[(con_id, stream["tick_type"])] = stream["recorded_gaps"]
            return all(
                any(g["reason"] == "broker_unreachable" and g["end"] is None for g in coverage.get(s, []))
                for s in streams
            )

        _wait(every_stream_in_a_broker_unreachable_gap)
        for gaps in coverage.values():
            [gap] = [g for g in gaps if g["reason"] == "broker_unreachable"]
            assert f"ports {dead_port}" in gap["detail"]
            assert started - 10**9 <= pd.Timestamp(gap["start"]).value <= time.time_ns()  # from start-up on
        time.sleep(1.0)  # the simulator (every 50 ms) would have stored ticks by now
        body = httpx.get(f"{server.url}/v2/contracts", timeout=5).json()
        held = {(c["con_id"], s["tick_type"]): s["tick_count"] for c in body["contracts"] for s in c["streams"]}
        assert set(held.values()) == {0}, held
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        assert health["status"] == "degraded" and health["source"] == "ib"
        assert health["recording"]["state"] == "broker_unreachable" and not health["recording"]["ok"]
        assert str(dead_port) in health["recording"]["detail"]
        assert health["sources"]["ib"]["connected"] is False
    finally:
        stop()


def test_backfill_through_the_running_service_by_http_and_by_the_cli(tmp_path: Path) -> None:
    second = int(time.time()) - 120
    with FakeTWS([FAKE_AAPL, FAKE_ES]) as tws:
        tws.add_historical_ticks(AAPL, "TRADES", [LastTick(second + s, 230.0 + s, 3) for s in range(6)])
        settings = service_settings(
            tmp_path / "storage",
            source="ib",
            api={"token": "tok"},
            ib={"ports": (tws.port,), "client_id": 7, "reconnect_initial_seconds": 0.05},
        )
        server, stop = start_server(settings, sources=None)
        try:
            tws.wait_subscribed(AAPL, "reqTickByTickData", "Last", timeout=10)
            url = f"{server.url}/v2/contracts/{AAPL}/backfill"
            span = {
                "start_time": iso_us(second * 10**9),
                "end_time": iso_us((second + 3) * 10**9),
                "tick_types": "last",
            }
            assert httpx.post(url, params=span, timeout=30).status_code == 401
            auth = {"Authorization": "Bearer tok"}
            bad = httpx.post(url, params={**span, "end_time": span["start_time"]}, headers=auth, timeout=30)
            assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "end_time"
            depth_only = httpx.post(url, params={**span, "tick_types": "depth"}, headers=auth, timeout=30)
            assert depth_only.status_code == 422
            answer = httpx.post(url, params=span, headers=auth, timeout=30).json()
            assert [(r["tick_type"], r["received"], r["stored"]) for r in answer["results"]] == [("last", 3, 3)]
            # The CLI finds the data root locked by the service and asks the service.
            config = tmp_path / "cli.toml"
            config.write_text(
                f'contracts_file = "{REPO / "config" / "contracts.toml"}"\n'
                f'[storage]\ndata_root = "{tmp_path / "storage"}"\n'
                f'[api]\nhost = "127.0.0.1"\nport = {server.url.rsplit(":", 1)[1]}\n'
            )
            cli = CliRunner().invoke(
                app,
                ["--config", str(config), "backfill", "--contract", str(AAPL), "--tick-types", "last",
                 "--start", iso_us(second * 10**9), "--end", iso_us((second + 6) * 10**9)],
                env={"IB_STREAM_API__TOKEN": "tok"},
            )  # fmt: skip
            assert cli.exit_code == 0, cli.output
            assert "the service holds the data root" in cli.output
            assert ": 6 received, 3 stored, 3 already held" in cli.output
            params = {"tick_types": "last", "start_time": iso_us((second - 60) * 10**9), "format": "json"}
            rows = httpx.get(f"{server.url}/v2/historical/{AAPL}", params=params, timeout=5).json()["data"]
            assert [(r["ts"] // 10**9 - second, r["price"], r["source"]) for r in rows] == [
                (s, 230.0 + s, "ib_hist") for s in range(6)
            ]
        finally:
            stop()
