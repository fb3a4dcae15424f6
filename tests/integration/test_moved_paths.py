"""A data root whose catalog, buffer and archive are all moved by settings (`index_path`, `buffer_path`,
`archive_path`): the writer, the jobs, the query engines (the store's, `StorageQuery`'s, a read-only one),
`verify` and `index rebuild` all find every file — the book snapshots and rollups stay in the data root."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from ib_stream.analytics.request import BarsRequest
from ib_stream.cli import app
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.depth_rollups import depth_obi_rows
from ib_stream.store.query import QueryEngine
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.repair import rebuild, verify
from ib_stream.store.rollups import load_rows
from ib_stream.store.snapshots import book_at
from tests.conftest import CONTRACT, T0_NS
from tests.support.depth_oracle import DepthBook
from tests.unit.test_book import random_rows

S = NS_PER_SECOND
MINUTE = 60 * S
HOUR = 60 * MINUTE
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=0.01)
# Instants inside the 15:00 and 17:00 UTC hours (the 16:00 hour has no depth) and the snapshot each must use:
# the latest boundary before it that ends an hour holding depth.
BOOK_AT = [(T0_NS + HOUR + 25 * MINUTE, T0_NS + HOUR), (T0_NS + 3 * HOUR + 40 * MINUTE, T0_NS + 2 * HOUR)]
BARS = [
    BarsRequest(CONTRACT, T0_NS, T0_NS + 4 * HOUR, "1m", ("ohlc", "cvd", "obi")),
    BarsRequest(CONTRACT, T0_NS + 17 * MINUTE, T0_NS + 3 * HOUR + 50 * MINUTE, "5m", ("ohlc", "cvd", "obi")),
]


def depth_events() -> list[dict[str, Any]]:
    """IB position rows in the 14:00, 15:00 and 17:00 UTC hours, in (ts, append) order."""
    rng = random.Random(7)
    events = random_rows(rng, 4000)
    times = sorted(rng.randrange(T0_NS, T0_NS + 3 * HOUR) for _ in events)
    for event, ts in zip(events, times, strict=True):
        event["ts"] = ts + HOUR if ts >= T0_NS + 2 * HOUR else ts  # the 16:00 hour stays quiet
    return events


def trades() -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    ts = np.sort(T0_NS + rng.integers(0, 4 * HOUR, 2000))
    return [
        {"ts": int(t), "price": 100 + int(rng.integers(-8, 8)) * 0.25, "size": 1.0 + i % 7} for i, t in enumerate(ts)
    ]


def quotes() -> list[dict[str, Any]]:
    rng = np.random.default_rng(6)
    ts = np.sort(T0_NS + rng.integers(0, 4 * HOUR, 2000))
    return [
        {"ts": int(t), "bid_price": 99.75, "bid_size": float(rng.integers(1, 9)), "ask_price": 100.25,
         "ask_size": float(rng.integers(1, 9))}
        for t in ts
    ]  # fmt: skip


def oracle_rows(events: list[dict[str, Any]], at_ns: int) -> dict[str, list[Any]]:
    """The book at `at_ns` by a full replay of every depth tick with ts <= at_ns (the test's own simple book)."""
    book = DepthBook()
    for event in events:
        if event["ts"] <= at_ns:
            book.apply(event)
    return {side: book.rows(side) for side in ("bid", "ask")}


@pytest.fixture
def moved(tmp_path: Path) -> StorageConfig:
    """All three tiers away from the data root, the catalog in a directory of its own."""
    return StorageConfig(
        data_root=tmp_path / "root",
        index_path=tmp_path / "catalog" / "ticks.db",
        buffer_path=tmp_path / "spool" / "jsonl",
        archive_path=tmp_path / "cold" / "parquet",
        fsync_interval_ms=1,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
    )


@pytest.fixture
def written(moved: StorageConfig) -> Iterator[tuple[TickStore, list[dict[str, Any]]]]:
    """A store on the moved paths: depth, trades and quotes archived, snapshots and rollups written."""
    clock = ManualClock(T0_NS)
    store = TickStore(moved, clock).open()
    events = depth_events()
    store.append_batch_sync(CONTRACT, "depth", events, source="test")
    store.append_batch_sync(CONTRACT, "last", trades(), source="test")
    store.append_batch_sync(CONTRACT, "bid_ask", quotes(), source="test")
    clock.set(T0_NS + 6 * HOUR)
    store.run_archival()
    assert store.run_snapshots().written == 3  # at 15:00, 16:00 and 18:00
    assert store.run_rollups() > 0
    assert store.run_rollups() == 0  # the job finds what it wrote
    try:
        yield store, events
    finally:
        store.close()


def assert_books(engine: QueryEngine, events: list[dict[str, Any]]) -> None:
    """The book at each instant is the oracle's, rebuilt from the expected snapshot and less than an hour of
    deltas."""
    for at, boundary in BOOK_AT:
        result = book_at(engine, CONTRACT, at)
        assert result.snapshot is not None, f"no snapshot used for the book at {at}"
        assert result.snapshot.boundary_ns == boundary
        replayed = sum(boundary <= e["ts"] <= at for e in events)
        assert result.deltas_replayed == replayed <= sum(at - HOUR < e["ts"] <= at for e in events)
        assert {side: result.book.rows(side) for side in ("bid", "ask")} == oracle_rows(events, at)


def assert_rollups_serve_the_tick_answer(engine: QueryEngine) -> None:
    """Stored rollups are found (trades and depth) and the bars from them equal the tick path's."""
    assert load_rows(engine, StreamKey(CONTRACT, TickType.LAST), T0_NS, T0_NS, T0_NS + 4 * HOUR) is not None
    assert depth_obi_rows(engine, CONTRACT, T0_NS, T0_NS + 4 * HOUR, 10) is not None
    for request in BARS:
        ticks = OrderFlow(engine, AAPL, use_rollups=False, use_cache=False).bars(request)
        rolled = OrderFlow(engine, AAPL, use_cache=False).bars(request)
        assert rolled.obi_source == ticks.obi_source == "depth"
        assert rolled.side_methods == ticks.side_methods
        assert rolled.table.column_names == ticks.table.column_names
        for name in ticks.table.column_names:
            np.testing.assert_array_equal(
                rolled.table.column(name).to_numpy(zero_copy_only=False),
                ticks.table.column(name).to_numpy(zero_copy_only=False),
                err_msg=name,
            )


def test_the_data_root_holds_only_the_lock_and_the_derived_files(
    written: tuple[TickStore, list[dict[str, Any]]], moved: StorageConfig, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    assert sorted(p.name for p in root.iterdir()) == [".lock", "provenance.json", "rollups", "snapshots"]
    rollups = root / "rollups" / f"contract_id={CONTRACT}"
    assert len(list((rollups / "tick_type=last").rglob("hour=*.parquet"))) == 4  # 14:00 to 17:00
    assert len(list((rollups / "tick_type=depth").rglob("hour=*.parquet"))) == 3  # the hours holding depth
    assert len(list((root / "snapshots" / f"contract_id={CONTRACT}").rglob("hour=*.json"))) == 3
    # Beside the catalog: only the catalog (and its WAL files).
    assert {p.name for p in (tmp_path / "catalog").iterdir()} <= {"ticks.db", "ticks.db-wal", "ticks.db-shm"}
    assert any((tmp_path / "cold" / "parquet").rglob("*.parquet"))
    assert any((tmp_path / "spool" / "jsonl").rglob("*.jsonl"))


def test_book_at_through_the_store_engine_uses_the_snapshots(written: tuple[TickStore, list[dict[str, Any]]]) -> None:
    store, events = written
    assert_books(store.engine, events)


def test_storage_query_finds_the_snapshots_with_an_engine_or_the_settings(
    written: tuple[TickStore, list[dict[str, Any]]], moved: StorageConfig
) -> None:
    store, events = written
    for query in (StorageQuery(store.engine), StorageQuery(config=moved)):
        try:
            for at, boundary in BOOK_AT:
                result = query.book_at_sync(CONTRACT, at)
                assert result.snapshot is not None and result.snapshot.boundary_ns == boundary
                assert {side: result.book.rows(side) for side in ("bid", "ask")} == oracle_rows(events, at)
        finally:
            query.close()


def test_order_flow_bars_use_the_stored_rollups(written: tuple[TickStore, list[dict[str, Any]]]) -> None:
    store, _ = written
    assert_rollups_serve_the_tick_answer(store.engine)


def test_a_read_only_engine_from_the_same_settings_answers_the_same(
    written: tuple[TickStore, list[dict[str, Any]]], moved: StorageConfig
) -> None:
    store, events = written
    engine = open_readonly_engine(moved)
    try:
        assert_books(engine, events)
        assert_rollups_serve_the_tick_answer(engine)
        for request in BARS:
            mine = OrderFlow(store.engine, AAPL, use_cache=False).bars(request).table
            assert OrderFlow(engine, AAPL, use_cache=False).bars(request).table.equals(mine)
    finally:
        engine.index.close()


def cli(moved: StorageConfig, *args: str) -> Result:
    env = {
        "IB_STREAM_STORAGE__DATA_ROOT": str(moved.data_root),
        "IB_STREAM_STORAGE__INDEX_PATH": str(moved.index_path),
        "IB_STREAM_STORAGE__BUFFER_PATH": str(moved.buffer_path),
        "IB_STREAM_STORAGE__ARCHIVE_PATH": str(moved.archive_path),
        "COLUMNS": "300",
    }
    return CliRunner().invoke(app, list(args), env=env)


def test_verify_and_index_rebuild_work_on_the_moved_paths(
    written: tuple[TickStore, list[dict[str, Any]]], moved: StorageConfig, tmp_path: Path
) -> None:
    store, events = written
    files = len(store.index.files())
    store.close()
    report = verify(moved)
    assert report.ok and report.files_checked == files > 0
    result = cli(moved, "verify")
    assert result.exit_code == 0, result.output
    assert f"ok: {files} catalogued files" in result.stdout

    catalog = tmp_path / "catalog" / "ticks.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    assert rebuild(moved).files == files and catalog.is_file()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    result = cli(moved, "index", "rebuild")
    assert result.exit_code == 0, result.output
    assert catalog.is_file() and not (tmp_path / "root" / "index.db").exists()
    assert verify(moved).ok
    engine = open_readonly_engine(moved)
    try:
        assert_books(engine, events)  # the rebuilt catalog keeps the snapshots valid
        assert_rollups_serve_the_tick_answer(engine)  # and the rollups' keys (same files, same checksums)
    finally:
        engine.index.close()
