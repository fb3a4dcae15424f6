"""End to end: /health, /ready, /metrics, /v2/contracts and coverage — against archived and hot data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import TickValidationError
from ib_stream.store.gaps import GapReason
from ib_stream.streaming import Subscription
from tests.conftest import T0, T0_NS, quote, seconds, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

MS = 1_000_000
HOUR_NS = seconds(3600)


def start_clocked_server(data_root: Path, clock: ManualClock) -> tuple[LiveServer, Any]:
    """The harness's server, with the app built on a manual clock (so segments can be sealed and archived)."""
    return start_server(service_settings(data_root), clock=clock)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[LiveServer, ManualClock]]:
    clock = ManualClock(T0)
    server, stop = start_clocked_server(tmp_path / "storage", clock)
    yield server, clock
    stop()


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics as {name{labels}: value}."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_health_is_ok(live_server: LiveServer) -> None:
    body = httpx.get(f"{live_server.url}/health", timeout=10).json()
    assert body["status"] == "ok" and body["source"] == "none" and body["uptime_seconds"] >= 0
    assert body["time"].endswith("Z")


def test_ready_follows_the_service_state(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/ready", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert all(check["ok"] for check in response.json()["checks"].values())
    live_server.state.ready = False  # what the lifespan sets while stopping
    try:
        response = httpx.get(f"{live_server.url}/ready", timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready" and body["checks"]["startup"]["ok"] is False
        assert body["checks"]["store"]["ok"] is True
    finally:
        live_server.state.ready = True


def test_metrics_move_with_ingest_queries_and_subscribers(live_server: LiveServer) -> None:
    before = scrape(live_server.url)
    for name in (
        "ib_stream_ticks_written_total",
        "ib_stream_ticks_published_total",
        "ib_stream_ticks_rejected_total",
        "ib_stream_fsync_seconds_count",
        "ib_stream_fsync_seconds_sum",
        "ib_stream_pending_writes",
        "ib_stream_fanout_lag_seconds",
        "ib_stream_live_subscribers",
        "ib_stream_slow_subscriber_disconnects_total",
        "ib_stream_query_cache_hits_total",
        "ib_stream_query_cache_misses_total",
        "ib_stream_query_cache_hit_ratio",
        "ib_stream_ready",
    ):
        assert name in before, name
    assert before["ib_stream_ticks_written_total"] == 0 and before["ib_stream_ready"] == 1

    live_server.publish(AAPL, "last", [trade(T0_NS + i * MS, i) for i in range(250)])
    with pytest.raises(TickValidationError, match="must not be negative"):
        live_server.publish(AAPL, "last", [trade(T0_NS, 0, price=-1.0)])
    subscription = live_server.run(_subscribe(live_server))
    params = {"tick_types": "last", "start_time": "2025-01-10T14:00:00Z", "end_time": "2025-01-10T15:00:00Z"}
    for _ in range(2):  # a miss, then a hit
        assert httpx.get(f"{live_server.url}/v2/historical/{AAPL}", params=params, timeout=10).status_code == 200

    after = scrape(live_server.url)
    assert after["ib_stream_ticks_written_total"] == 250
    assert after["ib_stream_ticks_published_total"] == 250
    assert after["ib_stream_ticks_rejected_total"] == 1
    assert after["ib_stream_fsync_seconds_count"] > before["ib_stream_fsync_seconds_count"]
    assert after["ib_stream_live_subscribers"] == 1
    assert after["ib_stream_fanout_lag_seconds"] > 0
    assert "ib_stream_fanout_lag_recent_seconds{quantile=0.99}" in after
    assert after["ib_stream_query_seconds_count{endpoint=historical}"] == 2
    assert after["ib_stream_query_cache_hits_total"] == 1 and after["ib_stream_query_cache_hit_ratio"] == 0.5
    live_server.state.streaming.unsubscribe(subscription)
    assert scrape(live_server.url)["ib_stream_live_subscribers"] == 0


async def _subscribe(server: LiveServer) -> Subscription:
    return server.state.streaming.subscribe(AAPL, [TickType.LAST])


def test_each_app_has_its_own_registry(live_server: LiveServer, tmp_path: Path) -> None:
    other, stop = start_server(service_settings(tmp_path / "other"))
    try:
        live_server.publish(AAPL, "last", [trade(T0_NS, 0)])
        assert scrape(live_server.url)["ib_stream_ticks_written_total"] == 1
        assert scrape(other.url)["ib_stream_ticks_written_total"] == 0
    finally:
        stop()


def archive(server: LiveServer, clock: ManualClock) -> None:
    """Seal the open segments (move the clock past them) and archive them."""
    clock.advance(20 * 60)
    report = server.run(server.store.run_in_background("archive"))
    assert report.files_written > 0


def test_contracts_report_archive_and_hot_tier_without_double_counting(
    clocked: tuple[LiveServer, ManualClock],
) -> None:
    server, clock = clocked
    server.publish(AAPL, "last", [trade(T0_NS + i * MS, i) for i in range(300)])
    server.publish(AAPL, "bid_ask", [quote(T0_NS + i * MS, i) for i in range(100)])
    archive(server, clock)
    clock.set(T0_NS + HOUR_NS + seconds(1))  # the service refuses ticks from its future
    server.publish(AAPL, "last", [trade(T0_NS + HOUR_NS + i * MS, i) for i in range(50)])  # hot only
    server.publish(AAPL, "all_last", [trade(T0_NS, 0)])  # a stream that is not configured

    body = httpx.get(f"{server.url}/v2/contracts", timeout=10).json()
    assert body["count"] == 2
    aapl = next(c for c in body["contracts"] if c["con_id"] == AAPL)
    assert {k: aapl[k] for k in ("symbol", "sec_type", "calendar", "depth_rows", "min_tick")} == {
        "symbol": "AAPL",
        "sec_type": "STK",
        "calendar": "XNAS",
        "depth_rows": 10,
        "min_tick": 0.01,
    }
    streams = {s["tick_type"]: s for s in aapl["streams"]}
    assert list(streams) == ["bid_ask", "last", "mid_point", "depth", "all_last"]
    last = streams["last"]
    assert last["tick_count"] == 350 and last["last_seq"] == 350
    assert last["archive"]["ticks"] == 300 and last["archive"]["files"] >= 1
    assert last["hot"]["ticks"] == 50
    assert last["first_tick"] == "2025-01-10T14:00:00.000000Z"
    assert last["last_tick"] == "2025-01-10T15:00:00.049000Z"
    assert streams["bid_ask"]["tick_count"] == 100 and streams["bid_ask"]["hot"]["ticks"] == 0
    assert streams["mid_point"]["tick_count"] == 0 and streams["mid_point"]["first_tick"] is None
    assert streams["all_last"]["tick_count"] == 1
    es = next(c for c in body["contracts"] if c["con_id"] == ES)
    assert all(s["tick_count"] == 0 for s in es["streams"])


def test_coverage_merges_intervals_and_reports_gaps(clocked: tuple[LiveServer, ManualClock]) -> None:
    server, clock = clocked
    clock.set(T0_NS + seconds(120))  # the service refuses ticks from its future
    server.publish(AAPL, "last", [trade(T0_NS + i * seconds(1), i) for i in range(120)])  # 14:00 .. 14:02
    archive(server, clock)
    server.publish(AAPL, "last", [trade(T0_NS + seconds(600) + i * seconds(1), i) for i in range(30)])  # 14:10

    url = f"{server.url}/v2/contracts/{AAPL}/coverage"
    body = httpx.get(url, params={"tick_types": "last"}, timeout=10).json()
    assert body["contract_id"] == AAPL and body["min_gap_seconds"] == 60
    (stream,) = body["streams"]
    assert stream["tick_count"] == 150
    assert stream["intervals"] == [
        {"start": "2025-01-10T14:00:00.000000Z", "end": "2025-01-10T14:01:59.000000Z", "duration_seconds": 119.0},
        {"start": "2025-01-10T14:10:00.000000Z", "end": "2025-01-10T14:10:29.000000Z", "duration_seconds": 29.0},
    ]
    assert stream["gaps"] == [
        {
            "start": "2025-01-10T14:01:59.000000Z",
            "end": "2025-01-10T14:10:00.000000Z",
            "duration_seconds": 481.0,
            "reason": "no data",
            "recorded_gaps": [],
        }
    ]
    assert stream["recorded_gaps"] == []
    # A gap the ledger recorded (here: the service was down) explains the hole.
    ledger = server.store.gaps
    gap_id = ledger.add(StreamKey(AAPL, TickType.LAST), T0_NS + seconds(150), T0_NS + seconds(590),
                        GapReason.SERVICE_DOWN, "service was stopped")  # fmt: skip
    explained = httpx.get(url, params={"tick_types": "last"}, timeout=10).json()["streams"][0]
    assert [(g["reason"], g["recorded_gaps"]) for g in explained["gaps"]] == [("service_down", [gap_id])]
    (recorded,) = explained["recorded_gaps"]
    assert recorded["id"] == gap_id and recorded["start"] == "2025-01-10T14:02:30.000000Z"
    assert (recorded["reason"], recorded["backfill"], recorded["duration_seconds"]) == ("service_down", "pending", 440)
    # A threshold longer than the hole closes it.
    wide = httpx.get(url, params={"tick_types": "last", "min_gap": "10m"}, timeout=10).json()["streams"][0]
    assert len(wide["intervals"]) == 1 and wide["gaps"] == []
    # Every configured stream by default; bad input is a 4xx naming the field.
    assert [s["tick_type"] for s in httpx.get(url, timeout=10).json()["streams"]] == [
        "bid_ask",
        "last",
        "mid_point",
        "depth",
    ]
    for params, status, field in (
        ({"min_gap": "soon"}, 422, "min_gap"),
        ({"tick_types": "nope"}, 422, "tick_types"),
    ):
        error = httpx.get(url, params=params, timeout=10)
        assert error.status_code == status and error.json()["error"]["details"]["field"] == field
    missing = httpx.get(f"{server.url}/v2/contracts/42/coverage", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["details"]["field"] == "contract_id"


def test_archive_durations_appear_in_metrics(clocked: tuple[LiveServer, ManualClock]) -> None:
    server, clock = clocked
    assert "ib_stream_archive_job_duration_seconds{job=archive}" not in scrape(server.url)
    server.publish(AAPL, "last", [trade(T0_NS + i * MS, i) for i in range(10)])
    archive(server, clock)
    assert scrape(server.url)["ib_stream_archive_job_duration_seconds{job=archive}"] > 0
