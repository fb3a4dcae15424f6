"""Order-flow queries over the store: reads trades, quotes and depth of a range and returns OHLC, CVD and OBI bars.

`OrderFlow(engine, contract).bars(BarsRequest(...))` returns an Arrow table with one row per bar;
`.summary(request)` the aggregates of the whole range. Both are blocking (the service runs them in
`store.executor`). What is read, and why:

* trades (`last` or `all_last`) from the start of the session in progress at the range start, so
  the CVD and the session VWAP restart at the true session start and the tick rule has context;
* `bid_ask` quotes a little further back (`quote_lookback_ns`), for the quote rule when a trade
  has no recorded side, and for the OBI in force at the range start;
* depth, when OBI is asked from depth, through `depth_volumes` (default `book_top_volumes`: the
  book at the range start from the latest snapshot, then the book module's `top_volumes` over the
  depth ticks of the range).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.book import top_volumes
from ib_stream.analytics.obi import OBI_COLUMNS, VOLUMES_SCHEMA, obi_bars, time_weighted_obi, top_of_book_volumes
from ib_stream.analytics.orderflow import CVD_COLUMNS, OHLC_COLUMNS, SESSION_RESOLUTION, BarGrid, cvd_bars, trade_bars
from ib_stream.analytics.profile import volume_profile
from ib_stream.analytics.request import BarsRequest, BarsResult
from ib_stream.analytics.rollups import obi_bars_from_rows, rollup_bars
from ib_stream.analytics.side import TradeSides, classify, floats, recorded_sides, ts_ns
from ib_stream.calendars import MarketSessions, Session
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import IbStreamError, QueryError, ValidationError
from ib_stream.store.depth_rollups import depth_obi_rows
from ib_stream.store.query import QueryEngine
from ib_stream.store.rollups import load_rows
from ib_stream.store.snapshots import book_at
from ib_stream.times import iso_ns

# Trades before the range are read from the session start, but never more than this far back.
MAX_CONTEXT_NS: Final = 4 * 86_400 * NS_PER_SECOND
TS_TYPE: Final = pa.timestamp("ns", tz="UTC")

# (engine, depth stream, start_ns, end_ns, levels) -> (ts, bid_volume, ask_volume) or None without depth.
DepthVolumes = Callable[[QueryEngine, StreamKey, int, int, int], pa.Table | None]


def book_top_volumes(
    engine: QueryEngine, stream: StreamKey, start_ns: int, end_ns: int, levels: int
) -> pa.Table | None:
    """Top-`levels` depth volumes: the book in force at start_ns, then after every depth tick of the range.

    The book at the range start is the latest valid snapshot plus the deltas after it (`book_at`);
    its volumes open the series (stamped start_ns − 1), so the first bar opens at the OBI in force.
    None when the contract has no depth up to end_ns.
    """
    start_book = book_at(engine, stream.contract_id, start_ns - 1).book
    deltas = engine.read_stream(stream, start_ns, end_ns)
    if deltas.num_rows == 0 and len(start_book) == 0:
        return None
    volumes = top_volumes(deltas, levels, start_book=start_book)
    if len(start_book):
        bid, ask = start_book.top_volumes(levels)
        opening = pa.table({"ts": [start_ns - 1], "bid_volume": [bid], "ask_volume": [ask]}, schema=VOLUMES_SCHEMA)
        volumes = pa.concat_tables([opening, volumes])
    return volumes


@dataclass(slots=True)
class _Inputs:
    """What a computation read: the trades (from the context start) and the OBI volumes."""

    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    price: np.ndarray = field(default_factory=lambda: np.zeros(0))
    size: np.ndarray = field(default_factory=lambda: np.zeros(0))
    volumes: pa.Table | None = None


class OrderFlow:
    """Order-flow bars and summaries of one contract, read from a QueryEngine (blocking calls)."""

    def __init__(
        self,
        engine: QueryEngine,
        contract: Contract,
        *,
        sessions: MarketSessions | None = None,
        depth_volumes: DepthVolumes | None = book_top_volumes,
        quote_lookback_ns: int = 300 * NS_PER_SECOND,
        max_quote_age_ns: int | None = None,
        quote_inclusive: bool = False,
        use_rollups: bool = True,
        use_cache: bool = True,
    ) -> None:
        self.engine = engine
        self.contract = contract
        self.sessions = sessions or MarketSessions.for_contract(contract)
        self.depth_volumes = depth_volumes
        self.quote_lookback_ns = quote_lookback_ns
        self.max_quote_age_ns = max_quote_age_ns
        self.quote_inclusive = quote_inclusive
        self.use_rollups = use_rollups
        self.use_cache = use_cache

    # ---- windows ---------------------------------------------------------------------------------------------
    def session_window(self, session_type: str, now_ns: int, date: dt.date | str | None = None) -> tuple[int, int]:
        """[start, end) of the session on `date`, or of the current one (ending now while in progress)."""
        self.sessions.require_session_type(session_type, "session")
        if date is not None:
            session = self.sessions.on(date, session_type)
            return session.start_ns, session.end_ns
        session = self.sessions.current(now_ns, session_type)
        end = min(session.end_ns, now_ns)
        return session.start_ns, end if end > session.start_ns else session.end_ns

    def grid(self, request: BarsRequest) -> BarGrid:
        """The bars of a request: UTC-aligned, or one per session for `1d`."""
        if request.resolution == SESSION_RESOLUTION:
            self.sessions.require_session_type(request.session, "session")
            found = self.sessions.between(request.start_ns, request.end_ns, request.session)
            return BarGrid.of_sessions(found, request.start_ns, request.end_ns)
        return BarGrid.utc(request.start_ns, request.end_ns, request.resolution)

    # ---- bars ------------------------------------------------------------------------------------------------
    def bars(self, request: BarsRequest) -> BarsResult:
        """The requested kinds of bars, one row per bar of the grid (columns in OHLC, CVD, OBI order).

        Results are kept in the engine's query cache, never stale: any change to the contract's trades,
        quotes or depth at or before the range end (live ticks after it do not count) invalidates them.
        """
        self._check(request)
        cache = self.engine.cache if self.use_cache else None
        streams = [StreamKey(request.contract_id, t) for t in (request.trades, TickType.BID_ASK, TickType.DEPTH)]
        key = (
            "order_flow",
            request,
            self.use_rollups,
            self.quote_lookback_ns,
            self.max_quote_age_ns,
            self.quote_inclusive,
            self.depth_volumes is None,
            self.engine.hot.token(streams),
        )
        if cache is not None:
            version = cache.tracker.version
            cached: BarsResult | None = cache.get(key, streams, 0, request.end_ns)
            if cached is not None:
                return cached
        grid = self.grid(request)
        rolled = self._from_rollups(request, grid) if self.use_rollups else None
        result = rolled if rolled is not None else self._compute(request, grid)
        if cache is not None:
            cache.put(key, version, result)
        return result

    def _from_rollups(self, request: BarsRequest, grid: BarGrid) -> BarsResult | None:
        """The bars from 1-second rollups (`ib_stream.store.rollups`), equal to the tick path; None when
        they do not apply (non-default classification settings, bounds off whole seconds, no valid stored
        rollup in the range, a side that depends on earlier ticks). OBI from depth comes from the depth rollups
        where they serve the range, else from the book replay."""
        if (
            not request.use_recorded_side
            or self.max_quote_age_ns is not None
            or self.quote_inclusive
            or self.quote_lookback_ns % NS_PER_SECOND
            or self.quote_lookback_ns > self.engine.layout.partition_ns
            or len(grid) == 0
            or request.start_ns % NS_PER_SECOND
            or request.end_ns % NS_PER_SECOND
            or (grid.starts % NS_PER_SECOND).any()
            or (grid.ends % NS_PER_SECOND).any()
        ):
            return None
        context = self._context_start(request)
        resets = np.asarray(self._resets(request, context), dtype=np.int64)
        if context % NS_PER_SECOND or (resets % NS_PER_SECOND).any():
            return None
        kinds = list(request.kinds)
        columns: dict[str, Any] = {"timestamp": pa.array(grid.labels, pa.int64()).cast(TS_TYPE)}
        obi_source = None
        if "obi" in kinds:
            obi_source = "quotes"
            if request.obi_source in ("auto", "depth") and self.depth_volumes is not None:
                depth = self._depth_obi(request, grid)
                if depth is not None:
                    obi_source = "depth"
                    columns.update(depth)
                    kinds.remove("obi")
                elif request.obi_source == "depth":
                    return None  # no depth: the tick path says so
        methods: dict[str, int] = {}
        if kinds:  # what is left after OBI from depth
            obi_from = request.start_ns - self.quote_lookback_ns
            rows = load_rows(
                self.engine,
                StreamKey(request.contract_id, request.trades),
                context,
                obi_from if "obi" in kinds else context,
                request.end_ns,
                self.quote_lookback_ns,
            )
            if rows is None:
                return None
            span = (request.start_ns, request.end_ns)
            rolled, methods = rollup_bars(grid, rows, kinds, resets, obi_from, context, span)
            columns.update(rolled)
        order = ["timestamp", *OHLC_COLUMNS, *CVD_COLUMNS, *OBI_COLUMNS]
        table = pa.table({name: columns[name] for name in order if name in columns})
        return BarsResult(table, obi_source, methods)

    def _depth_obi(self, request: BarsRequest, grid: BarGrid) -> dict[str, np.ndarray] | None:
        """OBI bars from depth — from the depth rollups when they serve the range, else from the book replay
        of `depth_volumes`; None when the contract has no depth up to the range end."""
        if self.depth_volumes is book_top_volumes:
            found = depth_obi_rows(self.engine, request.contract_id, request.start_ns, request.end_ns, request.levels)
            if found is not None:
                rows, in_force = found
                if not np.isnan(in_force):  # the book in force at the start opens the first bar, as in the replay
                    rows = _with_opening(rows, request.start_ns - NS_PER_SECOND, in_force)
                return obi_bars_from_rows(grid, rows)
        stream = StreamKey(request.contract_id, TickType.DEPTH)
        assert self.depth_volumes is not None
        volumes = self.depth_volumes(self.engine, stream, request.start_ns, request.end_ns, request.levels)
        if volumes is None or not volumes.num_rows:
            return None
        return obi_bars(grid, volumes)

    def trades(self, request: BarsRequest) -> pa.Table:
        """The trades of [start, end) with the side each was given and the method that decided it."""
        self._check(request)
        context = self._context_start(request)
        table = self._read_trades(request, context)
        ts = ts_ns(table)
        sides = self._classify(request, table, ts, floats(table, "price"), context)
        keep = np.flatnonzero((ts >= request.start_ns) & (ts < request.end_ns))
        return pa.table(
            {
                "timestamp": table.column("ts").take(keep),
                "price": table.column("price").take(keep),
                "size": table.column("size").take(keep),
                "recorded_side": table.column("side").take(keep),
                "side": pa.array(sides.side[keep], pa.int8()),
                "method": pa.array(sides.method_names()[keep], pa.string()),
            }
        )

    def summary(self, request: BarsRequest, profile_levels: bool = False) -> dict[str, Any]:
        """Aggregates of [start, end): price OHLC, volume, VWAP, buy/sell, CVD change, OBI min/max/mean, profile."""
        self._check(request)
        whole = BarGrid(np.array([request.start_ns]), np.array([request.start_ns]), np.array([request.end_ns]), "range")
        result, inputs = self._compute_with_inputs(request, whole)
        row = {
            name: _scalar(column[0])
            for name, column in zip(result.table.column_names, result.table.columns, strict=True)
        }
        out: dict[str, Any] = {
            "contract_id": request.contract_id,
            "start_time": iso_ns(request.start_ns),
            "end_time": iso_ns(request.end_ns),
            "session": request.session,
            "anchor": request.anchor,
            "trades": request.trades.value,
            "side_methods": result.side_methods,
        }
        if "ohlc" in request.kinds:
            out["price"] = {k: row[k] for k in ("open", "high", "low", "close")}
            for name in ("trade_count", "volume", "vwap", "buy_volume", "sell_volume", "unknown_volume"):
                out[name] = row[name]
            in_range = (inputs.ts >= request.start_ns) & (inputs.ts < request.end_ns)
            profile = volume_profile(inputs.price[in_range], inputs.size[in_range], tick_size=self.contract.min_tick)
            out["profile"] = profile.to_dict(profile_levels) if profile is not None else None
        if "cvd" in request.kinds:
            out["cvd"] = {
                "change": row["delta"],
                "open": row["cvd_open"],
                "high": row["cvd_high"],
                "low": row["cvd_low"],
                "close": row["cvd_close"],
            }
        if inputs.volumes is not None:
            out["obi"] = {
                "source": result.obi_source,
                "levels": request.levels if result.obi_source == "depth" else 1,
                "min": row["obi_low"],
                "max": row["obi_high"],
                "mean": _scalar(time_weighted_obi(inputs.volumes, request.start_ns, request.end_ns)),
                "open": row["obi_open"],
                "close": row["obi_close"],
                "count": row["obi_count"],
            }
        return out

    # ---- internals -------------------------------------------------------------------------------------------
    def _check(self, request: BarsRequest) -> None:
        if request.contract_id != self.contract.con_id:
            raise ValidationError(
                "contract_id", request.contract_id, f"does not match this OrderFlow's contract {self.contract.con_id}"
            )
        self.sessions.require_session_type(request.session, "session")

    def _compute(self, request: BarsRequest, grid: BarGrid) -> BarsResult:
        return self._compute_with_inputs(request, grid)[0]

    def _compute_with_inputs(self, request: BarsRequest, grid: BarGrid) -> tuple[BarsResult, _Inputs]:
        columns: dict[str, Any] = {"timestamp": pa.array(grid.labels, pa.int64()).cast(TS_TYPE)}
        inputs = _Inputs()
        side_methods: dict[str, int] = {}
        obi_source = None
        if "ohlc" in request.kinds or "cvd" in request.kinds:
            context = self._context_start(request)
            trades = self._read_trades(request, context)
            inputs.ts, inputs.price, inputs.size = ts_ns(trades), floats(trades, "price"), floats(trades, "size")
            sides = self._classify(request, trades, inputs.ts, inputs.price, context)
            resets = self._resets(request, context)
            in_range = (inputs.ts >= request.start_ns) & (inputs.ts < request.end_ns)
            side_methods = TradeSides(sides.side[in_range], sides.method[in_range]).counts()
            if "ohlc" in request.kinds:
                columns.update(trade_bars(grid, inputs.ts, inputs.price, inputs.size, sides.side, resets))
            if "cvd" in request.kinds:
                if "ohlc" not in request.kinds:
                    lo, hi = grid.locate(inputs.ts)
                    columns["empty"] = hi == lo
                columns.update(cvd_bars(grid, inputs.ts, inputs.size, sides.side, resets))
        if "obi" in request.kinds:
            obi_source, inputs.volumes = self._obi_volumes(request)
            columns.update(obi_bars(grid, inputs.volumes))
        order = ["timestamp", *OHLC_COLUMNS, *CVD_COLUMNS, *OBI_COLUMNS]
        table = pa.table({name: columns[name] for name in order if name in columns})
        return BarsResult(table, obi_source, side_methods), inputs

    def _context_start(self, request: BarsRequest) -> int:
        """Where trades are read from: the start of the session in progress (or last begun) at the range start."""
        try:
            session = self.sessions.current(request.start_ns, request.session)
        except IbStreamError:  # before the calendar's first session
            return request.start_ns
        return max(min(session.start_ns, request.start_ns), request.start_ns - MAX_CONTEXT_NS)

    def _resets(self, request: BarsRequest, context: int) -> list[int]:
        if request.anchor == "range":
            return [request.start_ns]
        found: list[Session] = self.sessions.between(context, request.end_ns, request.session)
        return [s.start_ns for s in found]

    def _read_trades(self, request: BarsRequest, start_ns: int) -> pa.Table:
        stream = StreamKey(request.contract_id, request.trades)
        return self.engine.read_stream(stream, start_ns, request.end_ns, ["ts", "price", "size", "side"])

    def _classify(
        self, request: BarsRequest, trades: pa.Table, ts: np.ndarray, price: np.ndarray, context: int
    ) -> TradeSides:
        recorded = recorded_sides(trades) if request.use_recorded_side else None
        quotes = None
        needs_quotes = recorded is None or bool((recorded == 0).any())
        if needs_quotes and len(ts):
            table = self.engine.read_stream(
                StreamKey(request.contract_id, TickType.BID_ASK),
                context - self.quote_lookback_ns,
                request.end_ns,
                ["ts", "bid_price", "ask_price"],
            )
            if table.num_rows:
                quotes = (ts_ns(table), floats(table, "bid_price"), floats(table, "ask_price"))
        return classify(
            ts,
            price,
            recorded,
            quotes,
            use_recorded=request.use_recorded_side,
            inclusive=self.quote_inclusive,
            max_quote_age_ns=self.max_quote_age_ns,
        )

    def _obi_volumes(self, request: BarsRequest) -> tuple[str, pa.Table]:
        """(source, volumes): top-N depth when asked (or, for auto, when depth is recorded), else top of book."""
        if request.obi_source in ("auto", "depth") and self.depth_volumes is not None:
            stream = StreamKey(request.contract_id, TickType.DEPTH)
            volumes = self.depth_volumes(self.engine, stream, request.start_ns, request.end_ns, request.levels)
            if volumes is not None and volumes.num_rows:
                return "depth", volumes
        if request.obi_source == "depth":
            raise QueryError(
                f"obi_source depth: no depth is recorded for contract {request.contract_id} before "
                f"{iso_ns(request.end_ns)} (use obi_source=quotes or auto)",
                details={"field": "obi_source", "value": "depth", "contract_id": request.contract_id},
            )
        quotes = self.engine.read_stream(
            StreamKey(request.contract_id, TickType.BID_ASK),
            request.start_ns - self.quote_lookback_ns,
            request.end_ns,
            ["ts", "bid_size", "ask_size"],
        )
        return "quotes", top_of_book_volumes(quotes)


def _with_opening(rows: dict[str, np.ndarray], second: int, value: float) -> dict[str, np.ndarray]:
    """Depth OBI rows with a leading row at `second` holding one event of `value` (the OBI in force)."""
    lead = {"second": second, "obi_first": value, "obi_high": value, "obi_low": value, "obi_last": value}
    lead |= {"obi_end": value, "obi_count": 1, "events": 1}
    return {name: np.concatenate(([lead[name]], values)).astype(values.dtype) for name, values in rows.items()}


def _scalar(value: Any) -> Any:
    """A JSON-ready Python scalar (NaN → None)."""
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value
