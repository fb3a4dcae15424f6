"""The service recording IB (real ibapi client -> fake TWS) killed with SIGKILL mid-stream and restarted:
nothing acknowledged is lost, the downtime is a `service_crash` gap in the ledger — from no later than the
last tick stored until the restarted service's subscription reached TWS — and the automatic backfill fills
it from IB history so that every trade IB saw is stored exactly once. A clean stop then leaves a
`service_down` gap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AAPL, REPO, free_port
from tests.e2e.test_serve import _wait_until_up
from tests.support.fake_tws import AAPL as FAKE_AAPL
from tests.support.fake_tws import FakeTWS, LastTick

pytestmark = pytest.mark.timeout(120)


class Market:
    """Trades IB sees: sent live when a client is subscribed, and always kept as IB's history."""

    def __init__(self, tws: FakeTWS) -> None:
        self.tws = tws
        self.count = 0

    def trade(self, live: bool = True) -> None:
        self.count += 1
        tick = LastTick(int(time.time()), round(100 + self.count * 0.01, 2), 1)
        self.tws.add_historical_ticks(AAPL, "TRADES", [tick])
        if live:
            self.tws.emit_ticks(AAPL, "Last", [tick])

    def expected(self) -> list[tuple[int, float]]:
        return sorted((t.time, t.price) for t in self.tws.historical[(AAPL, "TRADES")] if isinstance(t, LastTick))


def start(config: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "IB_STREAM_CONFIG": str(config)}
    return subprocess.Popen(
        [sys.executable, "-m", "ib_stream.cli", "serve", "--port", str(port), "--source", "ib"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def trades(url: str) -> list[tuple[int, float]]:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    rows = httpx.get(
        f"{url}/v2/historical/{AAPL}", params={"tick_types": "last", "start_time": since}, timeout=30
    ).json()["data"]
    return sorted((row["ts"] // 10**9, row["price"]) for row in rows)


def recorded_gaps(url: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/v2/contracts/{AAPL}/coverage", params={"tick_types": "last"}, timeout=30).json()
    gaps: list[dict[str, Any]] = body["streams"][0]["recorded_gaps"]
    return gaps


def wait(predicate: Any, what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_restart_during_streaming_loses_nothing_and_backfills_the_downtime(tmp_path: Path) -> None:
    with FakeTWS([FAKE_AAPL]) as tws:
        contracts = tmp_path / "contracts.toml"
        contracts.write_text(
            f'[[contracts]]\ncon_id = {AAPL}\nsymbol = "AAPL"\ncalendar = "24/7"\ntick_types = ["last"]\n'
        )
        config = tmp_path / "ib-stream.toml"
        config.write_text(
            f'contracts_file = "{contracts}"\n[storage]\ndata_root = "{tmp_path / "storage"}"\n'
            "heartbeat_seconds = 0.5\nfsync_interval_ms = 5\n"
            f"[ib]\nenabled = true\nports = [{tws.port}]\nreconnect_initial_seconds = 0.2\n"
            "pacing_retry_seconds = 1\n"
        )
        market, port = Market(tws), free_port()
        url = f"http://127.0.0.1:{port}"
        service = start(config, port)
        try:
            _wait_until_up(url, service)
            tws.wait_subscribed(AAPL, "reqTickByTickData", "Last", timeout=30)
            for _ in range(100):
                market.trade()
            acknowledged = wait(lambda: len(t := trades(url)) == 100 and t, "100 trades stored")
            time.sleep(0.7)  # a heartbeat after them
            for _ in range(50):  # in flight when the service dies
                market.trade()
        finally:
            service.send_signal(signal.SIGKILL)
            service.communicate(timeout=30)
        killed_at = time.time()
        for _ in range(30):  # while the service is down: IB has them, nobody receives them
            market.trade(live=False)
        time.sleep(1.2)
        service = start(config, port)
        try:
            _wait_until_up(url, service)
            assert set(acknowledged) <= set(trades(url))  # nothing acknowledged was lost
            (gap,) = wait(lambda: [g for g in recorded_gaps(url) if g["backfill"] == "done"], "crash gap backfilled")
            backfilled_at = time.time()
            assert gap["reason"] == "service_crash" and "crashed" in gap["detail"]
            start_s, end_s = (_epoch(gap["start"]), _epoch(gap["end"]))
            # From no later than the last tick stored (or the last heartbeat, after it) ...
            assert acknowledged[-1][0] <= start_s <= killed_at
            # ... until TWS had the restarted service's subscription, not when the service started.
            resubscribed = tws.requests_of("reqTickByTickData")[-1].received_wall
            assert killed_at + 1 < resubscribed <= end_s <= backfilled_at
            tws.wait_subscribed(AAPL, "reqTickByTickData", "Last", timeout=30)
            for _ in range(20):
                market.trade()
            # Every trade IB saw, once: received live before and after, or backfilled for the downtime.
            wait(lambda: len(trades(url)) >= market.count, "every trade stored")
            assert trades(url) == market.expected()
            assert len(market.expected()) == 200
            stopped_at = time.time()
        finally:
            service.send_signal(signal.SIGTERM)
            service.communicate(timeout=30)
        time.sleep(1.0)
        service = start(config, port)
        try:
            _wait_until_up(url, service)
            down = wait(lambda: [g for g in recorded_gaps(url) if g["reason"] == "service_down"], "service_down gap")
            assert stopped_at - 1 < _epoch(down[0]["start"]) < stopped_at + 2 and "was stopped" in down[0]["detail"]
        finally:
            service.send_signal(signal.SIGTERM)
            service.communicate(timeout=30)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
