"""End-to-end: the storage endpoints IB-Studies calls (`v3-info` → `/v3/info` and `/v3/storage/stats`,
`v3-files` → `/v3/storage/files/{contract_id}?tick_type=&format=`), checked against the files on disk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from ib_stream.clock import ManualClock
from ib_stream.storage import TickStore
from tests.conftest import T0_NS, seconds, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server, test_settings

NS = 1_000_000_000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client, Path]]:
    root = tmp_path / "storage"
    settings = test_settings(root)
    clock = ManualClock(T0_NS)
    store = TickStore(settings.storage, clock).open()  # two archived hours of trades before the service starts
    try:
        store.append_batch_sync(AAPL, "last", [trade(T0_NS + seconds(60 * i), i) for i in range(120)], source="t")
        clock.advance(4 * 3600)
        store.run_archival()
        store.run_compaction()
    finally:
        store.close()
    server, stop = start_server(settings)
    server.publish(AAPL, "last", [trade(time.time_ns() - 5 * NS, i) for i in range(3)])  # a live buffer segment
    with httpx.Client(base_url=server.url, timeout=15) as client:
        yield server, client, root
    stop()


def on_disk(root: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.glob(pattern) if ".tmp-" not in p.name}


def test_v3_files_lists_the_files_of_a_contract_newest_first(served: tuple[LiveServer, httpx.Client, Path]) -> None:
    _, client, root = served
    archive = on_disk(root, f"archive/contract_id={AAPL}/tick_type=last/**/*.parquet")
    segments = on_disk(root, f"buffer/{AAPL}/last/*.jsonl")
    assert len(archive) == 2 and len(segments) == 2  # hours 14:00 and 15:00; the archived segment and today's

    body = client.get(f"/v3/storage/files/{AAPL}", params={"tick_type": "last", "format": "parquet"}).json()
    assert body["total_files"] == 2
    assert {f["relative_path"]: f["size_bytes"] for f in body["files"]} == archive
    assert body["total_size_mb"] == pytest.approx(sum(archive.values()) / 2**20)
    assert sum(f["ticks"] for f in body["files"]) == 120

    everything = client.get(f"/v3/storage/files/{AAPL}", params={"tick_type": "last", "format": "all"}).json()
    paths = [f["relative_path"] for f in everything["files"]]
    assert set(paths) == set(archive) | set(segments)
    assert paths[0] == max(segments)  # newest first: today's live segment was written last
    modified = [datetime.fromisoformat(f["modified"].replace("Z", "+00:00")) for f in everything["files"]]
    assert modified == sorted(modified, reverse=True)
    for f in everything["files"]:
        assert f["size_mb"] == pytest.approx(f["size_bytes"] / 2**20)
        assert {"relative_path", "size_mb", "modified"} <= set(f)

    json_only = client.get(f"/v3/storage/files/{AAPL}", params={"tick_type": "last", "format": "json"}).json()
    assert [f["relative_path"] for f in json_only["files"]] == sorted(segments, reverse=True)
    assert client.get(f"/v3/storage/files/{AAPL}").json()["total_files"] == 4  # every stream, every format


def test_v3_files_refuses_what_it_cannot_list(served: tuple[LiveServer, httpx.Client, Path]) -> None:
    _, client, _ = served
    bad = client.get(f"/v3/storage/files/{AAPL}", params={"format": "protobuf"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "format"
    bad = client.get(f"/v3/storage/files/{AAPL}", params={"tick_type": "quotes"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "tick_type"
    assert client.get("/v3/storage/files/424242").status_code == 404


def test_v3_info_and_stats_hold_what_ib_studies_prints(served: tuple[LiveServer, httpx.Client, Path]) -> None:
    _, client, root = served
    info = client.get("/v3/info").json()
    assert info["version"] and info["description"]
    assert isinstance(info["optimizations"], dict) and isinstance(info["field_mapping"], dict)
    assert {"/v3/storage/stats", "/v3/storage/files/{contract_id}"} <= set(info["endpoints"])
    stats = client.get("/v3/storage/stats").json()
    summary = stats["optimization_summary"]
    archive = on_disk(root, "archive/**/*.parquet")
    assert summary["archive_files"] == len(archive)
    assert summary["archive_size_mb"] == pytest.approx(sum(archive.values()) / 2**20)
    segments = on_disk(root, "buffer/**/*.jsonl")
    assert summary["archive_ticks"] == 120 and summary["buffer_segments"] == len(segments) == 2
    assert summary["bytes_per_tick"] == pytest.approx(sum(archive.values()) / 120, rel=1e-3)
    assert stats["total_files"] == len(archive) + len(segments)
    (last,) = [s for s in stats["streams"] if s["contract_id"] == AAPL and s["tick_type"] == "last"]
    assert last["archive_ticks"] == 120 and last["archive_files"] == 2 and last["buffer_segments"] == 2
