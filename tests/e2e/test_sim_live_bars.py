"""End to end: on the simulated market (a real service recording `sim`, SSE `/v2/stream/{id}/bars`) a bar is sent
`final` once and never changes afterwards — no revision, no second `final` with other values. The acceptance
run is two minutes (`slow`); the default run watches 1-second bars for about 18 seconds."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.e2e.test_live_sse import Event, sse


@pytest.fixture
def sim_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The service recording the simulated market (every configured contract, depth included)."""
    server, stop = start_server(service_settings(tmp_path / "storage", source="sim"), sources=None)
    assert server.state.source_name == "sim"
    yield server
    stop()


def watch_bars(url: str, contract_id: int, resolution: str, seconds: float) -> list[Event]:
    """Every event of a bar stream that the server ends after `seconds` (its `timeout`)."""
    path = f"/v2/stream/{contract_id}/bars?resolution={resolution}&alerts=false&timeout={seconds:g}"
    with httpx.Client(base_url=url, timeout=httpx.Timeout(seconds + 30)) as client, sse(client, path) as stream:
        return stream.rest()


def assert_final_means_final(events: list[Event], min_final: int) -> None:
    """No revision; each bar final at most once, never sent again after it; at least `min_final` final bars."""
    assert events[-1].kind == "complete" and events[-1].data is not None
    assert events[-1].data["data"]["reason"] == "timeout"
    bars: list[dict[str, Any]] = [e.data["data"] for e in events if e.kind == "bar" and e.data]
    final: dict[int, dict[str, Any]] = {}
    for bar in bars:
        assert bar["revision"] is False, f"bar {bar['timestamp']} was revised"
        assert bar["ts"] not in final, f"bar {bar['timestamp']} was sent again after it was final: {bar}"
        if bar["final"]:
            final[bar["ts"]] = bar
    assert len(final) >= min_final, f"only {len(final)} final bars"
    starts = sorted(final)
    assert all(b - a > 0 for a, b in itertools.pairwise(starts))
    assert sum(b["trade_count"] for b in final.values()) > 0  # the market traded


def test_one_second_bars_of_the_simulated_market_are_final_once(sim_server: LiveServer) -> None:
    events = watch_bars(sim_server.url, AAPL, "1s", 18)
    assert_final_means_final(events, min_final=12)  # 18 s of bars, less the lateness (2 s) and the start


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_minutes_of_bars_of_the_simulated_market_are_final_once(sim_server: LiveServer) -> None:
    """The acceptance run: 1 s, 5 s and 1 m bars of both contracts, watched together for two minutes."""
    watched = [(AAPL, "1s", 110), (ES, "1s", 110), (AAPL, "5s", 20), (ES, "5s", 20), (AAPL, "1m", 1), (ES, "1m", 1)]
    results: dict[tuple[int, str], list[Event]] = {}
    failures: list[BaseException] = []

    def watch(contract_id: int, resolution: str) -> None:
        try:
            results[(contract_id, resolution)] = watch_bars(sim_server.url, contract_id, resolution, 125)
        except BaseException as e:  # reported below, on the test's thread
            failures.append(e)

    threads = [threading.Thread(target=watch, args=(c, r)) for c, r, _ in watched]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(200)
    assert not failures, failures
    for contract_id, resolution, min_final in watched:
        assert_final_means_final(results[(contract_id, resolution)], min_final)
