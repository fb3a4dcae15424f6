"""Child of `test_full_disk.py`, run inside a private user + mount namespace with a small tmpfs mounted:

    unshare -rm sh -c 'mount -t tmpfs -o size=24m tmpfs DIR && exec python -m tests.e2e.full_disk_child DIR'

On the real full filesystem: a real uvicorn server answers 507 at once for the batch that does not fit, keeps
nothing of it, reports not-ready, and resumes by itself when space is freed (every acknowledged tick once after
a restart, `verify` clean); archival that runs out of space leaves no temp file and is redone. Exits 0 and
prints `ok` when every check held; an assertion's traceback and exit status 1 otherwise.
"""

from __future__ import annotations

import errno
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from ib_stream.clock import ManualClock
from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.repair import verify
from tests.conftest import T0_NS, seconds, trade
from tests.e2e.conftest import AAPL, start_server
from tests.e2e.conftest import test_settings as service_settings

TOKEN = "t0ken"


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem refuses another byte."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def lines(root: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for p in sorted((root / "buffer" / str(AAPL) / "last").glob("*.jsonl"))
        for line in p.read_bytes().splitlines()
    ]


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ib_")
    }


def post(url: str, n: int, first: int) -> httpx.Response:
    ticks = [trade(T0_NS + (first + i) * 1_000_000, first + i) for i in range(n)]
    body = {"contract_id": AAPL, "tick_type": "last", "ticks": ticks}
    return httpx.post(f"{url}/v2/ticks", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def service_on_a_full_disk(tmpfs: Path) -> None:
    root = tmpfs / "storage"
    settings = service_settings(root, api={"token": TOKEN})  # the default retry settings
    server, stop = start_server(settings)
    try:
        assert post(server.url, 500, 0).json()["last_seq"] == 500
        filler = fill(tmpfs)
        started = time.monotonic()
        failed = post(server.url, 2000, 500)
        assert time.monotonic() - started < 2.0
        assert failed.status_code == 507 and failed.json()["error"]["code"] == "STORAGE_FULL"
        assert [t["seq"] for t in lines(root)] == list(range(1, 501)), "nothing of the failed batch may stay"
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 503
        seen = metrics(server.url)
        assert seen["ib_stream_ready"] == 0 and seen["ib_stream_pending_writes"] == 0
        assert seen['ib_stream_storage_write_failures_total{kind="full"}'] >= 1

        filler.unlink()  # the operator frees space: no restart
        deadline = time.monotonic() + 40  # within the retry backoff (1 s, doubling)
        while httpx.get(f"{server.url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the service did not resume by itself"
            time.sleep(0.05)
        assert metrics(server.url)["ib_stream_ready"] == 1
        stored = post(server.url, 2000, 500).json()
        assert (stored["first_seq"], stored["last_seq"]) == (501, 2500)
    finally:
        stop()
    server, stop = start_server(settings)
    try:
        assert [t["seq"] for t in lines(root)] == list(range(1, 2501))
        assert post(server.url, 1, 2500).json()["first_seq"] == 2501
    finally:
        stop()
    assert verify(settings.storage).ok


def archival_on_a_full_disk(tmpfs: Path) -> None:
    clock = ManualClock(T0_NS)
    config = StorageConfig(data_root=tmpfs / "jobs", fsync_interval_ms=0, compaction_delay_seconds=0)
    with TickStore(config, clock) as store:
        for _ in range(4):
            base = clock.now_ns()
            store.append_batch_sync(AAPL, "last", [trade(base + seconds(i / 100), i) for i in range(20_000)])
            clock.advance(15 * 60)
        clock.advance(3600)
        filler = fill(tmpfs)
        try:
            store.run_archival()
        except StorageError:
            pass
        else:
            raise AssertionError("archival on a full disk did not fail")
        assert list(store.layout.temp_files()) == []
        assert verify(config).ok
        filler.unlink()
        store.run_archival()
        assert store.index.archived_seqs()[next(iter(store.index.archived_seqs()))] == 80_000
    assert verify(config).ok


def main(argv: list[str]) -> None:
    tmpfs = Path(argv[1])
    service_on_a_full_disk(tmpfs)
    archival_on_a_full_disk(tmpfs)
    print("ok")


if __name__ == "__main__":
    main(sys.argv)
