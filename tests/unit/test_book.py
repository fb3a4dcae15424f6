"""The L2 book: IB position rows and price levels, table replay, top-N volumes, serialisation, snapshots on disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ib_stream.analytics.book import OrderBook, records_to_table, replay, top_volumes
from ib_stream.analytics.engine import obi_bars
from ib_stream.analytics.grid import BarGrid
from ib_stream.analytics.obi import VOLUMES_SCHEMA
from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.layout import HOUR_NS, Layout
from ib_stream.store.snapshots import Snapshot, SnapshotStore, SnapshotWriter, book_at
from tests.conftest import T0_NS, seconds
from tests.support.depth_oracle import DepthBook


def row(
    side: str, position: int, operation: str, price: float, size: float, ts: int = 1, mm: str = ""
) -> dict[str, Any]:
    return {"ts": ts, "side": side, "position": position, "operation": operation, "price": price, "size": size,
            "market_maker": mm, "by_price": False}  # fmt: skip


def level(side: str, operation: str, price: float, size: float, ts: int = 1) -> dict[str, Any]:
    return {"ts": ts, "side": side, "position": 0, "operation": operation, "price": price, "size": size,
            "market_maker": "", "by_price": True}  # fmt: skip


def random_rows(rng: random.Random, n: int, max_rows: int = 8, ts0: int = 0) -> list[dict[str, Any]]:
    """IB-like position depth: mostly updates, some inserts and deletes, a few out-of-range positions."""
    held = {"bid": 0, "ask": 0}
    out = []
    for i in range(n):
        side = rng.choice(("bid", "ask"))
        r = rng.random()
        if r < 0.15 and held[side] < max_rows:
            op, pos = "insert", rng.randint(0, held[side])
            held[side] += 1
        elif r < 0.3 and held[side] > 0:
            op, pos = "delete", rng.randint(0, held[side] - 1)
            held[side] -= 1
        else:
            op, pos = "update", rng.randint(0, held[side] + (1 if rng.random() < 0.1 else 0))
            held[side] = max(held[side], pos + 1)
        if rng.random() < 0.02:
            pos = rng.randint(0, 12)  # a stream joined mid-way / a delete of a row not held
        price = round(100 + (rng.randint(-40, 0) if side == "bid" else rng.randint(1, 41)) * 0.25, 2)
        out.append(row(side, pos, op, price, float(rng.randint(1, 30) * 100), ts0 + i, rng.choice(("", "", "MM1"))))
    return out


def random_levels(rng: random.Random, n: int, ts0: int = 0) -> list[dict[str, Any]]:
    """Price-level depth on a 0.01 grid: sets, size-0 deletes and explicit deletes (some of absent levels)."""
    out = []
    for i in range(n):
        side = rng.choice(("bid", "ask"))
        price = round(100 + (rng.randint(-30, 0) if side == "bid" else rng.randint(1, 31)) * 0.01, 2)
        r = rng.random()
        if r < 0.2:
            out.append(level(side, "delete", price, 0.0, ts0 + i))
        elif r < 0.3:
            out.append(level(side, "update", price, 0.0, ts0 + i))
        else:
            out.append(level(side, rng.choice(("insert", "update")), price, float(rng.randint(1, 50)), ts0 + i))
    return out


def reference_levels(events: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Price-level book by the definition: the last size set per (side, price), 0 / delete = absent."""
    state: dict[tuple[str, float], float] = {}
    for e in events:
        state[(e["side"], e["price"])] = 0.0 if e["operation"] == "delete" else e["size"]
    bids = sorted(((p, s) for (side, p), s in state.items() if side == "bid" and s > 0), reverse=True)
    asks = sorted((p, s) for (side, p), s in state.items() if side == "ask" and s > 0)
    return bids, asks


# ---- position rows ---------------------------------------------------------------------------------------------


def test_insert_shifts_down_update_replaces_delete_shifts_up() -> None:
    book = OrderBook()
    for i, price in enumerate((10.0, 9.0, 8.0)):
        book.apply(row("bid", i, "insert", price, 100.0 + i))
    book.apply(row("bid", 1, "insert", 9.5, 50.0))  # between row 0 and the old row 1
    assert book.levels()[0] == [(10.0, 100.0), (9.5, 50.0), (9.0, 101.0), (8.0, 102.0)]
    book.apply(row("bid", 2, "update", 9.25, 7.0))
    assert book.levels()[0] == [(10.0, 100.0), (9.5, 50.0), (9.25, 7.0), (8.0, 102.0)]
    book.apply(row("bid", 0, "delete", 0.0, 0.0))
    assert book.levels()[0] == [(9.5, 50.0), (9.25, 7.0), (8.0, 102.0)]
    assert book.levels()[1] == [] and book.by_price is False and book.events == 6


def test_a_stream_joined_mid_way_creates_rows_on_update() -> None:
    book = OrderBook()
    book.apply(row("ask", 3, "update", 1.5, 10.0))
    assert book.rows("ask") == [None, None, None, (1.5, 10.0, "")]
    assert not book.complete and book.levels()[1] == [(1.5, 10.0)]
    assert book.top_volumes(3) == (0.0, 0.0) and book.top_volumes(4) == (0.0, 10.0)
    for pos, price in enumerate((1.1, 1.2, 1.3)):
        book.apply(row("ask", pos, "update", price, 1.0))
    assert book.complete and [p for p, _ in book.levels(2)[1]] == [1.1, 1.2]


def test_a_delete_of_a_row_not_held_is_counted_and_changes_nothing() -> None:
    book = OrderBook()
    book.apply(row("bid", 0, "insert", 5.0, 1.0))
    book.apply(row("bid", 4, "delete", 0.0, 0.0))
    assert book.anomalies == 1 and book.levels()[0] == [(5.0, 1.0)]


def test_max_rows_drops_the_rows_pushed_off_the_end() -> None:
    book = OrderBook(max_rows=2)
    for price in (1.0, 2.0, 3.0):
        book.apply(row("ask", 0, "insert", price, 1.0))
    assert book.levels()[1] == [(3.0, 1.0), (2.0, 1.0)]


@pytest.mark.parametrize("seed", range(5))
def test_position_rows_agree_with_the_ib_parsing_depth_book(seed: int) -> None:
    events = random_rows(random.Random(seed), 3000)
    oracle = DepthBook()
    for e in events:
        oracle.apply(e)
    sequential, vectorised = OrderBook(), OrderBook()
    sequential.apply_records(events)
    vectorised.apply_table(records_to_table(events))
    for side in ("bid", "ask"):
        assert sequential.rows(side) == oracle.rows(side) == vectorised.rows(side)
    assert sequential.anomalies == oracle.anomalies == vectorised.anomalies


# ---- price levels ----------------------------------------------------------------------------------------------


def test_price_levels_set_sizes_and_size_zero_or_delete_removes() -> None:
    book = OrderBook()
    book.apply(level("bid", "insert", 99.0, 5.0))
    book.apply(level("bid", "insert", 100.0, 3.0))
    book.apply(level("bid", "update", 98.0, 1.0))  # an update of a new price creates it
    book.apply(level("ask", "insert", 101.0, 2.0))
    book.apply(level("ask", "insert", 100.5, 4.0))
    assert book.levels() == ([(100.0, 3.0), (99.0, 5.0), (98.0, 1.0)], [(100.5, 4.0), (101.0, 2.0)])
    book.apply(level("bid", "update", 99.0, 0.0))
    book.apply(level("ask", "delete", 100.5, 9.0))
    book.apply(level("ask", "delete", 200.0, 0.0))  # absent: nothing happens
    assert book.levels() == ([(100.0, 3.0), (98.0, 1.0)], [(101.0, 2.0)])
    assert book.levels(1) == ([(100.0, 3.0)], [(101.0, 2.0)])
    assert book.cumulative() == ([(100.0, 3.0), (98.0, 4.0)], [(101.0, 2.0)])


@pytest.mark.parametrize("seed", range(5))
def test_price_levels_equal_the_last_size_per_price(seed: int) -> None:
    events = random_levels(random.Random(seed), 4000)
    sequential, vectorised = OrderBook(), OrderBook()
    sequential.apply_records(events)
    vectorised.apply_table(records_to_table(events))
    assert sequential.levels() == vectorised.levels() == reference_levels(events)
    assert sequential == vectorised and vectorised.events == 4000 and vectorised.last_ts == events[-1]["ts"]


def test_a_tick_of_the_other_kind_empties_the_book_and_switches() -> None:
    book = OrderBook()
    book.apply(row("bid", 0, "insert", 1.0, 1.0))
    book.apply(level("ask", "insert", 2.0, 3.0))
    assert book.by_price is True and book.levels() == ([], [(2.0, 3.0)]) and book.mode_switches == 1
    mixed = [row("bid", 0, "insert", 1.0, 1.0), level("ask", "insert", 2.0, 3.0), row("ask", 0, "insert", 4.0, 1.0)]
    table_book = replay(records_to_table(mixed))
    assert table_book.by_price is False and table_book.levels() == ([], [(4.0, 1.0)]) and table_book.mode_switches == 2


# ---- top volumes -----------------------------------------------------------------------------------------------


def apply_row(rows: list[tuple[float, float] | None], e: dict[str, Any]) -> None:
    """IB's row semantics, written out plainly."""
    pos = e["position"]
    if e["operation"] == "delete":
        if pos < len(rows):
            rows.pop(pos)
        return
    while len(rows) < pos:
        rows.append(None)
    if e["operation"] == "insert":
        rows.insert(pos, (e["price"], e["size"]))
    elif pos == len(rows):
        rows.append((e["price"], e["size"]))
    else:
        rows[pos] = (e["price"], e["size"])


@pytest.mark.parametrize(("by_price", "levels"), [(False, 3), (False, 10), (True, 1), (True, 5), (True, 0)])
def test_top_volumes_after_each_event_match_a_plain_replay(by_price: bool, levels: int) -> None:
    rng = random.Random(levels)
    events = random_levels(rng, 2000) if by_price else random_rows(rng, 2000)
    start = OrderBook()
    start.apply_records(events[:300])
    before = start.to_dict()
    volumes = top_volumes(records_to_table(events[300:]), levels, start_book=start)
    assert start.to_dict() == before  # the start book is not modified
    assert volumes.schema == VOLUMES_SCHEMA and volumes.num_rows == 1700
    expected = []
    prices: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    rows: dict[str, list[tuple[float, float] | None]] = {"bid": [], "ask": []}
    for i, e in enumerate(events):  # an independent replay: plain dicts / lists, recomputed in full each time
        if by_price:
            prices[e["side"]][e["price"]] = 0.0 if e["operation"] == "delete" else e["size"]
        else:
            apply_row(rows[e["side"]], e)
        if i < 300:
            continue
        if by_price:
            bids = sorted(((p, s) for p, s in prices["bid"].items() if s > 0), reverse=True)[:levels]
            asks = sorted((p, s) for p, s in prices["ask"].items() if s > 0)[:levels]
            expected.append((e["ts"], sum(s for _, s in bids), sum(s for _, s in asks)))
        else:
            bid = sum(r[1] for r in rows["bid"][:levels] if r is not None)
            ask = sum(r[1] for r in rows["ask"][:levels] if r is not None)
            expected.append((e["ts"], bid, ask))
    got = list(zip(volumes.column("ts").cast(pa.int64()).to_pylist(), volumes.column("bid_volume").to_pylist(),
                   volumes.column("ask_volume").to_pylist(), strict=True))  # fmt: skip
    assert got == expected  # whole sizes: the sums are exact in any order


def test_top_volumes_accept_records_and_feed_the_obi_bars() -> None:
    events = [level("bid", "insert", 10.0, 3.0, T0_NS), level("ask", "insert", 11.0, 1.0, T0_NS + seconds(1))]
    volumes = top_volumes(events, 10)
    assert volumes.column("bid_volume").to_pylist() == [3.0, 3.0]
    assert volumes.column("ask_volume").to_pylist() == [0.0, 1.0]
    bars = obi_bars(BarGrid.utc(T0_NS, T0_NS + seconds(60), "1m"), volumes)
    assert bars["obi_close"][0] == pytest.approx((3 - 1) / (3 + 1))
    assert top_volumes(records_to_table([]), 5).num_rows == 0


# ---- serialisation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by_price", [False, True])
def test_a_book_round_trips_through_json_exactly(by_price: bool) -> None:
    rng = random.Random(7)
    events = random_levels(rng, 500) if by_price else random_rows(rng, 500)
    for e in events:
        e["price"] += 1e-9 * rng.random()  # prices that are not short decimals
    book = OrderBook()
    book.apply_records(events)
    copy = OrderBook.from_dict(orjson.loads(orjson.dumps(book.to_dict())))
    assert copy == book and copy.to_dict() == book.to_dict()
    assert copy.levels() == book.levels() and copy.top_volumes(4) == book.top_volumes(4)
    with pytest.raises(ValueError):
        OrderBook.from_dict({"format": 1, "bids": []})


# ---- snapshot files --------------------------------------------------------------------------------------------


def test_a_snapshot_is_written_atomically_and_replaces_older_builds(tmp_path: Path) -> None:
    snapshots = SnapshotStore(Layout.of(StorageConfig(data_root=tmp_path)))
    book = OrderBook()
    book.apply(level("bid", "insert", 1.0, 2.0))
    first = snapshots.save(Snapshot(7, T0_NS, 10, book))
    second = snapshots.save(Snapshot(7, T0_NS, 12, book))
    assert not first.exists() and second.name == "hour=14.seq=000000000012.json"
    assert second.parent.name == "date=2025-01-10" and second.parent.parent.name == "contract_id=7"
    assert [e.built_seq for e in snapshots.entries(7)] == [12]
    loaded = snapshots.load(7, snapshots.entries(7)[0])
    assert loaded is not None and loaded.book == book and loaded.built_seq == 12
    second.write_bytes(b"{not json")
    assert snapshots.load(7, snapshots.entries(7)[0]) is None and snapshots.corrupt == 1
    for hours_back in (1, 2):
        snapshots.save(Snapshot(7, T0_NS - hours_back * HOUR_NS, 1, book))
    assert snapshots.remove_before(7, T0_NS + 1) == 2  # all older but the latest, kept as a base
    assert [e.boundary_ns for e in snapshots.entries(7)] == [T0_NS]
    leftover = second.with_name(f".{second.name}.tmp-99")  # a write interrupted before its rename
    leftover.write_bytes(b"{")
    assert snapshots.remove_temp_files(7) == 1 and not leftover.exists() and len(snapshots.entries(7)) == 1


def test_after_retention_a_rebuild_starts_from_the_kept_snapshot(tmp_path: Path) -> None:
    clock = ManualClock(T0_NS)
    config = StorageConfig(data_root=tmp_path, fsync_interval_ms=1, archive_retention_days=0.25, buffer_duration_minutes=1,
                           compaction_delay_seconds=0, retired_file_grace_seconds=0)  # fmt: skip
    old = [
        level("bid", "insert", 90.0, 1.0, T0_NS - 8 * HOUR_NS),
        level("ask", "insert", 95.0, 2.0, T0_NS - 7 * HOUR_NS),
    ]
    recent = [level("bid", "insert", 91.0, 3.0, T0_NS - 2 * HOUR_NS)]
    late = [level("ask", "insert", 94.0, 4.0, T0_NS - 2 * HOUR_NS + 1)]
    with TickStore(config, clock) as store:
        store.append_batch_sync(5, "depth", old + recent, source="test")
        clock.advance(16 * 60)
        store.run_archival()
        writer = SnapshotWriter.for_engine(store.engine)
        assert writer.update().written == 3  # 07:00, 08:00, 13:00
        # The 06:00 and 07:00 hours are older than 6 hours: deleted, and the 07:00 snapshot with them
        # (08:00 stays as the base of later rebuilds).
        store.run_retention()
        assert store.engine.read_stream(StreamKey(5, TickType.DEPTH), 0, 2**62).num_rows == 1
        assert [e.boundary_ns for e in writer.snapshots.entries(5)] == [T0_NS - 6 * HOUR_NS, T0_NS - HOUR_NS]
        assert writer.remove_before(clock.now_ns() - 6 * HOUR_NS) == 0
        store.append_batch_sync(5, "depth", late, source="test")  # makes 13:00 stale
        report = writer.update()
        assert report.rebuilt == 1 and report.deltas_replayed == 2
        expected = OrderBook()
        expected.apply_records(old + recent + late)
        result = book_at(store.engine, 5, T0_NS)
        assert result.book == expected and result.snapshot is not None and result.deltas_replayed == 0


def test_the_writer_snapshots_every_closed_hour_with_depth_and_skips_the_open_one(
    store: TickStore, clock: ManualClock
) -> None:
    hours = [T0_NS - 3 * HOUR_NS, T0_NS - 2 * HOUR_NS, T0_NS]  # 11:00, 12:00 (13:00 empty), 14:00 (open)
    events = [level("bid", "insert", 100.0 + i, 1.0, h + seconds(i)) for i, h in enumerate(hours)]
    store.append_batch_sync(5, "depth", events, source="test")
    report = SnapshotWriter.for_engine(store.engine).update()
    entries = SnapshotStore(store.layout).entries(5)
    assert [e.boundary_ns for e in entries] == [T0_NS - 2 * HOUR_NS, T0_NS - HOUR_NS]
    assert [e.built_seq for e in entries] == [1, 2] and report.written == 2
    assert SnapshotWriter.for_engine(store.engine).update().written == 0  # idempotent
    clock.advance(3600 + 61)
    assert SnapshotWriter.for_engine(store.engine).update().written == 1  # the 14:00 hour closed
    at = book_at(store.engine, 5, T0_NS + seconds(10), levels=2)
    assert at.snapshot is not None and at.snapshot.boundary_ns == T0_NS - HOUR_NS and at.deltas_replayed == 1
    assert at.bids == [(102.0, 1.0), (101.0, 1.0)]
    # Another process's read-only engine (DiskHot reads the unarchived segments) finds the same snapshots.
    readonly = StorageQuery(config=store.config)
    try:
        other = book_at(readonly.engine, 5, T0_NS + seconds(10), levels=2)
        assert other.book == at.book and other.snapshot == at.snapshot and other.deltas_replayed == 1
    finally:
        readonly.close()
    assert store.engine.read_stream(StreamKey(5, TickType.DEPTH), 0, 2**62).num_rows == 3
