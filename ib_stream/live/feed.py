"""Live bars of one contract from the StreamingApp fan-out, joined to the stored past with no gap and
no duplicate: what the live bar stream, the alert engine and the JSON sink consume.

`LiveBarFeed.open()` subscribes first, then (in the store's executor) seeds the builder with the state
in force at the start of the current bar (vectorised, as the batch service computes it), replays the
stored ticks of the current bar through the builder, and computes `history_bars` closed bars before
it with the batch service. Live items already covered by that read (seq ≤ the seq seen per stream)
are skipped, so every tick counts exactly once.

`builder_for(contract, resolution, ...)` wires a `LiveBarBuilder` to a configured contract: its
calendar's session starts (`SessionKey`) reset CVD and the session VWAP, and its depth feeds the OBI.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

from ib_stream.analytics.bars import BAR_SIZES
from ib_stream.analytics.book import OrderBook
from ib_stream.analytics.live_bars import QUOTE_LOOKBACK_NS, SEED_TRADES, LiveBarBuilder
from ib_stream.analytics.request import BarsRequest
from ib_stream.calendars import MarketSessions
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import NotFoundError, ValidationError
from ib_stream.live.reader import read_history
from ib_stream.orderflow.service import OrderFlow
from ib_stream.store.layout import HOUR_NS
from ib_stream.store.query import QueryEngine
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import LiveItem, StreamingApp, Subscription

_NEXT_SESSION_SEARCH_NS = 30 * 86_400 * NS_PER_SECOND


class SessionKey:
    """The reset instant in force at a time: the start of the latest session starting at or before it."""

    def __init__(self, sessions: MarketSessions, session_type: str = "regular") -> None:
        self.sessions = sessions
        self.session_type = sessions.require_session_type(session_type, "session")
        self._lo = self._hi = self._key = 0

    def __call__(self, ts: int) -> int:
        if self._lo <= ts < self._hi:
            return self._key
        try:
            session = self.sessions.current(ts, self.session_type)
        except NotFoundError:  # before the calendar's first session: no reset yet
            return 0
        later = self.sessions.between(session.end_ns, session.end_ns + _NEXT_SESSION_SEARCH_NS, self.session_type)
        self._key, self._lo = session.start_ns, session.start_ns
        self._hi = next((s.start_ns for s in later if s.start_ns > session.start_ns), session.end_ns)
        return self._key


def builder_for(
    contract: Contract,
    resolution: str,
    *,
    window: int = 1000,
    session_type: str = "regular",
    trade_type: TickType = TickType.LAST,
    obi_source: str = "quotes",
    levels: int = 10,
    fill_gaps: bool = True,
) -> LiveBarBuilder:
    """A builder for a configured contract, with the parameters of `BarsRequest`: resets at its calendar's
    `session_type` starts; OBI from the top `levels` of the L2 book (`obi_source` depth), top-of-book
    sizes (quotes), or auto: the book when the contract records depth, top of book until its first
    depth tick. Raises ValidationError naming the field."""
    bar_ns = BAR_SIZES.get(resolution)
    if bar_ns is None or resolution == "1d":
        sizes = ", ".join(r for r in BAR_SIZES if r != "1d")
        raise ValidationError("resolution", resolution, f"is not a live bar size (use one of {sizes})")
    auto = obi_source == "auto" and TickType.DEPTH in contract.tick_types
    return LiveBarBuilder(
        bar_ns,
        window=window,
        session_of=SessionKey(MarketSessions.for_contract(contract), session_type),
        book=OrderBook() if obi_source == "depth" or auto else None,
        quotes_until_depth=auto,
        depth_levels=levels,
        trade_type=trade_type,
        fill_gaps=fill_gaps,
    )


def seed_builder(builder: LiveBarBuilder, engine: QueryEngine, contract_id: int, until_ns: int) -> None:
    """Read what a builder starts from at `until_ns` (see `LiveBarBuilder.seed`) and seed it."""
    context = builder.context_start(until_ns)
    trades = engine.read_stream(StreamKey(contract_id, builder.trade_type), context, until_ns, SEED_TRADES)
    quotes = engine.read_stream(StreamKey(contract_id, TickType.BID_ASK), context - QUOTE_LOOKBACK_NS, until_ns)
    depth = None
    if builder.book is not None:
        depth = engine.read_stream(StreamKey(contract_id, TickType.DEPTH), until_ns - until_ns % HOUR_NS, until_ns)
    builder.seed(trades, quotes, depth, until_ns)


class FeedSettings(Protocol):
    """The fields of a settings section that say how to build live bars."""

    @property
    def resolution(self) -> str: ...
    @property
    def session_type(self) -> str: ...
    @property
    def trade_type(self) -> str: ...
    @property
    def obi_source(self) -> str: ...
    @property
    def levels(self) -> int: ...


class LiveBarFeed:
    """One contract's live bars: `open()` returns the first rows, `apply(items)` the upserts of live items."""

    def __init__(
        self,
        app: StreamingApp,
        contract: Contract,
        builder: LiveBarBuilder,
        *,
        resolution: str,
        session_type: str = "regular",
        obi_source: str = "quotes",
        levels: int = 10,
        history_bars: int = 0,
        max_queue: int | None = None,
    ) -> None:
        self.app = app
        self.contract = contract
        self.builder = builder
        self.resolution = resolution
        self.session_type = session_type
        self.obi_source = obi_source
        self.levels = levels
        self.history_bars = history_bars
        self.max_queue = max_queue
        self.sub: Subscription | None = None
        self.through: dict[StreamKey, int] = {}
        self.anchor_ns = 0  # where the builder's own ticks start (the start of the bar in progress at open)

    @classmethod
    def from_settings(
        cls, app: StreamingApp, contract: Contract, settings: FeedSettings, history_bars: int = 0
    ) -> LiveBarFeed:
        """A feed built as a settings section says (`[alerts]` and `[json_sink]` share these fields)."""
        return cls.create(
            app,
            contract,
            settings.resolution,
            session_type=settings.session_type,
            trade_type=TickType(settings.trade_type),
            obi_source=settings.obi_source,
            levels=settings.levels,
            history_bars=history_bars,
        )

    @classmethod
    def create(
        cls,
        app: StreamingApp,
        contract: Contract,
        resolution: str,
        *,
        session_type: str = "regular",
        trade_type: TickType = TickType.LAST,
        obi_source: str = "quotes",
        levels: int = 10,
        history_bars: int = 0,
        max_queue: int | None = None,
    ) -> LiveBarFeed:
        """A feed with its builder (see `builder_for`); the builder keeps only the two mutable bars."""
        builder = builder_for(
            contract,
            resolution,
            window=2,
            session_type=session_type,
            trade_type=trade_type,
            obi_source=obi_source,
            levels=levels,
        )
        return cls(
            app,
            contract,
            builder,
            resolution=resolution,
            session_type=session_type,
            obi_source=obi_source,
            levels=levels,
            history_bars=history_bars,
            max_queue=max_queue,
        )

    @property
    def streams(self) -> list[StreamKey]:
        return [StreamKey(self.contract.con_id, t) for t in self.builder.tick_types]

    async def open(self) -> list[dict[str, Any]]:
        """Subscribe, then prime from the store; return the history bars and the bar in progress, oldest first."""
        self.sub = self.app.subscribe(self.contract.con_id, self.builder.tick_types, self.max_queue)
        store = self.app.store
        now = store.clock.now_ns()
        try:
            return await asyncio.get_running_loop().run_in_executor(store.executor, self._prime, store, now)
        except BaseException:
            self.close()
            raise

    def apply(self, items: Sequence[LiveItem]) -> list[dict[str, Any]]:
        """The upserts caused by live items (those the priming read already held are skipped)."""
        through = self.through
        fresh = [(s, r) for s, r in items if r["seq"] > through.get(s, 0)]
        return self.builder.update(fresh) if fresh else []

    def close(self) -> None:
        if self.sub is not None:
            self.app.unsubscribe(self.sub)

    def _prime(self, store: TickStore, now_ns: int) -> list[dict[str, Any]]:
        bar_ns = self.builder.bar_ns
        self.anchor_ns = anchor = now_ns - now_ns % bar_ns
        history = self._history(store, anchor - self.history_bars * bar_ns, anchor) if self.history_bars else []
        seed_builder(self.builder, store.engine, self.contract.con_id, anchor)
        stored = read_history(store, self.streams, anchor)  # the ticks of the bar in progress, after subscribing
        self.through.update(stored.through)
        self.builder.update(stored.items)
        return history + self.builder.snapshot()

    def _history(self, store: TickStore, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        """Closed bars of [start_ns, end_ns) from the batch service, as final rows."""
        request = BarsRequest(
            self.contract.con_id,
            start_ns,
            end_ns,
            self.resolution,
            session=self.session_type,
            levels=self.levels,
            trades=self.builder.trade_type,
            obi_source=self.obi_source,
        )
        table = OrderFlow(store.engine, self.contract).bars(request).table
        labels = table.column("timestamp").cast("int64").to_pylist()
        rows = table.drop_columns(["timestamp"]).to_pylist()
        return [
            {"ts": ts, "final": True, "session": None, **_nan_for_none(row)}
            for ts, row in zip(labels, rows, strict=True)
        ]


def _nan_for_none(row: dict[str, Any]) -> dict[str, Any]:
    # Arrow gives null for NaN-free columns only; keep the live rows' convention (NaN = no value).
    return {k: math.nan if v is None else v for k, v in row.items()}
