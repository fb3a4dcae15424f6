"""The backup of docs/howto/operate.md, run as written against a running service, then restored.

The data root holds archived hours (written beforehand) and the live service records the simulated market
into it while the backup's commands run. The restored copy must pass `ib-stream verify`, serve every
archived tick exactly as the original does, and hold every tick the original had acknowledged when the
catalog was copied.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, free_port

REPO = Path(__file__).resolve().parents[2]
OPERATE = REPO / "docs" / "howto" / "operate.md"
BIN = Path(sys.executable).parent
HOUR = 3600 * NS_PER_SECOND
pytestmark = pytest.mark.timeout(180)


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of one section of operate.md, with `.venv/bin/` meaning this interpreter's bin."""
    text = OPERATE.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.replace(".venv/bin/", f"{BIN}/") for block in re.findall(r"```bash\n(.*?)```", body, re.S)]


def preload(root: Path) -> None:
    """Three archived hours of AAPL trades and quotes."""
    clock = ManualClock(T0_NS)
    store = TickStore(StorageConfig(data_root=root), clock).open()
    try:
        for hour in range(3):
            base = T0_NS + hour * HOUR
            # Recorded by the simulator, so the live service goes on simulating the contract (no real data).
            store.append_batch_sync(AAPL, "last", [trade(base + i * 10**9, i) for i in range(0, 3600, 7)], "sim")
            store.append_batch_sync(AAPL, "bid_ask", [quote(base + i * 10**9, i) for i in range(0, 3600, 3)], "sim")
            clock.set(base + HOUR)
        clock.set(T0_NS + 5 * HOUR)
        store.run_archival()
    finally:
        store.close()


def serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "IB_STREAM_LOGGING__LEVEL": "WARNING", "IB_STREAM_SIM__QUOTES_PER_SECOND": "200"}
    process = subprocess.Popen(
        [str(BIN / "ib-stream"), "serve", "--data-dir", str(root), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the service did not start: {process.stderr.read().decode() if process.stderr else ''}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def ticks(root: Path, start: int, end: int) -> dict[str, list[tuple[int, int]]]:
    query = StorageQuery(config=StorageConfig(data_root=root))
    answer = {}
    for tick_type in ("last", "bid_ask"):
        frame = query.query_range_sync(AAPL, tick_type, start, end)
        answer[tick_type] = list(zip(frame["timestamp"].astype("int64"), frame["seq"], strict=True))
    return answer


def test_the_documented_backup_of_a_running_service_restores_every_tick(tmp_path: Path) -> None:
    data, backup = tmp_path / "storage", tmp_path / "backups" / "b1"
    preload(data)
    process, url = serve(data)
    try:
        time.sleep(2)  # the simulator records into the buffer meanwhile
        acknowledged = httpx.get(f"{url}/v2/latest/{AAPL}", params={"tick_types": "bid_ask"}, timeout=10).json()
        backup_block, restore_block = bash_blocks("Backups")
        env = {**os.environ, "DATA": str(data), "BACKUP": str(backup)}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", backup_block], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop(process)

    # Restore: the documented check, on the copy, after the service stopped.
    first_line = restore_block.strip().splitlines()[0]
    assert "verify" in first_line
    checked = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", first_line], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    archived = (T0_NS, T0_NS + 3 * HOUR)
    assert ticks(backup, *archived) == ticks(data, *archived)
    expected = 3 * (len(range(0, 3600, 7)) + len(range(0, 3600, 3)))
    assert sum(len(v) for v in ticks(backup, *archived).values()) == expected

    # Every live tick acknowledged before the backup started is in the copy.
    now = time.time_ns()
    latest = acknowledged["ticks"]["bid_ask"]
    live_backup = ticks(backup, now - 3600 * NS_PER_SECOND, now + 60 * NS_PER_SECOND)["bid_ask"]
    assert latest["ts"] > T0_NS + 3 * HOUR and (latest["ts"], latest["seq"]) in live_backup
    restored_process, restored_url = serve(backup)
    try:
        answer = httpx.get(
            f"{restored_url}/v2/historical/{AAPL}",
            params={"tick_types": "last", "start_time": "2025-01-10T14:00:00Z", "end_time": "2025-01-10T17:00:00Z"},
            timeout=30,
        ).json()
        assert answer["total_count"] == 3 * len(range(0, 3600, 7))
    finally:
        stop(restored_process)
