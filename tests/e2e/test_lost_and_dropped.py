"""End to end, what a broken disk costs and how it is accounted for: the simulated source keeps running through
a disk that fails its fsyncs (its ticks meanwhile dropped and recorded as a `storage_error` gap), and a buffer
segment removed while serving becomes a `storage_lost` gap — found by the maintenance job, shown by the coverage
report, `/metrics` and `ib-stream verify` — and never costs a seq, before or after a restart.

The disk fails below every seam here: `os.fsync` itself refuses the buffer's files.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from ib_stream.clock import ManualClock
from ib_stream.domain import Contract
from ib_stream.settings import Settings, SimConfig
from ib_stream.sources.sim import SimSource
from tests.conftest import T0_NS, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.e2e.test_storage_failures import stored_seqs, verify_cli, wait_until

TOKEN = "t0ken"


def settings_for(root: Path) -> Settings:
    storage = {"write_retry_seconds": 0.05, "write_retry_max_seconds": 0.2}
    return service_settings(root, api={"token": TOKEN}, storage=storage)


def start_clocked_server(root: Path, clock: ManualClock) -> tuple[LiveServer, Any]:
    """The harness's server on a manual clock (so segments rotate when the test says)."""
    return start_server(settings_for(root), clock=clock)


def post(server: LiveServer, n: int, first: int) -> httpx.Response:
    ticks = [trade(T0_NS + (first + i) * 1_000_000, first + i) for i in range(n)]
    body = {"contract_id": AAPL, "tick_type": "last", "ticks": ticks}
    return httpx.post(f"{server.url}/v2/ticks", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def recorded_gaps(server: LiveServer, tick_type: str, reason: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{server.url}/v2/contracts/{AAPL}/coverage", params={"tick_types": tick_type}, timeout=30)
    return [g for g in body.json()["streams"][0]["recorded_gaps"] if g["reason"] == reason]


def metric(server: LiveServer, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def test_the_simulated_source_survives_a_failing_disk_and_its_outage_is_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "storage"
    contract = Contract(AAPL, "AAPL", calendar="XNAS", min_tick=0.01)
    sim = SimSource([contract], SimConfig(quotes_per_second=200, batch_ms=10))
    server, stop = start_server(settings_for(root), sources=[sim])
    try:
        stats = server.store.buffer.stats
        wait_until(lambda: stats.ticks_written > 100)
        real_fsync, failing = os.fsync, {"on": True, "count": 0}

        def fsync(fd: int) -> None:
            if failing["on"] and str(root / "buffer") in os.readlink(f"/proc/self/fd/{fd}"):
                failing["count"] += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        wait_until(lambda: failing["count"] >= 3)  # a failed group, then failed retries
        failing["on"] = False
        resumed = stats.ticks_written
        wait_until(lambda: stats.ticks_written > resumed + 100)  # the source carried on by itself
        assert server.state.streaming.stats.source_errors == 0
        wait_until(lambda: recorded_gaps(server, "bid_ask", "storage_error") != [])
        (gap,) = recorded_gaps(server, "bid_ask", "storage_error")
        assert "STORAGE_ERROR" in gap["detail"] and "from sim were dropped" in gap["detail"]
        assert gap["end"] is not None and gap["backfill"] == "off"
    finally:
        stop()
    assert verify_cli(root)[0] == 0


def test_a_segment_removed_while_serving_is_a_storage_lost_gap_and_costs_no_seq(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    clock = ManualClock(T0_NS)
    server, stop = start_clocked_server(root, clock)
    try:
        assert post(server, 300, 0).status_code == 200  # 14:00 segment: seqs 1-300
        clock.advance(15 * 60)
        assert post(server, 246, 300).status_code == 200  # 14:15 segment: seqs 301-546
        clock.advance(15 * 60)
        assert post(server, 100, 546).status_code == 200  # 14:30 segment (open): seqs 547-646
        segments = sorted((root / "buffer" / str(AAPL) / "last").glob("*.jsonl"))
        segments[1].unlink()  # an operator's mistake while the service runs
        asyncio.run_coroutine_threadsafe(server.store.run_in_background("maintenance"), server.loop).result(30)
        (gap,) = recorded_gaps(server, "last", "storage_lost")
        assert "seqs 301..546 (246 ticks)" in gap["detail"]
        assert metric(server, "ib_stream_storage_lost_ticks_total") == 246
        segments[2].unlink()  # the open one: copied back from the open file, nothing lost
        wait_until(lambda: segments[2].exists())
        assert post(server, 1, 646).json()["first_seq"] == 647
    finally:
        stop()

    server, stop = start_clocked_server(root, clock)
    try:
        assert stored_seqs(server) == [*range(1, 301), *range(547, 648)]
        assert post(server, 1, 647).json()["first_seq"] == 648, "no seq is given twice"
        assert len(recorded_gaps(server, "last", "storage_lost")) == 1
    finally:
        stop()
    exit_code, output = verify_cli(root)
    assert exit_code == 1 and "lost" in output and "301..546" in output


def test_a_newest_segment_removed_while_stopped_costs_no_seq_after_the_restart(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    server, stop = start_server(settings_for(root))
    try:
        assert post(server, 546, 0).status_code == 200
    finally:
        stop()
    for segment in (root / "buffer" / str(AAPL) / "last").glob("*.jsonl"):
        segment.unlink()
    server, stop = start_server(settings_for(root))
    try:
        assert post(server, 1, 546).json()["first_seq"] == 547, "the 546 acknowledged seqs must not be reused"
        (gap,) = recorded_gaps(server, "last", "storage_lost")
        assert "seqs 1..546 (546 ticks)" in gap["detail"]
    finally:
        stop()
