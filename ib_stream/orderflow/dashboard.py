"""Order-flow service: what the order-flow dashboard draws — footprint bars and the liquidity heatmap — read from
the store and computed by the analytics kernels (blocking calls; the service runs them off the event loop).

* `footprint(flow, request, ...)`: the trades of the request classified exactly as the bar engine classifies
  them (`OrderFlow.trade_sides`: the one side classifier with its session context), bucketed by bar and price level.
* `liquidity_heatmap(engine, contract, ...)`: the book in force at the window start from the snapshot machinery
  (`book_at`: latest valid snapshot plus the deltas after it — never a replay from the first tick), then the
  depth ticks of the window as resting intervals, binned on the time × price grid. The window is cut at the
  snapshot boundaries (hours) inside it that hold a snapshot: each piece starts from its own snapshot, so the
  pieces run in parallel on two threads. When the column edges fall on whole seconds (a window of whole-second
  start and columns of at least a second) and every level counts (no `levels` cut), the whole seconds that valid
  heatmap rollups hold (`store.heatmap_rollups`: per-second resting sums, the same integrals) are read instead
  of walked; only the rest of the window (its last partial second, hours without a valid rollup) is walked.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np

from ib_stream.analytics.footprint import DEFAULT_IMBALANCE_RATIO, Footprint, footprint, parse_price_step
from ib_stream.analytics.heatmap import (
    SECOND_NS,
    Heatmap,
    PriceRows,
    SecondSums,
    column_span,
    heatmap,
    price_rows,
    seconds_heatmap,
)
from ib_stream.analytics.request import BarsRequest
from ib_stream.analytics.resting import Resting, resting_intervals
from ib_stream.analytics.side import floats, ts_ns
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import NotFoundError, QueryError, ValidationError
from ib_stream.orderflow.service import OrderFlow
from ib_stream.store.heatmap_rollups import DEPTH_COLUMNS, Served, served_sums, sums_range
from ib_stream.store.query import QueryEngine
from ib_stream.store.snapshots import SnapshotStore, book_at
from ib_stream.times import iso_ns

_PIECE_WORKERS: Final = 2
MAX_HEATMAP_DELTAS: Final = 25_000_000  # depth ticks one heatmap may walk (about five simulated sessions)
_pieces_pool = ThreadPoolExecutor(max_workers=_PIECE_WORKERS, thread_name_prefix="ib-stream-heatmap")


def footprint_of(
    flow: OrderFlow,
    request: BarsRequest,
    price_step: float | None = None,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
) -> Footprint:
    """The footprint bars of a request (price_step default: the contract's min_tick)."""
    step = parse_price_step(flow.contract.min_tick if price_step is None else price_step)
    trades, sides = flow.trade_sides(request)
    return footprint(
        flow.grid(request),
        ts_ns(trades),
        floats(trades, "price"),
        floats(trades, "size"),
        sides.side,
        step,
        imbalance_ratio,
    )


@dataclass(frozen=True, slots=True)
class HeatmapResult:
    """A heatmap and how it was built: the snapshot used at the window start (None: none, or the start was read
    from a rollup), the depth updates applied, the partitions served by heatmap rollups."""

    contract_id: int
    start_ns: int
    end_ns: int
    map: Heatmap
    snapshot_ns: int | None
    deltas_replayed: int
    rollups_used: int = 0


@dataclass(frozen=True, slots=True)
class _Piece:
    resting: Resting
    snapshot_ns: int | None
    deltas: int
    had_depth: bool


def liquidity_heatmap(
    engine: QueryEngine,
    contract: Contract,
    start_ns: int,
    end_ns: int,
    columns: int,
    rows: int,
    price_low: float | None = None,
    price_high: float | None = None,
    levels: int | None = None,
    use_rollups: bool = True,
) -> HeatmapResult:
    """The resting-liquidity heatmap of [start_ns, end_ns); NotFoundError when no depth rests in the window.
    `use_rollups=False` walks the whole window (the reference path)."""
    if end_ns <= start_ns:
        raise ValidationError("end_time", iso_ns(end_ns), f"is not after start_time {iso_ns(start_ns)}")
    stream = StreamKey(contract.con_id, TickType.DEPTH)
    held = engine.count(stream, start_ns, end_ns)
    if held > MAX_HEATMAP_DELTAS:
        raise QueryError(
            f"the heatmap of {iso_ns(start_ns)} .. {iso_ns(end_ns)} would walk {held} depth updates; at most "
            f"{MAX_HEATMAP_DELTAS} per request: use a shorter range",
            details={"field": "end_time", "value": iso_ns(end_ns), "deltas": held, "max_deltas": MAX_HEATMAP_DELTAS},
        )
    whole_seconds = start_ns % SECOND_NS == 0 and column_span(end_ns - start_ns, columns) % SECOND_NS == 0
    served = (
        served_sums(engine, contract.con_id, start_ns, end_ns)
        if use_rollups and levels is None and whole_seconds
        else []
    )
    # Cut what is left to walk at the boundaries inside it that have a snapshot (a piece without one would replay
    # from an older snapshot, or from the first tick: such a boundary stays inside its piece).
    snapshots = {e.boundary_ns for e in SnapshotStore(engine.layout).entries(contract.con_id, end_ns)}
    spans: list[tuple[int, int]] = []
    for lo, hi in _uncovered(start_ns, end_ns, served):
        cuts = [lo, *sorted(b for b in snapshots if lo < b < hi), hi]
        spans.extend(itertools.pairwise(cuts))
    work = [contextvars.copy_context() for _ in spans]
    futures = [
        _pieces_pool.submit(ctx.run, _piece, engine, contract.con_id, lo, hi, levels)
        for ctx, (lo, hi) in zip(work, spans, strict=True)
    ]
    pieces = [f.result() for f in futures]
    sums = [s.sums for s in served]
    if not any(p.had_depth for p in pieces) and not any(
        len(s.sums) or engine.count(stream, s.lo_ns, s.hi_ns) for s in served
    ):
        raise NotFoundError(
            f"no depth is recorded for contract {contract.con_id} in {iso_ns(start_ns)} .. {iso_ns(end_ns)}",
            details={"field": "contract_id", "value": contract.con_id, "reason": "no_depth"},
        )
    lows = [float(p.resting.price.min()) for p in pieces if len(p.resting)]
    highs = [float(p.resting.price.max()) for p in pieces if len(p.resting)]
    summed = sums_range(sums)
    if summed is not None:
        lows.append(summed[0])
        highs.append(summed[1])
    lowest = min(lows) if lows else (price_low if price_low is not None else 0.0)
    highest = max(highs) if highs else (price_high if price_high is not None else lowest)
    axis: PriceRows = price_rows(lowest, highest, contract.min_tick, rows, price_low, price_high)
    # Each piece is binned on the whole window's grid (in parallel); the cells of a window are the sums of its pieces'.
    binned = [
        _pieces_pool.submit(contextvars.copy_context().run, heatmap, p.resting, start_ns, end_ns, columns, axis)
        for p in pieces
    ]
    if served:
        merged = _concat(sums)
        binned.append(
            _pieces_pool.submit(
                contextvars.copy_context().run, seconds_heatmap, merged, start_ns, end_ns, columns, axis
            )
        )
    maps = [f.result() for f in binned]
    first = maps[0]
    total = dataclasses.replace(
        first, bids=sum((m.bids for m in maps[1:]), first.bids), asks=sum((m.asks for m in maps[1:]), first.asks)
    )
    opening = next((p.snapshot_ns for p, (lo, _) in zip(pieces, spans, strict=True) if lo == start_ns), None)
    return HeatmapResult(contract.con_id, start_ns, end_ns, total, opening, sum(p.deltas for p in pieces), len(served))


def _uncovered(start_ns: int, end_ns: int, served: list[Served]) -> list[tuple[int, int]]:
    """The spans of [start_ns, end_ns) the served rollups do not cover (served: ascending, disjoint)."""
    out, at = [], start_ns
    for s in served:
        if s.lo_ns > at:
            out.append((at, s.lo_ns))
        at = max(at, s.hi_ns)
    if at < end_ns:
        out.append((at, end_ns))
    return out


def _concat(sums: list[SecondSums]) -> SecondSums:
    return SecondSums(
        *(np.concatenate(parts) for parts in zip(*((s.second, s.is_ask, s.price, s.weight) for s in sums), strict=True))
    )


def _piece(engine: QueryEngine, contract_id: int, lo: int, hi: int, levels: int | None) -> _Piece:
    """The resting intervals of [lo, hi): the book at lo (every tick with ts <= lo) then the ticks of (lo, hi)."""
    start = book_at(engine, contract_id, lo)
    deltas = engine.read_stream(StreamKey(contract_id, TickType.DEPTH), lo + 1, hi, DEPTH_COLUMNS)
    resting = resting_intervals(start.book, deltas, lo, hi, levels)
    snapshot_ns = None if start.snapshot is None else start.snapshot.boundary_ns
    return _Piece(
        resting, snapshot_ns, start.deltas_replayed + deltas.num_rows, len(start.book) > 0 or deltas.num_rows > 0
    )
