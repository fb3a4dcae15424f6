"""Analytics: resting liquidity — the L2 book over a window as intervals of constant size at a price (heatmap input).

`resting_intervals(book, deltas, start, end)` starts from the book in force at `start` and walks the
depth ticks of [start, end) with the semantics of `book.OrderBook` (position rows or price levels): it
returns one interval (t0, t1, side, price, size) for every stretch of time a row or level rested
unchanged, so the book at any instant t is the set of intervals with t0 <= t < t1 (rows that IB has not
sent yet — unknown rows — rest nowhere). With `levels`, only the first `levels` rows / best levels per side
count: a row pushed below that rank stops resting there, one moved up starts.

Most of a session's depth is runs of `update`s of position rows (each row an independent slot) or of
price-level events (each price an independent slot, when `levels` is None): such runs are folded with one
sort and array arithmetic, never a Python step per event. Inserts and deletes of position rows shift the
rows below them, so they (and short runs between them, and price levels with a `levels` cut) take a
per-event step, as the book's own replay does.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ib_stream.analytics.book import ASK, BID, DELETE, INSERT, OPERATIONS, UPDATE, OrderBook

FAST_RUN: Final = 64  # runs of updates at least this long are folded with arrays
_OP_SET: Final = pa.array(OPERATIONS)
_NONE: Final = -1  # `since` of a row that does not rest (unknown, or below the `levels` cut)


@dataclass(frozen=True, slots=True)
class Resting:
    """Intervals [t0, t1) during which `size` rested at `price` on one side (is_ask) of the book."""

    t0: np.ndarray
    t1: np.ndarray
    is_ask: np.ndarray
    price: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return len(self.t0)


class _Out:
    """Collects intervals: arrays from the folded runs, lists from the per-event steps."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.rows: list[tuple[int, int, int, float, float]] = []

    def add(self, t0: int, t1: int, is_ask: int, price: float, size: float) -> None:
        if t1 > t0 and size > 0:
            self.rows.append((t0, t1, is_ask, price, size))

    def result(self, start_ns: int, end_ns: int) -> Resting:
        if self.rows:
            t0, t1, side, price, size = (np.asarray(c) for c in zip(*self.rows, strict=True))
            self.chunks.append((t0, t1, side, price, size))
        if not self.chunks:
            empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
            return Resting(empty_i, empty_i, np.zeros(0, bool), empty_f, empty_f)
        t0, t1, side, price, size = (np.concatenate(parts) for parts in zip(*self.chunks, strict=True))
        t0 = np.maximum(t0.astype(np.int64), start_ns)
        t1 = np.minimum(t1.astype(np.int64), end_ns)
        keep = (t1 > t0) & (size > 0)
        return Resting(t0[keep], t1[keep], side[keep].astype(bool), price[keep].astype(np.float64), size[keep])


class _Rows:
    """Position rows per side as [price, size, since]; since = _NONE when the row does not rest."""

    def __init__(self, book: OrderBook, start_ns: int, levels: float) -> None:
        self.levels = levels
        self.max_rows = book.max_rows
        self.side: tuple[list[list[float] | None], list[list[float] | None]] = ([], [])
        for code, name in ((BID, "bid"), (ASK, "ask")):
            for position, row in enumerate(book.rows(name)):
                since = start_ns if position < levels else _NONE
                self.side[code].append(None if row is None else [row[0], row[1], since])

    def close(self, ts: int, out: _Out) -> None:
        for code in (BID, ASK):
            for row in self.side[code]:
                if row is not None and row[2] != _NONE:
                    out.add(int(row[2]), ts, code, row[0], row[1])
            self.side[code].clear()

    def step(self, ts: int, code: int, op: int, position: int, price: float, size: float, out: _Out) -> None:
        """Apply one event as `OrderBook._run_rows` does, closing and opening resting intervals."""
        rows, cut = self.side[code], self.levels
        if op == DELETE:
            if position < len(rows):
                gone = rows.pop(position)
                if gone is not None and gone[2] != _NONE:
                    out.add(int(gone[2]), ts, code, gone[0], gone[1])
                if position < cut and cut <= len(rows):  # the row that was at the cut moves above it
                    risen = rows[int(cut) - 1]
                    if risen is not None:
                        risen[2] = ts
            return
        new = [price, size, ts if position < cut else _NONE]
        if op == INSERT:
            if position > len(rows):
                rows.extend([None] * (position - len(rows)))
            if position < cut and cut <= len(rows):  # the row at the cut's last place moves below it
                pushed = rows[int(cut) - 1]
                if pushed is not None and pushed[2] != _NONE:
                    out.add(int(pushed[2]), ts, code, pushed[0], pushed[1])
                    pushed[2] = _NONE
            rows.insert(position, new)
        else:
            if position >= len(rows):
                rows.extend([None] * (position + 1 - len(rows)))
            old = rows[position]
            if old is not None and old[2] != _NONE:
                out.add(int(old[2]), ts, code, old[0], old[1])
            rows[position] = new
        if self.max_rows is not None:
            for fallen in rows[self.max_rows :]:
                if fallen is not None and fallen[2] != _NONE:
                    out.add(int(fallen[2]), ts, code, fallen[0], fallen[1])
            del rows[self.max_rows :]

    def fold_updates(self, c: _Columns, lo: int, hi: int, out: _Out) -> None:
        """A run of updates: each (side, position) is a slot whose content changes at each of its events."""
        position = c.position[lo:hi]
        width = max(len(self.side[BID]), len(self.side[ASK]), int(position.max()) + 1)
        asks = c.is_ask[lo:hi].astype(bool)
        for code, mine in ((BID, position[~asks]), (ASK, position[asks])):
            if len(mine):  # an update past the end adds unknown rows up to it, as OrderBook does (this side only)
                rows = self.side[code]
                rows.extend([None] * (int(mine.max()) + 1 - len(rows)))
        held_price = np.full(2 * width, np.nan)  # the content of every slot before the run
        held_size = np.full(2 * width, np.nan)
        held_since = np.full(2 * width, _NONE, dtype=np.int64)
        for code in (BID, ASK):
            for position_now, row in enumerate(self.side[code]):
                if row is not None:
                    held_price[code * width + position_now], held_size[code * width + position_now] = row[0], row[1]
                    held_since[code * width + position_now] = int(row[2])
        slot = c.is_ask[lo:hi].astype(np.int64) * width + position
        small = slot.astype(np.int16) if 2 * width < 2**15 else slot  # 16-bit keys: a radix sort
        order = np.argsort(small, kind="stable")
        s_slot, s_ts = slot[order], c.ts[lo:hi][order]
        s_price, s_size = c.price[lo:hi][order], c.size[lo:hi][order]
        first = np.r_[True, s_slot[1:] != s_slot[:-1]]
        prev_price = np.where(first, held_price[s_slot], np.r_[np.nan, s_price[:-1]])
        prev_size = np.where(first, held_size[s_slot], np.r_[np.nan, s_size[:-1]])
        prev_since = np.where(first, held_since[s_slot], np.r_[_NONE, s_ts[:-1]])
        resting = (s_slot % width < self.levels) & ~np.isnan(prev_size) & (prev_since != _NONE)
        out.chunks.append(
            (
                prev_since[resting],
                s_ts[resting],
                (s_slot[resting] >= width),
                prev_price[resting],
                prev_size[resting],
            )
        )
        last = np.r_[s_slot[1:] != s_slot[:-1], True]
        for slot_id, price, size, ts in zip(
            s_slot[last].tolist(), s_price[last].tolist(), s_size[last].tolist(), s_ts[last].tolist(), strict=True
        ):
            code, position_now = divmod(slot_id, width)
            self.side[code][position_now] = [price, size, ts if position_now < self.levels else _NONE]


class _Levels:
    """Price levels per side: price -> [size, since], with an ascending ladder for the `levels` cut."""

    def __init__(self, book: OrderBook, start_ns: int, levels: float) -> None:
        self.levels = levels
        self.sizes: tuple[dict[float, list[float]], dict[float, list[float]]] = ({}, {})
        self.ladder: tuple[list[float], list[float]] = ([], [])
        for code, side in zip((BID, ASK), book.levels() if book.by_price else ([], []), strict=True):
            for rank, (price, size) in enumerate(side):
                self.sizes[code][price] = [size, start_ns if rank < levels else _NONE]
            self.ladder[code][:] = sorted(self.sizes[code])

    def close(self, ts: int, out: _Out) -> None:
        for code in (BID, ASK):
            for price, (size, since) in self.sizes[code].items():
                if since != _NONE:
                    out.add(int(since), ts, code, price, size)
            self.sizes[code].clear()
            self.ladder[code].clear()

    def _rank(self, code: int, index: int) -> int:
        return len(self.ladder[code]) - 1 - index if code == BID else index

    def _at_rank(self, code: int, rank: int) -> float | None:
        ladder = self.ladder[code]
        if not 0 <= rank < len(ladder):
            return None
        return ladder[len(ladder) - 1 - rank] if code == BID else ladder[rank]

    def step(self, ts: int, code: int, op: int, price: float, size: float, out: _Out) -> None:
        """Apply one event as `OrderBook` does for price levels (delete or size <= 0 removes the level)."""
        sizes, ladder, cut = self.sizes[code], self.ladder[code], self.levels
        held = sizes.get(price)
        if held is not None and held[1] != _NONE:
            out.add(int(held[1]), ts, code, price, held[0])
        if op == DELETE or size <= 0:
            if held is None:
                return
            rank = self._rank(code, bisect_left(ladder, price))
            del sizes[price]
            del ladder[bisect_left(ladder, price)]
            if rank < cut:
                risen = self._at_rank(code, int(cut) - 1) if cut < float("inf") else None
                if risen is not None and sizes[risen][1] == _NONE:
                    sizes[risen][1] = ts
            return
        if held is None:
            insort(ladder, price)
            rank = self._rank(code, bisect_left(ladder, price))
            if rank < cut:
                pushed = self._at_rank(code, int(cut)) if cut < float("inf") else None
                if pushed is not None and sizes[pushed][1] != _NONE:
                    out.add(int(sizes[pushed][1]), ts, code, pushed, sizes[pushed][0])
                    sizes[pushed][1] = _NONE
            sizes[price] = [size, ts if rank < cut else _NONE]
        else:
            rank = self._rank(code, bisect_left(ladder, price))
            sizes[price] = [size, ts if rank < cut else _NONE]

    def fold(self, c: _Columns, lo: int, hi: int, out: _Out) -> None:
        """A run of price-level events without a `levels` cut: each (side, price) is an independent slot."""
        side, price = c.is_ask[lo:hi], c.price[lo:hi]
        final = np.where((c.op[lo:hi] == DELETE) | (c.size[lo:hi] <= 0), 0.0, c.size[lo:hi])
        order = np.lexsort((np.arange(hi - lo), price, side))
        s_side, s_price, s_final, s_ts = side[order], price[order], final[order], c.ts[lo:hi][order]
        first = np.r_[True, (s_side[1:] != s_side[:-1]) | (s_price[1:] != s_price[:-1])]
        held_size = np.zeros(int(first.sum()))
        held_since = np.zeros(len(held_size), dtype=np.int64)
        for k, (code, level_price) in enumerate(zip(s_side[first].tolist(), s_price[first].tolist(), strict=True)):
            held = self.sizes[code].get(level_price)
            if held is not None:
                held_size[k], held_since[k] = held
        slot_of = np.cumsum(first) - 1
        prev_size = np.where(first, held_size[slot_of], np.r_[0.0, s_final[:-1]])
        prev_since = np.where(first, held_since[slot_of], np.r_[0, s_ts[:-1]])
        resting = prev_size > 0
        out.chunks.append((prev_since[resting], s_ts[resting], s_side[resting], s_price[resting], prev_size[resting]))
        last = np.r_[first[1:], True]
        for code, level_price, size, ts in zip(
            s_side[last].tolist(), s_price[last].tolist(), s_final[last].tolist(), s_ts[last].tolist(), strict=True
        ):
            if size > 0:
                self.sizes[code][level_price] = [size, ts]
            else:
                self.sizes[code].pop(level_price, None)
        for code in (BID, ASK):
            self.ladder[code][:] = sorted(self.sizes[code])


class _Columns:
    """A depth table as numpy arrays (ts, is_ask, op, position, price, size, by_price)."""

    def __init__(self, table: pa.Table) -> None:
        names = table.column_names
        self.ts = np.asarray(pc.cast(table.column("ts"), pa.int64()).to_numpy(), dtype=np.int64)
        self.is_ask = pc.equal(table.column("side"), "ask").to_numpy(zero_copy_only=False).astype(np.int8)
        op = pc.index_in(table.column("operation"), value_set=_OP_SET)
        if op.null_count:
            bad = table.column("operation").filter(pc.is_null(op))[0].as_py()
            raise ValueError(f"depth operation {bad!r} is not insert, update or delete")
        self.op = op.to_numpy(zero_copy_only=False).astype(np.int8)
        self.price = np.asarray(table.column("price").to_numpy(), dtype=np.float64)
        self.size = np.asarray(table.column("size").to_numpy(), dtype=np.float64)
        self.position = (
            np.asarray(table.column("position").to_numpy(), dtype=np.int64)
            if "position" in names
            else np.zeros(table.num_rows, dtype=np.int64)
        )
        self.by_price = (
            table.column("by_price").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
            if "by_price" in names
            else np.zeros(table.num_rows, dtype=bool)
        )

    def runs(self) -> list[tuple[int, int, bool]]:
        """(lo, hi, by_price) runs of one kind of depth."""
        change = np.flatnonzero(self.by_price[1:] != self.by_price[:-1]) + 1
        bounds = [0, *change.tolist(), len(self.by_price)]
        return [(lo, hi, bool(self.by_price[lo])) for lo, hi in itertools.pairwise(bounds)]


def resting_intervals(
    book: OrderBook, deltas: pa.Table, start_ns: int, end_ns: int, levels: int | None = None
) -> Resting:
    """The resting intervals of [start_ns, end_ns) from `book` (in force at start_ns, not modified) and the depth
    ticks `deltas` sorted by (ts, seq), all with start_ns <= ts < end_ns; `levels`: rows / levels per side."""
    cut = float("inf") if levels is None else float(levels)
    out = _Out()
    mode = book.by_price
    rows, prices = _Rows(book, start_ns, cut), _Levels(book, start_ns, cut)
    if deltas.num_rows:
        c = _Columns(deltas)
        for lo, hi, by_price in c.runs():
            if mode is not None and by_price is not mode:  # a switch of kind empties the book, as OrderBook does
                rows.close(int(c.ts[lo]), out)
                prices.close(int(c.ts[lo]), out)
            mode = by_price
            if by_price:
                _walk_levels(prices, c, lo, hi, out)
            else:
                _walk_rows(rows, c, lo, hi, out)
    rows.close(end_ns, out)
    prices.close(end_ns, out)
    return out.result(start_ns, end_ns)


def _walk_rows(rows: _Rows, c: _Columns, lo: int, hi: int, out: _Out) -> None:
    is_update = c.op[lo:hi] == UPDATE
    bounds = np.flatnonzero(np.r_[True, is_update[1:] != is_update[:-1], True]) + lo
    for a, b in itertools.pairwise(bounds.tolist()):
        long_updates = bool(c.op[a] == UPDATE) and b - a >= FAST_RUN
        if long_updates and (rows.max_rows is None or int(c.position[a:b].max()) < rows.max_rows):
            rows.fold_updates(c, a, b, out)
            continue
        for ts, code, op, position, price, size in zip(
            c.ts[a:b].tolist(), c.is_ask[a:b].tolist(), c.op[a:b].tolist(), c.position[a:b].tolist(),
            c.price[a:b].tolist(), c.size[a:b].tolist(), strict=True,
        ):  # fmt: skip
            rows.step(ts, code, op, position, price, size, out)


def _walk_levels(prices: _Levels, c: _Columns, lo: int, hi: int, out: _Out) -> None:
    if prices.levels == float("inf"):
        prices.fold(c, lo, hi, out)
        return
    for ts, code, op, price, size in zip(
        c.ts[lo:hi].tolist(), c.is_ask[lo:hi].tolist(), c.op[lo:hi].tolist(), c.price[lo:hi].tolist(),
        c.size[lo:hi].tolist(), strict=True,
    ):  # fmt: skip
        prices.step(ts, code, op, price, size, out)
