"""Order-flow service: what the order-flow dashboard draws — footprint bars and the liquidity heatmap — read from
the store and computed by the analytics kernels (blocking calls; the service runs them off the event loop).

* `footprint(flow, request, ...)`: the trades of the request classified exactly as the bar engine classifies
  them (`OrderFlow.trade_sides`: the one side classifier with its session context), bucketed by bar and price level.
* `liquidity_heatmap(engine, contract, ...)`: the book in force at the window start from the snapshot machinery
  (`book_at`: latest valid snapshot plus the deltas after it — never a replay from the first tick), then the
  depth ticks of the window as resting intervals, binned on the time × price grid. The window is cut at the
  snapshot boundaries (hours) inside it: each piece starts from its own snapshot, so the pieces run in
  parallel on two threads.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from ib_stream.analytics.footprint import DEFAULT_IMBALANCE_RATIO, Footprint, footprint, parse_price_step
from ib_stream.analytics.heatmap import Heatmap, PriceRows, heatmap, price_rows
from ib_stream.analytics.request import BarsRequest
from ib_stream.analytics.resting import Resting, resting_intervals
from ib_stream.analytics.side import floats, ts_ns
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import NotFoundError, QueryError, ValidationError
from ib_stream.orderflow.service import OrderFlow
from ib_stream.store.query import QueryEngine
from ib_stream.store.snapshots import book_at
from ib_stream.times import iso_ns

_PIECE_WORKERS: Final = 2
DEPTH_COLUMNS: Final = ("ts", "seq", "side", "position", "operation", "price", "size", "by_price")
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
    """A heatmap and how its book was rebuilt: the snapshot used at the window start (None: none), deltas applied."""

    contract_id: int
    start_ns: int
    end_ns: int
    map: Heatmap
    snapshot_ns: int | None
    deltas_replayed: int


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
) -> HeatmapResult:
    """The resting-liquidity heatmap of [start_ns, end_ns); NotFoundError when no depth rests in the window."""
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
    partition = engine.layout.partition_ns
    cuts = [start_ns, *range(start_ns - start_ns % partition + partition, end_ns, partition), end_ns]
    spans = list(itertools.pairwise(cuts))
    work = [contextvars.copy_context() for _ in spans]
    futures = [
        _pieces_pool.submit(ctx.run, _piece, engine, contract.con_id, lo, hi, levels)
        for ctx, (lo, hi) in zip(work, spans, strict=True)
    ]
    pieces = [f.result() for f in futures]
    if not any(p.had_depth for p in pieces):
        raise NotFoundError(
            f"no depth is recorded for contract {contract.con_id} in {iso_ns(start_ns)} .. {iso_ns(end_ns)}",
            details={"field": "contract_id", "value": contract.con_id, "reason": "no_depth"},
        )
    lows = [float(p.resting.price.min()) for p in pieces if len(p.resting)]
    highs = [float(p.resting.price.max()) for p in pieces if len(p.resting)]
    lowest = min(lows) if lows else (price_low if price_low is not None else 0.0)
    highest = max(highs) if highs else (price_high if price_high is not None else lowest)
    axis: PriceRows = price_rows(lowest, highest, contract.min_tick, rows, price_low, price_high)
    # Each piece is binned on the whole window's grid (in parallel); the cells of a window are the sums of its pieces'.
    binned = [
        _pieces_pool.submit(contextvars.copy_context().run, heatmap, p.resting, start_ns, end_ns, columns, axis)
        for p in pieces
    ]
    maps = [f.result() for f in binned]
    first = maps[0]
    total = dataclasses.replace(
        first, bids=sum((m.bids for m in maps[1:]), first.bids), asks=sum((m.asks for m in maps[1:]), first.asks)
    )
    return HeatmapResult(contract.con_id, start_ns, end_ns, total, pieces[0].snapshot_ns, sum(p.deltas for p in pieces))


def _piece(engine: QueryEngine, contract_id: int, lo: int, hi: int, levels: int | None) -> _Piece:
    """The resting intervals of [lo, hi): the book at lo (every tick with ts <= lo) then the ticks of (lo, hi)."""
    start = book_at(engine, contract_id, lo)
    deltas = engine.read_stream(StreamKey(contract_id, TickType.DEPTH), lo + 1, hi, DEPTH_COLUMNS)
    resting = resting_intervals(start.book, deltas, lo, hi, levels)
    snapshot_ns = None if start.snapshot is None else start.snapshot.boundary_ns
    return _Piece(
        resting, snapshot_ns, start.deltas_replayed + deltas.num_rows, len(start.book) > 0 or deltas.num_rows > 0
    )
