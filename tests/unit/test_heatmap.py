"""The liquidity heatmap: resting intervals against a tick-by-tick book replay (position rows with inserts, updates
and deletes; price levels; a `levels` cut), cells against an exact pure-Python time integration of the replayed
book, a column where the book stands still equals the book, the snapshot used mid-way, hostile parameters."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from ib_stream.analytics.book import OrderBook, records_to_table
from ib_stream.analytics.heatmap import heatmap, parse_grid_size, parse_price, price_rows
from ib_stream.analytics.resting import FAST_RUN, resting_intervals
from ib_stream.domain import Contract
from ib_stream.errors import NotFoundError, ValidationError
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, seconds

TICK = 0.01


def _position_ticks(n: int, seed: int, start: int = T0_NS, update_share: float = 0.6) -> list[dict[str, Any]]:
    """IB-style position rows: inserts, updates and deletes at random rows, with runs of updates."""
    rng = random.Random(seed)
    ticks, rows = [], {"bid": 0, "ask": 0}
    at = start
    while len(ticks) < n:
        at += rng.randint(1, 3) * 10_000_000
        run = rng.choice([1, 1, 2, FAST_RUN + 5])  # some runs long enough for the folded path
        for _ in range(run):
            side = rng.choice(["bid", "ask"])
            held = rows[side]
            op = (
                "update"
                if held and rng.random() < update_share
                else rng.choice(["insert", "delete"] if held else ["insert"])
            )
            if run > 2:
                op = "update" if held else "insert"
            position = rng.randint(0, held if op == "insert" else max(held - 1, 0))
            rows[side] += {"insert": 1, "delete": -1}.get(op, 0) if (op != "delete" or held) else 0
            base = 10000 - position if side == "bid" else 10002 + position
            ticks.append({"ts": at, "side": side, "position": position, "operation": op,
                          "price": round((base + rng.randint(-1, 1)) * TICK, 2), "size": float(rng.randint(1, 9) * 100)})  # fmt: skip
            at += rng.choice([0, 1_000_000])
    return ticks


def _level_ticks(n: int, seed: int, start: int = T0_NS) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    ticks, at = [], start
    for _ in range(n):
        at += rng.randint(0, 3) * 5_000_000
        side = rng.choice(["bid", "ask"])
        price = round((9990 + rng.randint(0, 12) if side == "bid" else 10003 + rng.randint(0, 12)) * TICK, 2)
        op = rng.choice(["update", "update", "insert", "delete"])
        size = 0.0 if op == "delete" else float(rng.choice([0, 100, 200, 300, 500]))
        ticks.append(
            {"ts": at, "side": side, "position": 0, "operation": op, "price": price, "size": size, "by_price": True}
        )
    return ticks


def _resting_at(resting: Any, t: int) -> dict[tuple[bool, float], float]:
    live = (resting.t0 <= t) & (t < resting.t1)
    out: dict[tuple[bool, float], float] = {}
    for is_ask, price, size in zip(resting.is_ask[live], resting.price[live], resting.size[live], strict=True):
        out[(bool(is_ask), float(price))] = out.get((bool(is_ask), float(price)), 0.0) + float(size)
    return out


def _book_sizes(book: OrderBook, levels: int | None) -> dict[tuple[bool, float], float]:
    out: dict[tuple[bool, float], float] = {}
    bids, asks = book.levels(levels)
    for is_ask, side in ((False, bids), (True, asks)):
        for price, size in side:
            if size > 0:
                out[(is_ask, price)] = out.get((is_ask, price), 0.0) + size
    return out


def _states(ticks: list[dict[str, Any]], start_book: OrderBook) -> list[tuple[int, OrderBook]]:
    """The book after every distinct timestamp, replayed tick by tick (the oracle)."""
    book, out = start_book.copy(), []
    for i, tick in enumerate(ticks):
        book.apply(tick)
        if i + 1 == len(ticks) or ticks[i + 1]["ts"] != tick["ts"]:
            out.append((tick["ts"], book.copy()))
    return out


@pytest.mark.parametrize("kind", ["rows", "levels"])
@pytest.mark.parametrize("levels", [None, 3])
def test_the_resting_intervals_are_the_replayed_book_at_every_instant(kind: str, levels: int | None) -> None:
    ticks = _position_ticks(3000, 1) if kind == "rows" else _level_ticks(3000, 2)
    warm, window = ticks[:400], ticks[400:]
    start = window[0]["ts"]
    start_book = OrderBook()
    start_book.apply_records(t for t in warm if t["ts"] < start)
    window = [t for t in ticks if t["ts"] >= start]
    end = window[-1]["ts"] + 1
    resting = resting_intervals(start_book, records_to_table(window), start, end, levels)
    states = _states(window, start_book)
    assert _resting_at(resting, start - 1) == {}
    for (at, book), (following, _) in zip(states, [*states[1:], (end, None)], strict=True):
        for t in {at, (at + following) // 2, following - 1}:
            assert _resting_at(resting, t) == pytest.approx(_book_sizes(book, levels)), t


def _integrated(
    states: list[tuple[int, OrderBook]], start_book: OrderBook, start: int, end: int, columns: int, axis: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's time-weighted mean, integrated exactly between the replayed book's changes (pure Python)."""
    column_ns = -(-(end - start) // columns)
    sums = [[[0.0] * columns for _ in range(axis.rows)] for _ in (0, 1)]
    times = [start] + [t for t, _ in states] + [end]
    books = [start_book] + [b for _, b in states]
    for lo, hi, book in zip(times[:-1], times[1:], books, strict=True):
        for (is_ask, price), size in _book_sizes(book, None).items():
            row = int((price - axis.low) // axis.height)
            if not 0 <= row < axis.rows:
                continue
            for col in range(columns):
                a, b = max(lo, start + col * column_ns), min(hi, start + (col + 1) * column_ns, end)
                if b > a:
                    sums[is_ask][row][col] += size * (b - a)
    lengths = [min(column_ns, end - (start + c * column_ns)) for c in range(columns)]
    return tuple(np.array(s) / np.array(lengths) for s in sums)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["rows", "levels"])
def test_every_cell_is_the_time_weighted_mean_of_the_replayed_book(kind: str) -> None:
    ticks = _position_ticks(1500, 5) if kind == "rows" else _level_ticks(1500, 6)
    start = ticks[200]["ts"]
    start_book = OrderBook()
    start_book.apply_records(t for t in ticks if t["ts"] < start)
    window = [t for t in ticks if t["ts"] >= start]
    end = window[-1]["ts"] + seconds(1)
    resting = resting_intervals(start_book, records_to_table(window), start, end)
    axis = price_rows(float(resting.price.min()), float(resting.price.max()), TICK, 7)
    found = heatmap(resting, start, end, 37, axis)
    bids, asks = _integrated(_states(window, start_book), start_book, start, end, found.columns, axis)
    np.testing.assert_allclose(found.bids, bids, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(found.asks, asks, rtol=1e-9, atol=1e-9)
    assert found.bids.shape == (axis.rows, found.columns) and found.max_size > 0


def test_a_window_without_resting_size_bins_to_zeros() -> None:
    empty = resting_intervals(OrderBook(), records_to_table([]), T0_NS, T0_NS + seconds(60))
    found = heatmap(empty, T0_NS, T0_NS + seconds(60), 10, price_rows(99.0, 101.0, TICK, 20, 99.0, 101.0))
    assert found.bids.shape == (found.axis.rows, 10) and found.max_size == 0 and not found.asks.any()


def test_price_rows_are_whole_steps_centred_on_the_grid() -> None:
    axis = price_rows(99.50, 100.49, 0.01, 200)  # 100 steps: one per row
    assert (axis.rows, round(axis.height, 12), round(axis.low, 12)) == (100, 0.01, 99.495)
    assert axis.centres()[0] == 99.5 and axis.centres()[-1] == 100.49
    coarse = price_rows(99.50, 100.49, 0.01, 30)  # 100 steps in rows of 4: 25 rows
    assert (coarse.rows, round(coarse.height, 12)) == (25, 0.04)
    assert list(coarse.row_of(np.array([99.50, 99.53, 99.54, 100.49]))) == [0, 0, 1, 24]
    assert list(coarse.row_of(np.array([99.48, 100.6]))) == [-1, -1]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: parse_grid_size(0, "columns", 1200, 4000), "columns"),
        (lambda: parse_grid_size(4001, "columns", 1200, 4000), "columns"),
        (lambda: parse_grid_size(10**9, "rows", 200, 1000), "rows"),
        (lambda: parse_price(float("nan"), "price_low"), "price_low"),
        (lambda: parse_price(float("inf"), "price_high"), "price_high"),
        (lambda: price_rows(100.0, 101.0, 0.01, 200, 101.0, 100.0), "price_high"),
    ],
)
def test_hostile_parameters_are_refused_naming_the_field(call: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        call()
    assert caught.value.details["field"] == field


def test_the_heatmap_through_the_store_starts_from_the_snapshot(store: TickStore) -> None:
    """A window starting mid-way begins at the book of the latest snapshot plus deltas (snapshot_used set), and equals
    the same window computed from a book replayed from the first tick; a column where the book stands still equals
    the book at that instant (book_at)."""
    ticks = _position_ticks(6000, 9, start=T0_NS)
    quiet_from = ticks[-1]["ts"] + seconds(1)
    hour = seconds(3600)
    late = [dict(t, ts=t["ts"] + hour + seconds(60)) for t in _position_ticks(1500, 10, start=T0_NS)]
    for t in late:
        t["operation"] = "update"  # the rows exist: all updates, some folded
    store.append_batch_sync(CONTRACT, "depth", ticks + late)
    store.clock.set(T0_NS + 3 * hour)  # type: ignore[attr-defined]
    store.run_archival()
    assert store.run_snapshots().written >= 1
    query = StorageQuery(store.engine, contracts=[Contract(CONTRACT, "AAPL", calendar="XNAS", min_tick=TICK)])
    start, end = T0_NS + hour + seconds(30), late[-1]["ts"] + seconds(30)
    found = query.heatmap_sync(CONTRACT, start, end, columns=50, rows=40)
    assert found.snapshot_ns == T0_NS + hour and found.deltas_replayed >= len(late)
    replayed = OrderBook()
    replayed.apply_records(t for t in ticks + late if t["ts"] <= start)
    window = [t for t in late if t["ts"] > start]
    resting = resting_intervals(replayed, records_to_table(window), start, end)
    oracle = heatmap(resting, start, end, 50, found.map.axis)
    np.testing.assert_allclose(found.map.bids, oracle.bids)
    np.testing.assert_allclose(found.map.asks, oracle.asks)
    # The first column lies before the late ticks: the book stands still there.
    assert found.map.column_starts()[1] <= late[0]["ts"]
    book = query.book_at_sync(CONTRACT, start)
    want = _book_sizes(book.book, None)
    for is_ask, matrix in ((False, found.map.bids), (True, found.map.asks)):
        shown = {round(float(p), 2): v for p, v in zip(found.map.axis.centres(), matrix[:, 0], strict=True) if v}
        assert shown == pytest.approx({p: s for (a, p), s in want.items() if a is is_ask})
    with pytest.raises(NotFoundError):
        query.heatmap_sync(CONTRACT, quiet_from - hour * 5, quiet_from - hour * 4)
    query.close()
