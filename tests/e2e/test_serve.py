"""`ib-stream serve` as a new user runs it (what `make run` starts): the simulated market is
recorded, the API answers, SIGTERM shuts down cleanly and everything acknowledged is on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.times import iso_us
from tests.e2e.conftest import AAPL, REPO, free_port, start_server, test_settings


def _wait_until_up(url: str, process: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"serve exited early with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if httpx.get(url + "/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not come up")


def _start(data_root: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ib_stream.cli", "serve", "--port", str(port), "--data-dir", str(data_root)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ticks_acknowledged_before_sigterm_are_all_there_after_restart(tmp_path: Path) -> None:
    data_root, port = tmp_path / "storage", free_port()
    env = {**os.environ, "IB_STREAM_API__TOKEN": "s3cret", "IB_STREAM_SIM__BATCH_MS": "20"}
    url = f"http://127.0.0.1:{port}"
    process = _start(data_root, port, env)
    acknowledged: list[tuple[int, int, float]] = []
    try:
        _wait_until_up(url, process)
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer s3cret"}, timeout=10) as client:
            for batch in range(40):
                ticks = [{"ts": time.time_ns(), "price": 100.0 + batch, "size": float(i + 1)} for i in range(25)]
                body = {"contract_id": AAPL, "tick_type": "all_last", "ticks": ticks, "source": "producer"}
                answer = client.post("/v2/ticks", json=body)
                assert answer.status_code == 200, answer.text
                acknowledged.append((answer.json()["first_seq"], answer.json()["last_seq"], 100.0 + batch))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert "everything acknowledged is on disk" in stderr, stderr
    assert not (data_root / ".service.json").exists()  # no stale announcement
    restarted = _start(data_root, port, env)  # the restart recovers the buffer and serves the same ticks
    try:
        _wait_until_up(url, restarted)
        frame = httpx.get(
            f"{url}/v2/historical/{AAPL}",
            params={"tick_types": "all_last", "start_time": iso_us(time.time_ns() - 3600 * 10**9), "format": "json"},
            timeout=30,
        ).json()["data"]
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=60)
    by_seq = {row["seq"]: row for row in frame}
    assert len(by_seq) == len(frame) == 40 * 25
    for first, last, price in acknowledged:
        assert all(
            by_seq[seq]["price"] == price and by_seq[seq]["source"] == "producer" for seq in range(first, last + 1)
        )


def test_serve_records_the_simulated_market_and_shuts_down_cleanly(tmp_path: Path) -> None:
    data_root = tmp_path / "storage"
    port = free_port()
    env = {**os.environ, "IB_STREAM_SIM__BATCH_MS": "20", "IB_STREAM_API__TOKEN": "tok"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ib_stream.cli", "serve", "--port", str(port), "--data-dir", str(data_root)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", process)
        announced = json.loads((data_root / ".service.json").read_text())
        assert announced == {"url": f"http://127.0.0.1:{port}", "pid": process.pid}
        # A command that finds the data root locked asks the service where it says it listens.
        span = ["--start", iso_us(time.time_ns() - 60 * 10**9), "--end", iso_us(time.time_ns())]
        backfill = subprocess.run(
            [sys.executable, "-m", "ib_stream.cli", "--data-dir", str(data_root), "backfill", "--contract", str(AAPL),
             *span],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert backfill.returncode != 0
        assert f"asking it at http://127.0.0.1:{port}" in backfill.stderr, backfill.stderr
        assert "records from sim, not IB: backfill needs the IB source" in backfill.stderr, backfill.stderr
        time.sleep(1)  # let the simulator record a little
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    # uvicorn finishes the graceful shutdown, then re-raises SIGTERM so the exit status says why it stopped.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "everything acknowledged is on disk" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "simulated market" in stderr  # says at start-up that no broker is configured
    query = StorageQuery(open_readonly_engine(StorageConfig(data_root=data_root)))
    frame = query.query_range_sync(AAPL, ["bid_ask", "last"], 0, time.time_ns())
    assert len(frame) > 10
    for tick_type, group in frame.groupby("tick_type"):
        assert list(group["seq"]) == list(range(1, len(group) + 1)), tick_type


def test_a_stopping_service_removes_only_its_own_announcement(tmp_path: Path) -> None:
    # Another process's announcement (a serve that holds this data root from elsewhere, as far as the file says)
    # survives this service's shutdown; the service removes the file only while it names its own pid.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        settings = test_settings(tmp_path / "storage")
        announcement = settings.storage.service_file
        announcement.parent.mkdir(parents=True)
        theirs = json.dumps({"url": "http://127.0.0.1:1", "pid": other.pid})
        announcement.write_text(theirs)
        _, stop = start_server(settings, sources=[])
        stop()
        assert announcement.read_text() == theirs
        announcement.write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()}))
        _, stop = start_server(settings, sources=[])
        stop()
        assert not announcement.exists()
    finally:
        other.kill()
        other.wait()
