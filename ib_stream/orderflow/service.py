"""Order-flow service: reads trades, quotes and depth of a range from the store and runs the bar engine.

`OrderFlow(engine, contract).bars(BarsRequest(...))` returns an Arrow table with one row per bar;
`.summary(request)` the aggregates of the whole range; `.trades(request)` the classified trades. All
are blocking (the service runs them off the event loop). Every bar comes from `engine.bars_from_rows`
over rows built by `inputs` — from stored rollups or from the ticks, the same rows either way:

* trades (`last` or `all_last`) from the start of the session in progress at the range start, so
  the CVD and the session VWAP restart at the true session start and the tick rule has context;
* `bid_ask` quotes a little further back (`quote_lookback_ns`), for the quote rule when a trade
  has no recorded side, and for the OBI in force at the range start;
* depth, when OBI is asked from depth: the book at the range start from the latest snapshot, then
  the OBI of every book update of the range.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.analytics.engine import BAR_COLUMNS, bars_from_rows
from ib_stream.analytics.grid import SESSION_RESOLUTION, BarGrid
from ib_stream.analytics.obi import time_weighted_obi, top_of_book_volumes
from ib_stream.analytics.profile import volume_profile
from ib_stream.analytics.request import BarsRequest, BarsResult
from ib_stream.analytics.rows import Rows
from ib_stream.analytics.side import TradeSides, floats, ts_ns
from ib_stream.calendars import MarketSessions, Session
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import IbStreamError, QueryError, ValidationError
from ib_stream.orderflow.inputs import (
    Classification,
    DepthVolumes,
    book_top_volumes,
    classified,
    depth_obi,
    read_trades,
    trade_rows,
)
from ib_stream.store.query import QueryEngine
from ib_stream.times import iso_ns

# Trades before the range are read from the session start, but never more than this far back.
MAX_CONTEXT_NS: Final = 4 * 86_400 * NS_PER_SECOND
TS_TYPE: Final = pa.timestamp("ns", tz="UTC")


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
        sides: bool = True,
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
        self.sides = sides  # False: only columns that no trade side changes are read (OHLC, volume, VWAP, count)

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
        return self.grid_of(request.start_ns, request.end_ns, request.resolution, request.session)

    def grid_of(self, start_ns: int, end_ns: int, resolution: str, session: str = "regular") -> BarGrid:
        """The bars of `resolution` over [start_ns, end_ns): UTC-aligned, or one per `session` for `1d`."""
        if resolution == SESSION_RESOLUTION:
            self.sessions.require_session_type(session, "session")
            return BarGrid.of_sessions(self.sessions.between(start_ns, end_ns, session), start_ns, end_ns)
        return BarGrid.utc(start_ns, end_ns, resolution)

    # ---- bars ------------------------------------------------------------------------------------------------
    def bars(self, request: BarsRequest) -> BarsResult:
        """The requested kinds of bars, one row per bar of the grid (columns in OHLC, CVD, OBI order).

        Results are kept in the engine's query cache, never stale: any change to the contract's trades,
        quotes or depth at or before the range end (live ticks after it do not count) invalidates them.
        """
        self._check(request)
        cache = self.engine.cache if self.use_cache else None
        streams = [StreamKey(request.contract_id, t) for t in (request.trades, TickType.BID_ASK, TickType.DEPTH)]
        token = self.engine.hot.token(streams)
        key = ("order_flow", request, self.use_rollups, self.classification, self.depth_volumes is None, token)
        if cache is not None:
            version = cache.tracker.version
            cached: BarsResult | None = cache.get(key, streams, 0, request.end_ns)
            if cached is not None:
                return cached
        result = self._compute(request, self.grid(request))[0]
        if cache is not None:
            cache.put(key, version, result)
        return result

    @property
    def classification(self) -> Classification:
        return Classification(self.quote_lookback_ns, self.max_quote_age_ns, self.quote_inclusive, sides=self.sides)

    def _compute(self, request: BarsRequest, grid: BarGrid, keep_ticks: bool = False) -> tuple[BarsResult, Rows]:
        """The bars of `grid` and the trade rows they came from (on the tick path with `keep_ticks`: from ticks)."""
        how = self._how(request)
        context = self._context_start(request)
        resets = np.asarray(self._resets(request, context), dtype=np.int64)
        edges = np.unique(np.concatenate((grid.edges(), resets)))
        kinds = list(request.kinds)
        obi_source, depth = None, None
        if "obi" in kinds:
            obi_source, depth = self._obi_rows(request, edges)
        trades_needed = "ohlc" in kinds or "cvd" in kinds
        quote_obi_from = request.start_ns - self.quote_lookback_ns if obi_source == "quotes" else None
        rows: Rows | None = None
        methods: dict[str, int] = {}
        columns: dict[str, Any] = {"timestamp": pa.array(grid.labels, pa.int64()).cast(TS_TYPE)}
        if trades_needed or quote_obi_from is not None:
            stream = StreamKey(request.contract_id, request.trades)
            use_rollups = self.use_rollups and not keep_ticks
            got = trade_rows(self.engine, stream, context, quote_obi_from, request.end_ns, edges, how, use_rollups)
            rows = got.rows
            trade_kinds = [k for k in kinds if k != "obi" or depth is None]
            span = (request.start_ns, request.end_ns)
            bars, methods = bars_from_rows(
                grid, rows, trade_kinds, resets, quote_obi_from, context, span, obi_source_rows=got.obi
            )
            columns.update(bars)
        if depth is not None:
            columns.update(bars_from_rows(grid, depth, ("obi",), obi_source_rows=depth)[0])
        if not trades_needed:
            methods = {}
        table = pa.table({name: columns[name] for name in ("timestamp", *BAR_COLUMNS) if name in columns})
        return BarsResult(table, obi_source, methods), rows if rows is not None else {}

    def _obi_rows(self, request: BarsRequest, edges: np.ndarray) -> tuple[str, Rows | None]:
        """(source, depth rows): top-N depth when asked (or, for auto, when depth is recorded), else top of book."""
        if request.obi_source in ("auto", "depth") and self.depth_volumes is not None:
            depth = depth_obi(
                self.engine,
                request.contract_id,
                request.start_ns,
                request.end_ns,
                request.levels,
                edges,
                self.depth_volumes,
                self.use_rollups,
            )
            if depth is not None:
                return "depth", depth
        if request.obi_source == "depth":
            raise QueryError(
                f"obi_source depth: no depth is recorded for contract {request.contract_id} before "
                f"{iso_ns(request.end_ns)} (use obi_source=quotes or auto)",
                details={"field": "obi_source", "value": "depth", "contract_id": request.contract_id},
            )
        return "quotes", None

    def trades(self, request: BarsRequest) -> pa.Table:
        """The trades of [start, end) with the side each was given and the method that decided it."""
        table, sides = self.trade_sides(request)
        return pa.table(
            {
                "timestamp": table.column("ts"),
                "price": table.column("price"),
                "size": table.column("size"),
                "recorded_side": table.column("side"),
                "side": pa.array(sides.side, pa.int8()),
                "method": pa.array(sides.method_names(), pa.string()),
            }
        )

    def trade_sides(self, request: BarsRequest) -> tuple[pa.Table, TradeSides]:
        """The trades of [start, end) as read (ts, price, size, side) and the sides the classifier gave them — those
        of the bars' buy / sell volume (classified from the session start, for the tick rule's context)."""
        self._check(request)
        context = self._context_start(request)
        stream = StreamKey(request.contract_id, request.trades)
        how = self._how(request)
        table, quotes = read_trades(self.engine, stream, context, None, request.end_ns, how)
        sides = classified(table, quotes, context, how).sides
        assert sides is not None
        lo, hi = np.searchsorted(ts_ns(table), [request.start_ns, request.end_ns], side="left").tolist()
        return table.slice(lo, hi - lo), TradeSides(sides.side[lo:hi], sides.method[lo:hi])

    def summary(self, request: BarsRequest, profile_levels: bool = False) -> dict[str, Any]:
        """Aggregates of [start, end): price OHLC, volume, VWAP, buy/sell, CVD change, OBI min/max/mean, profile."""
        self._check(request)
        whole = BarGrid(np.array([request.start_ns]), np.array([request.start_ns]), np.array([request.end_ns]), "range")
        result = self._compute(request, whole, keep_ticks=True)[0]
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
            trades = self.engine.read_stream(
                StreamKey(request.contract_id, request.trades),
                request.start_ns,
                request.end_ns,
                ["ts", "price", "size"],
            )
            profile = volume_profile(floats(trades, "price"), floats(trades, "size"), tick_size=self.contract.min_tick)
            out["profile"] = profile.to_dict(profile_levels) if profile is not None else None
        if "cvd" in request.kinds:
            out["cvd"] = {
                "change": row["delta"],
                "open": row["cvd_open"],
                "high": row["cvd_high"],
                "low": row["cvd_low"],
                "close": row["cvd_close"],
            }
        if "obi" in request.kinds and result.obi_source is not None:
            out["obi"] = {
                "source": result.obi_source,
                "levels": request.levels if result.obi_source == "depth" else 1,
                "min": row["obi_low"],
                "max": row["obi_high"],
                "mean": _scalar(self._mean_obi(request, result.obi_source)),
                "open": row["obi_open"],
                "close": row["obi_close"],
                "count": row["obi_count"],
            }
        return out

    # ---- internals -------------------------------------------------------------------------------------------
    def _how(self, request: BarsRequest) -> Classification:
        """How the request's trades are classified (the service's options, the request's use of recorded sides)."""
        return dataclasses.replace(self.classification, use_recorded_side=request.use_recorded_side)

    def _mean_obi(self, request: BarsRequest, source: str) -> float:
        """The time-weighted mean OBI of [start, end) from the same events as the bars."""
        if source == "depth":
            assert self.depth_volumes is not None
            stream = StreamKey(request.contract_id, TickType.DEPTH)
            volumes = self.depth_volumes(self.engine, stream, request.start_ns, request.end_ns, request.levels)
        else:
            quotes = self.engine.read_stream(
                StreamKey(request.contract_id, TickType.BID_ASK),
                request.start_ns - self.quote_lookback_ns,
                request.end_ns,
                ["ts", "bid_size", "ask_size"],
            )
            volumes = top_of_book_volumes(quotes)
        return time_weighted_obi(volumes, request.start_ns, request.end_ns) if volumes is not None else float("nan")

    def _check(self, request: BarsRequest) -> None:
        if request.contract_id != self.contract.con_id:
            raise ValidationError(
                "contract_id", request.contract_id, f"does not match this OrderFlow's contract {self.contract.con_id}"
            )
        self.sessions.require_session_type(request.session, "session")

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
