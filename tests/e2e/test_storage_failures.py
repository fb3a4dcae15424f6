"""End to end, a real uvicorn server whose disk fails under it (the buffer writer's file seam armed to fail):
`POST /v2/ticks` answers 507 `STORAGE_FULL` (or 503 `STORAGE_ERROR` for an I/O error) at once, `/ready` and
`/metrics` say why, the service recovers without a restart once the disk does, and after a restart every
acknowledged tick is there exactly once, no seq was reused and `ib-stream verify` is clean.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ib_stream.cli import app as cli
from ib_stream.settings import Settings
from tests.conftest import T0_NS, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.support.faulty_io import FaultyIO

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = 2.0  # seconds


def settings_for(root: Path) -> Settings:
    storage = {"write_retry_seconds": 0.05, "write_retry_max_seconds": 0.2}
    return service_settings(root, api={"token": TOKEN}, storage=storage)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


def post(server: LiveServer, n: int, first: int) -> httpx.Response:
    ticks = [trade(T0_NS + (first + i) * 1_000_000, first + i) for i in range(n)]
    body = {"contract_id": AAPL, "tick_type": "last", "ticks": ticks, "source": "producer"}
    return httpx.post(f"{server.url}/v2/ticks", json=body, headers=AUTH, timeout=30)


def metrics(server: LiveServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ib_stream_")
    }


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stored_seqs(server: LiveServer) -> list[int]:
    frame = server.run(server.state.query.query_range(AAPL, "last", T0_NS - 10**12, T0_NS + 10**12))
    return sorted(int(s) for s in frame["seq"])


def verify_cli(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--data-dir", str(root), "verify"], env={"COLUMNS": "300"})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("op", "err", "status", "code"),
    [("write", errno.ENOSPC, 507, "STORAGE_FULL"), ("fsync", errno.EIO, 503, "STORAGE_ERROR")],
    ids=["disk-full", "fsync-eio"],
)
def test_a_failing_disk_is_answered_at_once_reported_and_recovered_from_without_a_restart(
    root: Path, op: str, err: int, status: int, code: str
) -> None:
    server, stop = start_server(settings_for(root))
    try:
        io = FaultyIO()
        server.store.buffer.io = io
        assert post(server, 100, 0).json()["last_seq"] == 100

        io.arm(op, err, partial=op == "write", times=None)
        started = time.monotonic()
        failed = post(server, 2000, 100)
        assert time.monotonic() - started < PROMPT, "the batch in flight must be answered at once"
        assert failed.status_code == status and failed.json()["error"]["code"] == code
        assert int(failed.headers["Retry-After"]) >= 1
        assert "nothing of the batch was stored" in failed.json()["error"]["message"]

        ready = httpx.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        store_check = ready.json()["checks"]["store"]
        assert (
            not store_check["ok"] and code in store_check["detail"] and "appends refused since" in store_check["detail"]
        )
        seen = metrics(server)
        assert seen["ib_stream_ready"] == 0 and seen["ib_stream_storage_writable"] == 0
        assert seen["ib_stream_pending_writes"] == 0
        kind = "full" if code == "STORAGE_FULL" else "io"
        assert seen[f'ib_stream_storage_write_failures_total{{kind="{kind}"}}'] == 1
        assert seen["ib_stream_storage_refused_ticks_total"] >= 2000

        started = time.monotonic()
        assert post(server, 10, 100).status_code == status  # refused at once while the disk fails
        assert time.monotonic() - started < PROMPT

        io.disarm()
        wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=10).status_code == 200)
        seen = metrics(server)
        assert seen["ib_stream_ready"] == 1 and seen["ib_stream_storage_writable"] == 1
        assert seen["ib_stream_storage_write_retries_total"] >= 1
        stored = post(server, 50, 100).json()
        assert (stored["first_seq"], stored["last_seq"]) == (101, 150), "no seq of the failed batches was used"
    finally:
        stop()

    server, stop = start_server(settings_for(root))
    try:
        assert stored_seqs(server) == list(range(1, 151)), "every acknowledged tick once, nothing else"
        assert post(server, 1, 150).json()["first_seq"] == 151
    finally:
        stop()
    assert verify_cli(root) == (0, verify_cli(root)[1]) and verify_cli(root)[1].startswith("ok:")
