"""Real depth through the store and the book: IB EUR.USD updateMktDepth rows rebuild the recorded final book;
Binance USD-M futures price-level depth (snapshot, then a diff) gives the book a plain pandas merge gives.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from ib_stream.analytics.book import top_volumes
from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.sources.ib_parsing import depth_from_mkt_depth
from ib_stream.storage import TickStore
from ib_stream.store.layout import HOUR_NS
from ib_stream.store.snapshots import SnapshotWriter, book_at
from tests.conftest import requires_shared_data

EURUSD = 12087792
BTCUSDT = 1


def open_store(root: Path, now: str) -> TickStore:
    clock = ManualClock(pd.Timestamp(now).value)
    config = StorageConfig(
        data_root=root, fsync_interval_ms=1, compaction_delay_seconds=0, retired_file_grace_seconds=0
    )
    return TickStore(config, clock).open()


def ns(text: str) -> int:
    return int(pd.Timestamp(text).value)


# ---- IB EUR.USD (IDEALPRO): 271 updates, no initial inserts -------------------------------------------------


@pytest.fixture
def eurusd(tmp_path: Path) -> Iterator[tuple[TickStore, list[dict[str, Any]], list[dict[str, str]]]]:
    directory = requires_shared_data("ib_depth_eurusd")
    with open(directory / "eurusd_mktdepth_20220221.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(directory / "eurusd_mktdepth_final_book_20220221.csv", newline="") as handle:
        final = list(csv.DictReader(handle))
    # The IB source's own parser turns each updateMktDepth row into a depth tick (ts = receive time).
    ticks = [
        depth_from_mkt_depth(
            int(r["position"]), int(r["operation"]), int(r["side"]), float(r["price"]), float(r["size"]),
            ns(r["time_recv_utc"]), r["market_maker"],
        )
        for r in rows
    ]  # fmt: skip
    store = open_store(tmp_path / "storage", "2022-02-21T22:30:00Z")
    for i in range(0, len(ticks), 50):  # as the source would: several batches
        store.append_batch_sync(EURUSD, "depth", ticks[i : i + 50], source="ib_depth")
    store.clock.advance(16 * 60)  # type: ignore[attr-defined]
    store.run_archival()
    yield store, ticks, final
    store.close()


def final_rows(final: list[dict[str, str]], side: str) -> list[tuple[float, float, str]]:
    chosen = sorted((r for r in final if r["side_name"] == side), key=lambda r: int(r["position"]))
    assert [int(r["position"]) for r in chosen] == list(range(5))
    return [(float(r["price"]), float(r["size"]), r["market_maker"]) for r in chosen]


def test_eurusd_updates_rebuild_the_recorded_final_book(
    eurusd: tuple[TickStore, list[dict[str, Any]], list[dict[str, str]]],
) -> None:
    store, ticks, final = eurusd
    assert len(ticks) == 271 and all(t["operation"] == "update" for t in ticks)
    last_ts = max(t["ts"] for t in ticks)
    replayed = book_at(store.engine, EURUSD, last_ts)  # before 21:00: no snapshot yet, a full replay
    assert replayed.snapshot is None and replayed.deltas_replayed == 271
    for side in ("bid", "ask"):
        assert replayed.book.rows(side) == final_rows(final, side)
    assert replayed.book.complete and replayed.book.by_price is False

    report = SnapshotWriter.for_engine(store.engine).update()
    assert report.written == 1  # at 21:00, the end of the only hour with depth
    later = book_at(store.engine, EURUSD, ns("2022-02-21T21:30:00Z"), levels=5)
    assert later.snapshot is not None and later.snapshot.boundary_ns == ns("2022-02-21T21:00:00Z")
    assert later.deltas_replayed == 0 and later.book == replayed.book
    assert later.bids == [(p, s) for p, s, _ in final_rows(final, "bid")]
    assert later.asks == [(p, s) for p, s, _ in final_rows(final, "ask")]
    assert later.snapshot.boundary_ns - last_ts < HOUR_NS

    depth = store.engine.read_stream(StreamKey(EURUSD, TickType.DEPTH), 0, 2**62)
    updates = len(set(depth.column("ts").cast(pa.int64()).to_pylist()))  # ticks sharing a stamp: one update
    assert updates < 271
    for levels in (1, 3, 5):
        volumes = top_volumes(depth, levels)
        assert volumes.num_rows == updates
        assert volumes.column("bid_volume")[-1].as_py() == sum(s for _, s, _ in final_rows(final, "bid")[:levels])
        assert volumes.column("ask_volume")[-1].as_py() == sum(s for _, s, _ in final_rows(final, "ask")[:levels])


# ---- Binance USD-M futures BTCUSDT: price levels, qty 0 = delete ------------------------------------------------


def binance_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    directory = requires_shared_data("binance_btcusdt")
    snap = pd.read_csv(directory / "futures_depth-snap_20221101.csv")
    update = pd.read_csv(directory / "futures_depth-update_20221101.csv")
    return snap, update


def binance_ticks(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "ts": int(r.timestamp) * 1_000_000,
            "side": "bid" if r.side == "b" else "ask",
            "position": 0,
            "operation": "insert" if r.update_type == "snap" else ("delete" if r.qty == 0 else "update"),
            "price": float(r.price),
            "size": float(r.qty),
            "by_price": True,
        }
        for r in frame.itertuples()
    ]


def pandas_book(frames: list[pd.DataFrame]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The book by the definition, computed with pandas: the last qty per (side, price), 0 = no level."""
    rows = pd.concat(frames, ignore_index=True).drop_duplicates(["side", "price"], keep="last")
    rows = rows[rows.qty > 0]
    bids = rows[rows.side == "b"].sort_values("price", ascending=False)
    asks = rows[rows.side == "a"].sort_values("price")
    return list(zip(bids.price, bids.qty, strict=True)), list(zip(asks.price, asks.qty, strict=True))


def test_binance_price_level_snapshot_then_diff(tmp_path: Path) -> None:
    snap, update = binance_frames()
    assert (snap.update_type == "snap").all() and (update.update_type == "set").all()
    store = open_store(tmp_path / "storage", "2022-11-02T02:00:00Z")
    try:
        store.append_batch_sync(BTCUSDT, "depth", binance_ticks(snap), source="import")
        store.append_batch_sync(BTCUSDT, "depth", binance_ticks(update), source="import")
        snap_ts, update_ts = int(snap.timestamp.iloc[0]) * 1_000_000, int(update.timestamp.iloc[0]) * 1_000_000
        assert SnapshotWriter.for_engine(store.engine).update().written == 1  # at 2022-11-02T00:00Z

        first = book_at(store.engine, BTCUSDT, snap_ts)
        assert first.book.levels() == pandas_book([snap]) and len(first.bids) == 100 and first.asks == []
        assert first.bids == sorted(first.bids, reverse=True)

        after = book_at(store.engine, BTCUSDT, update_ts, levels=20)
        bids, asks = pandas_book([snap, update])
        assert after.book.levels() == (bids, asks) and after.snapshot is None
        assert after.bids == bids[:20] and after.asks == asks[:20]
        cumulative_bids, cumulative_asks = after.cumulative()
        assert [c for _, c in cumulative_asks] == pytest.approx(pd.Series([s for _, s in asks[:20]]).cumsum().tolist())
        assert cumulative_bids[-1][1] == pytest.approx(sum(s for _, s in bids[:20]))

        next_day = book_at(store.engine, BTCUSDT, ns("2022-11-02T00:30:00Z"))
        assert next_day.snapshot is not None and next_day.deltas_replayed == 0 and next_day.book == after.book
    finally:
        store.close()
