"""Live bars of one contract from the StreamingApp fan-out, joined to the stored past with no gap and
no duplicate: what the live bar stream, the alert engine and the JSON sink consume.

`LiveBarFeed.open()` subscribes first, then (in the store's executor) seeds the builder with the state
in force at the start of the current bar (vectorised, as the batch service computes it), replays the
stored ticks of the current bar through the builder, and computes `history_bars` closed bars before
it with the batch service. Live items already covered by that read (seq ≤ the seq seen per stream)
are skipped, so every tick counts exactly once.

The builder's watermark follows the store's clock: it never passes the clock's now, and a tick further
ahead than the streaming app's `future_skew` (one stored before event times were checked) is ignored —
at open too, so a restart cannot bring a bad watermark back.

`builder_for(contract, resolution, ...)` wires a `LiveBarBuilder` to a configured contract: its
calendar's session starts (`SessionKey`) reset CVD and the session VWAP, and its depth feeds the OBI.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ib_stream.analytics.book import OrderBook
from ib_stream.analytics.grid import BAR_SIZES
from ib_stream.analytics.live_bars import QUOTE_LOOKBACK_NS, SEED_TRADES, LiveBarBuilder
from ib_stream.analytics.request import BarsRequest
from ib_stream.calendars import MarketSessions
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import NotFoundError, ValidationError
from ib_stream.live.reader import read_history
from ib_stream.orderflow.inputs import book_top_volumes, depth_obi
from ib_stream.orderflow.service import OrderFlow
from ib_stream.store.query import QueryEngine
from ib_stream.store.snapshots import book_at
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
    lateness_ns: int = 0,
) -> LiveBarBuilder:
    """A builder for a configured contract, with the parameters of `BarsRequest`: resets at its calendar's
    `session_type` starts; OBI from the top `levels` of the L2 book (`obi_source` depth), top-of-book
    sizes (quotes), or auto: the book when the contract records depth, top of book until its first
    depth tick. A bar is final once ticks `lateness_ns` past its end have arrived. Raises ValidationError
    naming the field."""
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
        lateness_ns=lateness_ns,
    )


def seed_builder(builder: LiveBarBuilder, engine: QueryEngine, contract_id: int, until_ns: int) -> None:
    """Read what a builder starts from at `until_ns` (see `LiveBarBuilder.seed`) and seed it: the trades since the
    session start, the quotes before them, and the depth book in force through the same `book_at` as the batch
    path (the latest snapshot plus at most an hour of deltas); on a re-seed also the last depth OBI with a value
    since the first seed (depth rollups where they serve, else the replay)."""
    context = builder.context_start(until_ns)
    trades = engine.read_stream(StreamKey(contract_id, builder.trade_type), context, until_ns, SEED_TRADES)
    quotes = engine.read_stream(StreamKey(contract_id, TickType.BID_ASK), context - QUOTE_LOOKBACK_NS, until_ns)
    book = book_at(engine, contract_id, until_ns - 1).book if builder.book is not None else None
    in_force = None
    first = builder.first_seed
    if book is not None and first is not None and first < until_ns:
        edges = np.array([first, until_ns], dtype=np.int64)
        rows = depth_obi(engine, contract_id, first, until_ns, builder.depth_levels, edges, book_top_volumes, True)
        valid = np.flatnonzero(rows["obi_count"] > 0) if rows is not None else np.zeros(0, dtype=np.intp)
        in_force = float(rows["obi_last"][valid[-1]]) if rows is not None and len(valid) else math.nan
    builder.seed(trades, quotes, book, until_ns, in_force)


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
    @property
    def lateness_seconds(self) -> float: ...


class LiveBarFeed:
    """One contract's live bars: `open()` returns the first rows, `await update(items)` the upserts of live items."""

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
            lateness_ns=int(settings.lateness_seconds * NS_PER_SECOND),
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
        lateness_ns: int = 0,
    ) -> LiveBarFeed:
        """A feed with its builder (see `builder_for`); a bar is final once ticks `lateness_ns` past its end
        arrived; the builder keeps the open bars and few rows."""
        builder = builder_for(
            contract,
            resolution,
            window=max(1000, history_bars + 2),
            session_type=session_type,
            trade_type=trade_type,
            obi_source=obi_source,
            levels=levels,
            lateness_ns=lateness_ns,
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

    async def update(self, items: Sequence[LiveItem]) -> list[dict[str, Any]]:
        """The upserts caused by live items (those the store reads already held are skipped). A tick older than
        the open bars makes the feed re-read the store: the final bars it changed come back as revisions
        (`revision: true`), then the open bars."""
        through = self.through
        fresh = [(s, r) for s, r in items if r["seq"] > through.get(s, 0)]
        rows = self._apply(fresh) if fresh else []
        if self.builder.late_since is None:
            return rows
        store = self.app.store
        return rows + await asyncio.get_running_loop().run_in_executor(store.executor, self._revise, store)

    def close(self) -> None:
        if self.sub is not None:
            self.app.unsubscribe(self.sub)

    def _prime(self, store: TickStore, now_ns: int) -> list[dict[str, Any]]:
        bar_ns = self.builder.bar_ns
        self.anchor_ns = anchor = now_ns - now_ns % bar_ns
        history = self._history(store, anchor - self.history_bars * bar_ns, anchor) if self.history_bars else []
        self._seed_and_replay(store, anchor)
        return history + self.builder.snapshot()

    def _seed_and_replay(self, store: TickStore, at_ns: int) -> list[dict[str, Any]]:
        """Seed the builder at `at_ns` and replay the stored ticks from there (read after subscribing); live items
        the read held are skipped later."""
        seed_builder(self.builder, store.engine, self.contract.con_id, at_ns)
        stored = read_history(store, self.streams, at_ns)
        for stream, seq in stored.through.items():
            self.through[stream] = max(self.through.get(stream, 0), seq)
        return self._apply(stored.items)

    def _apply(self, items: Sequence[LiveItem]) -> list[dict[str, Any]]:
        """The builder's upserts of `items`, its watermark held at the store clock's now (see the module doc)."""
        skew = self.app.future_skew
        now = self.app.store.clock.now_ns()
        return self.builder.update(items, now_ns=now, max_ahead_ns=skew.max_ns if skew is not None else None)

    def _revise(self, store: TickStore) -> list[dict[str, Any]]:
        """After late ticks: the final bars from the earliest late one to the open bars, recomputed by the batch
        service as revisions, then the builder re-seeded at its open bars from the store."""
        builder = self.builder
        late, since = builder.late_since, builder.open_since
        assert late is not None and since is not None
        builder.revisions += 1
        first = max(late - late % builder.bar_ns, self.anchor_ns - self.history_bars * builder.bar_ns)
        revised = []
        if first < since:
            start = min(first, self.anchor_ns)
            revised = [
                {**row, "revision": True}
                for row in self._history(store, start - start % builder.bar_ns, since)
                if row["ts"] >= first
            ]
        return revised + self._seed_and_replay(store, since)

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
            {"ts": ts, "final": True, "revision": False, "session": None, **_nan_for_none(row)}
            for ts, row in zip(labels, rows, strict=True)
        ]


def _nan_for_none(row: dict[str, Any]) -> dict[str, Any]:
    # Arrow gives null for NaN-free columns only; keep the live rows' convention (NaN = no value).
    return {k: math.nan if v is None else v for k, v in row.items()}
