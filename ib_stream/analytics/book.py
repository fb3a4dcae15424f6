"""Analytics: the L2 order book — applies `depth` ticks (IB position rows or price levels) for capture, imports and queries.

Two kinds of depth share the `depth` stream; each tick says which one it is (`by_price`):

* **position rows** (`by_price=False`, IB `updateMktDepth` / `updateMktDepthL2`): each side is a
  list of rows in IB's order (row 0 = best). `insert` puts a row at `position` and shifts the
  rows at and below it down; `update` replaces row `position`; `delete` removes it and shifts the
  rest up. A stream joined mid-way (no initial inserts) updates rows the book has not seen: they
  are created, and the rows above them stay unknown until updated (they are left out of
  `levels`). A delete of a row the book does not hold changes nothing and is counted in
  `anomalies`. Rows keep IB's order, even when two market makers quote the same price.
* **price levels** (`by_price=True`, exchange-style L2, importers): each side maps price → size.
  `insert` / `update` set the level to the size; size 0 or `delete` removes the level. Bids are
  kept best (highest) first, asks best (lowest) first. `position` is ignored.

A book holds one kind at a time, fixed by the first tick it sees (or by `by_price=`); a tick of
the other kind empties the book and switches it (counted in `mode_switches`).

Replay is the one inherently sequential step of the analytics: `apply_table` folds a table with
tight per-event loops over plain column lists (price levels without per-event output are folded
vectorised: the last event per (side, price) wins), and `top_volumes` returns, after every
event, the summed size of the top N levels per side — the input of the OBI bars.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BID: Final = 0
ASK: Final = 1
INSERT: Final = 0
UPDATE: Final = 1
DELETE: Final = 2
OPERATIONS: Final = ("insert", "update", "delete")
_OP_CODES: Final = {name: code for code, name in enumerate(OPERATIONS)}
_OP_SET: Final = pa.array(OPERATIONS)
FORMAT_VERSION: Final = 1
# The shape of `top_volumes` (= ib_stream.analytics.obi.VOLUMES_SCHEMA; not imported: the book depends on nothing).
VOLUMES_SCHEMA: Final = pa.schema(
    [("ts", pa.timestamp("ns", tz="UTC")), ("bid_volume", pa.float64()), ("ask_volume", pa.float64())]
)

Row = tuple[float, float, str]  # (price, size, market_maker) of a position row
Level = tuple[float, float]  # (price, size)


class OrderBook:
    """One contract's L2 book (see the module docstring for both kinds of depth)."""

    __slots__ = ("_prices", "_rows", "_sizes", "anomalies", "by_price", "events", "last_seq", "last_ts", "max_rows",
                 "mode_switches")  # fmt: skip

    def __init__(self, by_price: bool | None = None, max_rows: int | None = None) -> None:
        self.by_price = by_price
        self.max_rows = max_rows  # position rows only: rows beyond this fall off after an insert
        self._rows: tuple[list[Row | None], list[Row | None]] = ([], [])
        self._sizes: tuple[dict[float, float], dict[float, float]] = ({}, {})
        self._prices: tuple[list[float], list[float]] = ([], [])  # ascending, both sides
        self.events = 0
        self.anomalies = 0
        self.mode_switches = 0
        self.last_ts: int | None = None
        self.last_seq: int | None = None

    # ---- applying events ---------------------------------------------------------------------------------
    def apply(self, record: Mapping[str, Any]) -> None:
        """Apply one depth tick (a stored record or a tick mapping)."""
        by_price = bool(record.get("by_price") or False)
        if by_price is not self.by_price:
            self._switch(by_price)
        side = BID if record["side"] == "bid" else ASK
        op = _OP_CODES[record["operation"]]
        if by_price:
            _set_level(self._sizes[side], self._prices[side], op, record["price"], record["size"])
        else:
            mm = record.get("market_maker") or ""
            self.anomalies += _set_row(self._rows[side], op, record["position"], (record["price"], record["size"], mm))
            if self.max_rows is not None:
                del self._rows[side][self.max_rows :]
        self.events += 1
        self.last_ts = int(record["ts"])
        seq = record.get("seq")
        if seq is not None:
            self.last_seq = int(seq)

    def apply_records(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Apply depth ticks in order; return how many."""
        count = 0
        for record in records:
            self.apply(record)
            count += 1
        return count

    def apply_table(self, table: pa.Table) -> int:
        """Apply a depth table in row order (sort it by (ts, seq) first); return the number of events."""
        if table.num_rows == 0:
            return 0
        columns = _Columns(table)
        for lo, hi, by_price in columns.runs():
            if by_price is not self.by_price:
                self._switch(by_price)
            if by_price:
                self._fold_levels(columns, lo, hi)
            else:
                self._run_rows(columns, lo, hi, None, 0)
        self._finish(columns)
        return table.num_rows

    def _fold_levels(self, c: _Columns, lo: int, hi: int) -> None:
        # Price levels commute across keys: only the last event of each (side, price) matters.
        side, price = c.is_ask[lo:hi], c.price[lo:hi]
        final = np.where(c.op[lo:hi] == DELETE, 0.0, c.size[lo:hi])
        order = np.lexsort((np.arange(hi - lo), price, side))
        s, p, f = side[order], price[order], final[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = (s[1:] != s[:-1]) | (p[1:] != p[:-1])
        for side_code in (BID, ASK):
            pick = last & (s == side_code)
            if not pick.any():
                continue
            sizes = self._sizes[side_code]
            for level_price, level_size in zip(p[pick].tolist(), f[pick].tolist(), strict=True):
                if level_size > 0:
                    sizes[level_price] = level_size
                else:
                    sizes.pop(level_price, None)
            self._prices[side_code][:] = sorted(sizes)

    def _run_rows(self, c: _Columns, lo: int, hi: int, out: tuple[list[float], list[float]] | None, n: int) -> None:
        rows = self._rows
        max_rows = self.max_rows
        anomalies = 0
        bid_vol, ask_vol = self.top_volumes(n) if out is not None else (0.0, 0.0)
        mm = c.market_makers()
        for i, is_ask, op, pos, price, size in zip(
            range(lo, hi), c.is_ask_list[lo:hi], c.op_list[lo:hi], c.position[lo:hi], c.price_list[lo:hi],
            c.size_list[lo:hi], strict=True,
        ):  # fmt: skip
            side = rows[is_ask]
            if op == UPDATE and pos < len(side):
                side[pos] = (price, size, mm[i])
            else:
                anomalies += _set_row(side, op, pos, (price, size, mm[i]))
                if max_rows is not None:
                    del side[max_rows:]
            if out is not None:
                total = 0.0
                for row in side[:n]:
                    if row is not None:
                        total += row[1]
                if is_ask:
                    ask_vol = total
                else:
                    bid_vol = total
                out[0].append(bid_vol)
                out[1].append(ask_vol)
        self.anomalies += anomalies

    def _run_levels(self, c: _Columns, lo: int, hi: int, out: tuple[list[float], list[float]], n: int) -> None:
        sizes, prices = self._sizes, self._prices
        bid_vol, ask_vol = self.top_volumes(n)
        append_bid, append_ask = out[0].append, out[1].append
        for is_ask, op, price, size in zip(
            c.is_ask_list[lo:hi], c.op_list[lo:hi], c.price_list[lo:hi], c.size_list[lo:hi], strict=True
        ):
            book, ladder = sizes[is_ask], prices[is_ask]
            if op == DELETE or size <= 0:
                if book.pop(price, None) is not None:
                    del ladder[bisect_left(ladder, price)]
            else:
                if price not in book:
                    insort(ladder, price)
                book[price] = size
            if is_ask:
                ask_vol = sum(map(book.__getitem__, ladder[:n]))
            else:
                bid_vol = sum(map(book.__getitem__, ladder[-n:])) if n else 0.0
            append_bid(bid_vol)
            append_ask(ask_vol)

    def _finish(self, c: _Columns) -> None:
        self.events += len(c.ts)
        self.last_ts = int(c.ts[-1])
        if c.seq is not None:
            self.last_seq = int(c.seq[-1])

    def _switch(self, by_price: bool) -> None:
        if self.by_price is not None:
            self.mode_switches += 1
            self.clear()
        self.by_price = by_price

    def clear(self) -> None:
        """Empty both sides (IB error 317: depth reset); counters and mode are kept."""
        for side in (BID, ASK):
            self._rows[side].clear()
            self._sizes[side].clear()
            self._prices[side].clear()

    def reset(self) -> None:
        """The same as `clear` (the name of the older `ib_parsing.DepthBook`)."""
        self.clear()

    # ---- reading -----------------------------------------------------------------------------------------
    def levels(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        """(bids, asks) as [(price, size)], best first, at most `n` per side (unknown rows left out)."""
        if self.by_price:
            bid_prices = self._prices[BID][::-1] if n is None else self._prices[BID][: -n - 1 : -1] if n else []
            ask_prices = self._prices[ASK] if n is None else self._prices[ASK][:n]
            return (
                [(p, self._sizes[BID][p]) for p in bid_prices],
                [(p, self._sizes[ASK][p]) for p in ask_prices],
            )
        bids, asks = ([(r[0], r[1]) for r in rows[:n] if r is not None] for rows in self._rows)
        return bids, asks

    def cumulative(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        """(bids, asks) as [(price, size at this level and every better one)], best first — the depth chart."""
        bids, asks = self.levels(n)
        return _accumulate(bids), _accumulate(asks)

    def top_volumes(self, levels: int) -> tuple[float, float]:
        """Summed size of the top `levels` levels (or known rows among the first `levels` rows) per side."""
        if self.by_price:
            bid = sum(map(self._sizes[BID].__getitem__, self._prices[BID][-levels:])) if levels > 0 else 0.0
            ask = sum(map(self._sizes[ASK].__getitem__, self._prices[ASK][:levels])) if levels > 0 else 0.0
            return float(bid), float(ask)
        sides = [sum(r[1] for r in rows[: max(levels, 0)] if r is not None) for rows in self._rows]
        return float(sides[BID]), float(sides[ASK])

    def rows(self, side: str) -> list[Row | None]:
        """Position rows of one side in IB's order as (price, size, market_maker); None = not seen yet."""
        return list(self._rows[BID if side == "bid" else ASK])

    @property
    def complete(self) -> bool:
        """Whether every position row of both sides is known (always true for price levels)."""
        return all(row is not None for rows in self._rows for row in rows)

    def __len__(self) -> int:
        """Number of known levels (rows) on both sides."""
        bids, asks = self.levels()
        return len(bids) + len(asks)

    def __eq__(self, other: object) -> bool:
        """Books are equal when they hold the same levels (rows with market makers); counters are ignored."""
        if not isinstance(other, OrderBook):
            return NotImplemented
        return self._content() == other._content()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def _content(self) -> tuple[Any, ...]:
        if len(self) == 0 and not any(self._rows):
            return ()
        if self.by_price:
            return (True, self._sizes[BID], self._sizes[ASK])
        return (False, self._rows[BID], self._rows[ASK])

    def __repr__(self) -> str:
        mode = {None: "empty", True: "price levels", False: "position rows"}[self.by_price]
        bids, asks = self.levels(1)
        return f"OrderBook({mode}, {len(self)} levels, best bid {bids[:1]}, best ask {asks[:1]}, {self.events} events)"

    def copy(self) -> OrderBook:
        """An independent copy."""
        book = OrderBook(self.by_price, self.max_rows)
        book._rows = (list(self._rows[BID]), list(self._rows[ASK]))
        book._sizes = (dict(self._sizes[BID]), dict(self._sizes[ASK]))
        book._prices = (list(self._prices[BID]), list(self._prices[ASK]))
        book.events, book.anomalies, book.mode_switches = self.events, self.anomalies, self.mode_switches
        book.last_ts, book.last_seq = self.last_ts, self.last_seq
        return book

    # ---- serialisation (snapshots) ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the whole book (floats round-trip exactly through JSON)."""
        if self.by_price:
            bids: list[Any] = [[p, s] for p, s in self.levels()[BID]]
            asks: list[Any] = [[p, s] for p, s in self.levels()[ASK]]
        else:
            bids, asks = ([None if r is None else list(r) for r in rows] for rows in self._rows)
        return {
            "format": FORMAT_VERSION,
            "by_price": self.by_price,
            "max_rows": self.max_rows,
            "bids": bids,
            "asks": asks,
            "events": self.events,
            "anomalies": self.anomalies,
            "mode_switches": self.mode_switches,
            "last_ts": self.last_ts,
            "last_seq": self.last_seq,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrderBook:
        """Rebuild a book from `to_dict` output; raise ValueError when it is not one."""
        try:
            if data["format"] != FORMAT_VERSION:
                raise ValueError(f"book format {data['format']!r} is not {FORMAT_VERSION}")
            book = cls(data["by_price"], data.get("max_rows"))
            for side, name in ((BID, "bids"), (ASK, "asks")):
                if book.by_price:
                    book._sizes[side].update((float(p), float(s)) for p, s in data[name])
                    book._prices[side][:] = sorted(book._sizes[side])
                else:
                    book._rows[side][:] = [
                        None if r is None else (float(r[0]), float(r[1]), str(r[2])) for r in data[name]
                    ]
            book.events, book.anomalies = int(data["events"]), int(data["anomalies"])
            book.mode_switches = int(data["mode_switches"])
            book.last_ts = None if data["last_ts"] is None else int(data["last_ts"])
            book.last_seq = None if data["last_seq"] is None else int(data["last_seq"])
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"not a serialised order book: {e!r}") from e
        return book


def top_volumes(
    depth_table: pa.Table | Sequence[Mapping[str, Any]], levels: int, start_book: OrderBook | None = None
) -> pa.Table:
    """After each book update, the summed size of the top `levels` levels per side: a (ts, bid_volume, ask_volume)
    table with one row per distinct ts.

    A book update is the run of depth ticks that share one timestamp (one imported book row, one IB message):
    the volumes are taken after its last tick, never from a half-applied book. `start_book` is the book before
    the first event (not modified); default empty. Sort the input by (ts, seq) first.
    """
    table = depth_table if isinstance(depth_table, pa.Table) else records_to_table(depth_table)
    book = start_book.copy() if start_book is not None else OrderBook()
    n = max(int(levels), 0)
    out: tuple[list[float], list[float]] = ([], [])
    if table.num_rows:
        columns = _Columns(table)
        for lo, hi, by_price in columns.runs():
            if by_price is not book.by_price:
                book._switch(by_price)
            if by_price:
                book._run_levels(columns, lo, hi, out, n)
            else:
                book._run_rows(columns, lo, hi, out, n)
    ts = np.asarray(pc.cast(table.column("ts"), pa.int64()).to_numpy(), dtype=np.int64) if table.num_rows else None
    bid, ask = np.asarray(out[BID], dtype=np.float64), np.asarray(out[ASK], dtype=np.float64)
    if ts is None:
        ts = np.zeros(0, dtype=np.int64)
    last_of_update = np.append(ts[1:] != ts[:-1], True) if len(ts) else np.zeros(0, dtype=bool)
    return pa.table(
        {
            "ts": pa.array(ts[last_of_update], pa.int64()).cast(VOLUMES_SCHEMA.field("ts").type),
            "bid_volume": pa.array(bid[last_of_update], pa.float64()),
            "ask_volume": pa.array(ask[last_of_update], pa.float64()),
        },
        schema=VOLUMES_SCHEMA,
    )


def replay(depth_table: pa.Table, start_book: OrderBook | None = None) -> OrderBook:
    """The book after applying `depth_table` to a copy of `start_book` (default: empty)."""
    book = start_book.copy() if start_book is not None else OrderBook()
    book.apply_table(depth_table)
    return book


def records_to_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Depth tick mappings as the columns `apply_table` reads (defaults for the optional fields)."""
    return pa.table(
        {
            "ts": pa.array([int(r["ts"]) for r in records], pa.int64()),
            "side": pa.array([r["side"] for r in records], pa.string()),
            "position": pa.array([int(r.get("position") or 0) for r in records], pa.int64()),
            "operation": pa.array([r["operation"] for r in records], pa.string()),
            "price": pa.array([float(r["price"]) for r in records], pa.float64()),
            "size": pa.array([float(r["size"]) for r in records], pa.float64()),
            "market_maker": pa.array([r.get("market_maker") or "" for r in records], pa.string()),
            "by_price": pa.array([bool(r.get("by_price") or False) for r in records], pa.bool_()),
        }
    )


# ---- internals ---------------------------------------------------------------------------------------------


class _Columns:
    """A depth table as numpy arrays and plain lists, decoded once for the replay loops."""

    def __init__(self, table: pa.Table) -> None:
        names = table.column_names
        self.table = table
        self.ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        self.seq = table.column("seq").to_numpy() if "seq" in names else None
        self.is_ask = pc.equal(table.column("side"), "ask").to_numpy(zero_copy_only=False).astype(np.int8)
        op = pc.index_in(table.column("operation"), value_set=_OP_SET)
        if op.null_count:
            bad = table.column("operation").filter(pc.is_null(op))[0].as_py()
            raise ValueError(f"depth operation {bad!r} is not insert, update or delete")
        self.op = op.to_numpy(zero_copy_only=False)
        self.price = table.column("price").to_numpy().astype(np.float64, copy=False)
        self.size = table.column("size").to_numpy().astype(np.float64, copy=False)
        self.position = table.column("position").to_pylist() if "position" in names else [0] * table.num_rows
        by_price = (
            table.column("by_price").fill_null(False).to_numpy(zero_copy_only=False)
            if "by_price" in names
            else np.zeros(table.num_rows, dtype=bool)
        )
        self.by_price = by_price
        self.is_ask_list: list[int] = self.is_ask.tolist()
        self.op_list: list[int] = self.op.tolist()
        self.price_list: list[float] = self.price.tolist()
        self.size_list: list[float] = self.size.tolist()
        self._mm: list[str] | None = None

    def runs(self) -> list[tuple[int, int, bool]]:
        """(lo, hi, by_price) runs of rows of one kind of depth."""
        change = np.flatnonzero(self.by_price[1:] != self.by_price[:-1]) + 1
        bounds = [0, *change.tolist(), len(self.by_price)]
        return [(lo, hi, bool(self.by_price[lo])) for lo, hi in itertools.pairwise(bounds)]

    def market_makers(self) -> list[str]:
        if self._mm is None:
            names = self.table.column_names
            self._mm = (
                self.table.column("market_maker").fill_null("").to_pylist()
                if "market_maker" in names
                else [""] * self.table.num_rows
            )
        return self._mm


def _set_row(rows: list[Row | None], op: int, position: int, row: Row) -> int:
    """Apply one position-row operation; return 1 for a delete of a row not held, else 0."""
    if op == DELETE:
        if position < len(rows):
            del rows[position]
            return 0
        return 1
    if op == INSERT:
        if position > len(rows):
            rows.extend([None] * (position - len(rows)))
        rows.insert(position, row)
        return 0
    if position >= len(rows):
        rows.extend([None] * (position + 1 - len(rows)))
    rows[position] = row
    return 0


def _set_level(sizes: dict[float, float], prices: list[float], op: int, price: float, size: float) -> None:
    """Apply one price-level operation: size 0 or delete removes the level, else it is set."""
    if op == DELETE or size <= 0:
        if sizes.pop(price, None) is not None:
            del prices[bisect_left(prices, price)]
        return
    if price not in sizes:
        insort(prices, price)
    sizes[price] = size


def _accumulate(levels: list[Level]) -> list[Level]:
    sizes = itertools.accumulate(size for _, size in levels)
    return [(price, total) for (price, _), total in zip(levels, sizes, strict=True)]


__all__ = ["OrderBook", "records_to_table", "replay", "top_volumes"]
