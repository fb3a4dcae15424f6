"""An import scenario for the undo tests: recorded ticks, two imports to undo and one to keep, and everything the
store answers about the contract, so that a store that undid the imports can be compared with an oracle store
that never made them.

`build(config, clock, undone=...)` runs the whole history on a data root: recorded trades, quotes and price-level
depth over five hours (two segments, so every hour is compacted from several parts), the imports, archival,
compaction, rollups and snapshots, then late recorded ticks in hours already compacted and the jobs again. With
`undone=False` the two imports `X_FLOW` (an order-flow recording: depth and trades) and `X_MBP` (a Databento
MBP-1 file: quotes and trades, three of its trades identical to recorded ones) are made; with `undone=True` (the
oracle) they are not. Both make the import `Y` (trades that no other source holds), so the import ids are 1, 2
(the X imports) and 3 (Y) in the first, 1 (Y) in the oracle. `observe(store)` gathers ticks, bars (from rollups
and from ticks, and through the store's query cache), books and daily statistics; `assert_same` compares two observations (floats to 1e-9).
"""

from __future__ import annotations

import csv
import math
import random
import sqlite3
from dataclasses import astuple
from pathlib import Path
from typing import Any, Final

from ib_stream.analytics.request import BarsRequest
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.importers import OrderflowOptions, import_file, import_orderflow, parse_mapping, preset
from ib_stream.importers.tabular import Output, Recipe
from ib_stream.orderflow.dashboard import liquidity_heatmap
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.schema import table_to_records
from ib_stream.store.snapshots import book_at
from ib_stream.times import iso_ns
from tests.conftest import T0_NS

C: Final = 700_001
CONTRACT: Final = Contract(C, "UNDO", sec_type="CRYPTO", exchange="TEST", calendar="24/7", min_tick=0.01)
MINUTE: Final = 60 * NS_PER_SECOND
HOUR: Final = 60 * MINUTE
H0: Final = T0_NS - 8 * HOUR  # the first hour holding data
HOURS: Final = 5
X_IDS: Final = (1, 2)  # the imports to undo, in the store that made them
Y_ID: Final = 3
STREAMS: Final = tuple(StreamKey(C, t) for t in (TickType.LAST, TickType.BID_ASK, TickType.DEPTH))
Y_RECIPE: Final = Recipe(
    "custom", "trades", (Output(TickType.LAST, parse_mapping("t=ts,px=price,qty=size"), time_unit="ns"),), "csv"
)


def _price(i: int) -> float:
    return round(100.0 + 0.25 * ((i * 7) % 23), 2)


def recorded(part: int) -> dict[TickType, list[dict[str, Any]]]:
    """The recorded ticks: part 1 over all five hours, part 2 (late) in hours 2-4."""
    rng = random.Random(f"recorded/{part}")
    first = H0 if part == 1 else H0 + 2 * HOUR
    span = HOURS * HOUR if part == 1 else 3 * HOUR
    step = 13 if part == 1 else 29
    trades, quotes, depth = [], [], []
    for i in range(0, span // NS_PER_SECOND, step):
        ts = first + i * NS_PER_SECOND + rng.randrange(1_000_000)
        trades.append({"ts": ts, "price": _price(i + part), "size": float(1 + i % 5), "side": (1, -1, None)[i % 3]})
    for i in range(0, span // NS_PER_SECOND, step + 4):
        ts = first + i * NS_PER_SECOND + 500_000_000
        bid = _price(i) - 0.25
        quotes.append(
            {"ts": ts, "bid_price": bid, "bid_size": float(3 + i % 4), "ask_price": bid + 0.5, "ask_size": 2.0}
        )
    for i in range(0, span // NS_PER_SECOND, 61):
        ts = first + i * NS_PER_SECOND + 250_000_000
        side = "bid" if i % 2 else "ask"
        price = 99.0 + (i % 5) * 0.5 if side == "bid" else 102.0 + (i % 5) * 0.5
        operation = "delete" if i % 7 == 6 else "insert" if i % 3 == 0 else "update"
        size = 0.0 if operation == "delete" else float(1 + i % 9)
        depth.append({"ts": ts, "side": side, "position": 0, "operation": operation, "price": price, "size": size,
                      "by_price": True})  # fmt: skip
    return {TickType.LAST: trades, TickType.BID_ASK: quotes, TickType.DEPTH: depth}


def write_flow(path: Path) -> Path:
    """X_FLOW: an order-flow recording of the contract, book rows and trades over hours 1-3."""
    book, trades = [], []
    for n in range(120):
        ms = (H0 + HOUR + n * 90 * NS_PER_SECOND) // 1_000_000
        bids = [[100.0 - 0.5 * k, float(1 + (n + k) % 6)] for k in range(3)]
        asks = [[100.5 + 0.5 * k, float(1 + (n * k) % 5)] for k in range(3 - n % 2)]
        book.append((n + 1, "UNDO", repr(bids), repr(asks), str(ms)))
        trades.append((n + 1, "UNDO", str(n), 100.25, 0.5 + n % 3, "buy" if n % 2 else "sell", str(ms + 7)))
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE book (id INTEGER PRIMARY KEY, instrument TEXT, bids TEXT, asks TEXT, timestamp TEXT)")
        db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, instrument TEXT, trade_id TEXT, price REAL, "
                   "size REAL, side TEXT, timestamp TEXT)")  # fmt: skip
        db.executemany("INSERT INTO book VALUES (?, ?, ?, ?, ?)", book)
        db.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)", trades)
    db.close()
    return path


def write_mbp(path: Path) -> Path:
    """X_MBP: a Databento MBP-1 export over hours 1-3; three of its trades are recorded trades (same time, price and
    size), which the import finds stored and does not store again."""
    base = recorded(1)[TickType.LAST]
    columns = ["ts_event", "action", "side", "price", "size", "bid_px_00", "bid_sz_00", "ask_px_00", "ask_sz_00"]
    rows = []
    for n in range(900):
        ts = H0 + HOUR + n * 12 * NS_PER_SECOND + 3_000
        trade = n % 3 == 0
        rows.append([iso_ns(ts), "T" if trade else "A", "B" if n % 2 else "A", 101.5 + (n % 4) * 0.25,
                     2 + n % 7, 101.0, 4 + n % 3, 101.75, 5])  # fmt: skip
    for tick in base[300:303]:  # recorded trades, as the vendor saw them
        rows.append([iso_ns(tick["ts"]), "T", "N", tick["price"], int(tick["size"]), 99.0, 1, 103.0, 1])
    rows.sort(key=lambda r: r[0])
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(columns)
        out.writerows(rows)
    return path


def write_y(path: Path) -> Path:
    """Y: trades over hours 2-3 that nothing else holds (sizes from 1000)."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["t", "px", "qty"])
        for n in range(200):
            out.writerow([H0 + 2 * HOUR + n * 41 * NS_PER_SECOND + 11, 100.0 + (n % 8) * 0.25, 1000 + n])
    return path


def import_x(store: TickStore, directory: Path) -> None:
    """The two imports to undo (ids 1 and 2 in a fresh store)."""
    import_orderflow(store, write_flow(directory / "flow.db"), OrderflowOptions(contract_id=C), batch_size=97)
    import_file(store, write_mbp(directory / "mbp.csv"), preset("databento-mbp1"), C, batch_size=211)


def run_jobs(store: TickStore, clock: ManualClock) -> None:
    clock.advance(20 * 60)
    store.run_archival()
    store.run_compaction()
    store.run_rollups()
    store.run_snapshots()


def build(config: StorageConfig, clock: ManualClock, *, undone: bool, directory: Path) -> None:
    """Run the scenario's history on `config`'s data root (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    part1 = recorded(1)
    with TickStore(config, clock) as store:
        for tick_type, ticks in part1.items():  # the first half of each hour's ticks in one segment...
            store.append_batch_sync(C, tick_type, [t for t in ticks if t["ts"] % HOUR < HOUR // 2], "sim")
        clock.advance(16 * 60)
        for tick_type, ticks in part1.items():  # ...the second half in the next: each hour gets several parts
            store.append_batch_sync(C, tick_type, [t for t in ticks if t["ts"] % HOUR >= HOUR // 2], "sim")
        if not undone:
            import_x(store, directory)
        import_file(store, write_y(directory / "y.csv"), Y_RECIPE, C, option="--map")
        run_jobs(store, clock)
        for tick_type, ticks in recorded(2).items():
            store.append_batch_sync(C, tick_type, ticks, "sim")
        run_jobs(store, clock)


# ---- what the store answers ----------------------------------------------------------------------------------------
def observe(store: TickStore) -> dict[str, Any]:
    """Every answer about the contract: ticks (without seq and receive time), bars at 1m and 1h from rollups and from
    ticks, the book every 17 minutes, the liquidity heatmap from its rollups and from the walk, and the daily
    statistics."""
    seen: dict[str, Any] = {}
    for stream in STREAMS:
        records = table_to_records(store.engine.read_stream(stream, 0, 2**62))
        seen[f"ticks {stream.tick_type.value}"] = [
            {k: v for k, v in r.items() if k not in ("seq", "recv_ts")} for r in records
        ]
    start, end = H0 - HOUR, H0 + (HOURS + 1) * HOUR
    # Through the store's query cache (a cached answer must never outlive a change of its range)...
    frame = store.engine.query(C, [TickType.LAST, TickType.BID_ASK], start, end)
    seen["cached query"] = frame.drop(columns=["seq", "recv_ts"]).astype(object).to_dict("records")
    cached = OrderFlow(store.engine, CONTRACT).bars(BarsRequest(C, start, end, "5m"))
    seen["cached bars 5m"] = cached.table.to_pylist()
    # ...and around it.
    for use_rollups in (True, False):
        flow = OrderFlow(store.engine, CONTRACT, use_rollups=use_rollups, use_cache=False)
        for resolution in ("1m", "1h"):
            result = flow.bars(BarsRequest(C, start, end, resolution))
            seen[f"bars {resolution} rollups={use_rollups}"] = result.table.to_pylist()
    for at in range(H0, end, 17 * MINUTE):
        book = book_at(store.engine, C, at)
        seen[f"book {iso_ns(at)}"] = (book.bids, book.asks)
    for use_rollups in (True, False):  # the heatmap from its rollups (whole-second columns) and from the walk
        heat = liquidity_heatmap(store.engine, CONTRACT, start, end, 150, 60, use_rollups=use_rollups).map
        seen[f"heatmap rollups={use_rollups}"] = (heat.bids.round(2).tolist(), heat.asks.round(2).tolist())
    seen["statistics"] = [astuple(s) for s in store.index.statistics() if s.contract_id == C]
    return seen


def config_at(root: Path) -> StorageConfig:
    return StorageConfig(data_root=root, fsync_interval_ms=0, compaction_delay_seconds=0, retired_file_grace_seconds=0)


def oracle(root: Path) -> dict[str, Any]:
    """What a store that never made the X imports answers (built under `root`)."""
    clock = ManualClock(T0_NS)
    config = config_at(root / "storage")
    build(config, clock, undone=True, directory=root / "files")
    with TickStore(config, clock) as store:
        return observe(store)


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Compare two observations: equal, floats within 1e-9 (relative), NaN equal to NaN."""
    if isinstance(want, float) and isinstance(got, float):
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (
            f"{where}: {got!r} != {want!r}"
        )
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple) and isinstance(got, list | tuple):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
