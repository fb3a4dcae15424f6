"""The service façade the routes talk to (`ServiceState`, reached through the `State` dependency): what the
lifespan owns, the queries and reads the routes need, run off the event loop, and the service's own parts
(metrics, the alert engine, the ingest idempotency keys) as typed attributes.

Routes never see the store's parts (its executor, engine, catalog, buffer, archiver, ledger): every read
goes through a method here, which runs the blocking work on the store's executor and, for queries, records
its latency in the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import pandas as pd

from ib_stream.alerts.engine import AlertEngine
from ib_stream.analytics.footprint import Footprint
from ib_stream.analytics.request import BarsRequest, BarsResult
from ib_stream.api import shutdown
from ib_stream.api.idempotency import IdempotencyCache
from ib_stream.api.metrics import ServiceMetrics
from ib_stream.api.reads import contract_streams, holdings, stored_streams
from ib_stream.api.session_reads import read_session
from ib_stream.api.storage_reads import storage_stats, stored_files
from ib_stream.budget import Budget, budget_bound, request_cancel_flag
from ib_stream.clock import Clock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import ContractNotFoundError
from ib_stream.live.reader import read_merged
from ib_stream.orderflow.dashboard import HeatmapResult, footprint_of
from ib_stream.orderflow.query import StorageQuery
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import Settings
from ib_stream.sources.ib_backfill import Backfiller, Fetch
from ib_stream.sources.ib_overlap import OverlapGate
from ib_stream.store.coverage import stream_coverage, stream_holding
from ib_stream.store.snapshots import BookAt
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import LiveItem, StreamingApp

P = ParamSpec("P")
T = TypeVar("T")


class ServiceState:
    """The running service as the routes see it; built by the lifespan, one per app."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        store: TickStore,
        streaming: StreamingApp,
        contracts: list[Contract],
        source_name: str,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.streaming = streaming
        self.contracts = contracts
        self.source_name = source_name
        self.source_note: str | None = None  # why the configured source records nothing (shown in /health)
        self.started_at = time.time()
        self.ready = False
        self.alerts: AlertEngine | None = None  # the alert engine, when alerts.enabled
        self.idempotency = IdempotencyCache()
        self.metrics = ServiceMetrics(self, store, streaming)
        # The public query API over this store, with the service's own contracts (never a contracts file
        # of the current directory).
        self.query = StorageQuery(store.engine, config=settings.storage, contracts=contracts, executor=store.executor)
        self._store = store

    # ---- running blocking work ------------------------------------------------------------------------------
    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work (files, Parquet, SQLite, encoding a large answer) on the store's executor, under a
        budget: it stops at api.query_timeout_seconds, or when the request's client has gone away."""
        call = functools.partial(self.budget().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._store.executor, call)

    def budget(self) -> Budget:
        """A fresh budget for one piece of a request's work (the deadline counts from now); it also ends when the
        client goes away and when the server starts shutting down."""
        stopping = functools.partial(shutdown.is_stopping, asyncio.get_running_loop())
        return Budget(self.settings.api.query_timeout_seconds, request_cancel_flag(), stopping)

    async def _timed(self, endpoint: str, work: Callable[[], Awaitable[T]]) -> T:
        """Await work under a fresh budget (`StorageQuery` calls carry it to their worker), timing it."""
        started = time.perf_counter()
        try:
            with budget_bound(self.budget()):
                return await work()
        finally:
            self.metrics.observe_query(endpoint, time.perf_counter() - started)

    # ---- range queries, bars, books --------------------------------------------------------------------------
    async def query_range(
        self,
        contract_id: int,
        tick_types: tuple[TickType, ...],
        start_ns: int,
        end_ns: int,
        resolution: str,
        endpoint: str = "historical",
        limit: int | None = None,
    ) -> pd.DataFrame:
        """The ticks (or bars) of [start_ns, end_ns), as `StorageQuery.query_range` returns them (the first
        `limit`)."""
        return await self._timed(
            endpoint, lambda: self.query.query_range(contract_id, tick_types, start_ns, end_ns, resolution, limit)
        )

    async def count_ticks(self, contract_id: int, tick_types: Sequence[TickType], start_ns: int, end_ns: int) -> int:
        """How many ticks of the streams lie in [start_ns, end_ns) (mostly from the catalog)."""
        engine = self._store.engine
        return await self.run(
            lambda: sum(engine.count(StreamKey(contract_id, t), start_ns, end_ns) for t in tick_types)
        )

    async def order_flow(self, contract: Contract) -> OrderFlow:
        """The order-flow service of a contract (the first use of a calendar builds it, ~0.2 s: off the loop)."""
        return await self.run(OrderFlow, self._store.engine, contract)

    async def bars(self, flow: OrderFlow, request: BarsRequest) -> BarsResult:
        """Order-flow bars of a request."""
        return await self._timed("bars", lambda: self.run(flow.bars, request))

    async def bars_summary(self, flow: OrderFlow, request: BarsRequest, profile_levels: bool) -> dict[str, Any]:
        """The order-flow summary of a request's range."""
        return await self._timed("bars_summary", lambda: self.run(flow.summary, request, profile_levels=profile_levels))

    async def footprint(
        self, flow: OrderFlow, request: BarsRequest, price_step: float | None, imbalance_ratio: float
    ) -> Footprint:
        """Footprint bars of a request (the dashboard's order-flow chart)."""
        return await self._timed(
            "footprint", lambda: self.run(footprint_of, flow, request, price_step, imbalance_ratio)
        )

    async def heatmap(
        self,
        contract_id: int,
        start_ns: int,
        end_ns: int,
        columns: int,
        rows: int,
        price_low: float | None,
        price_high: float | None,
        levels: int | None,
    ) -> HeatmapResult:
        """The liquidity heatmap of [start_ns, end_ns) (the dashboard's depth chart)."""
        return await self._timed(
            "heatmap",
            lambda: self.query.heatmap(
                contract_id,
                start_ns,
                end_ns,
                columns=columns,
                rows=rows,
                price_low=price_low,
                price_high=price_high,
                levels=levels,
            ),
        )

    async def book_at(self, contract_id: int, at_ns: int, levels: int | None) -> BookAt:
        """The L2 book of a contract at `at_ns`: the latest valid snapshot plus the depth updates since."""
        return await self._timed("depth", lambda: self.query.book_at(contract_id, at_ns, levels))

    async def session_reads(
        self,
        contract_id: int,
        tick_types: tuple[TickType, ...],
        start_ns: int,
        end_ns: int,
        include_ticks: bool,
        limit: int,
    ) -> dict[str, Any]:
        """Tick counts, OHLC summary and (optionally) the first ticks of a session's [start_ns, end_ns)."""
        return await self.run(
            read_session, self._store.engine, contract_id, tick_types, start_ns, end_ns, include_ticks, limit
        )

    # ---- history of several streams ---------------------------------------------------------------------------
    async def read_merged(self, streams: Sequence[StreamKey], start_ns: int, end_ns: int) -> list[LiveItem]:
        """Every stored tick of the streams in [start_ns, end_ns), merged by time."""
        return await self.run(read_merged, self._store.engine, streams, start_ns, end_ns)

    async def history_contract(self, contract_id: int) -> tuple[Contract | None, tuple[TickType, ...]]:
        """The configured contract and its tick types, or for a contract that is only stored (imported,
        no longer recorded) None and the stored types; CONTRACT_NOT_FOUND when neither."""
        contract = self.streaming.contracts.get(contract_id)
        if contract is not None:
            return contract, contract.tick_types
        stored = {s for s in await self.run(stored_streams, self._store) if s.contract_id == contract_id}
        if not stored:
            known = ", ".join(str(c) for c in sorted(self.streaming.contracts))
            raise ContractNotFoundError(
                f"contract_id {contract_id} is neither configured nor stored (configured: {known})",
                details={"field": "contract_id", "value": contract_id},
            )
        return None, tuple(sorted({s.tick_type for s in stored}, key=list(TickType).index))

    # ---- what is held -------------------------------------------------------------------------------------
    async def holdings(self, contract_id: int | None = None) -> list[dict[str, Any]]:
        """Per stream held (of one contract, or all): tick count, first / last time, last seq."""

        def work() -> list[dict[str, Any]]:
            streams = stored_streams(self._store)
            chosen = sorted(s for s in streams if contract_id is None or s.contract_id == contract_id)
            return holdings(self._store, chosen)

        return await self.run(work)

    async def contract_holdings(self, contracts: Sequence[Contract]) -> list[list[dict[str, Any]]]:
        """Per contract, per stream (configured ones first, then any other held): first / last time and count."""

        def work() -> list[list[dict[str, Any]]]:
            engine = self._store.engine
            return [[stream_holding(engine, s).summary() for s in contract_streams(self._store, c)] for c in contracts]

        return await self.run(work)

    async def coverage(
        self, contract: Contract, tick_types: tuple[TickType, ...] | None, gap_ns: int
    ) -> list[dict[str, Any]]:
        """Per stream of a contract (default: its streams), the intervals held, the holes and the ledger's gaps."""

        def work() -> list[dict[str, Any]]:
            streams = (
                contract_streams(self._store, contract)
                if tick_types is None
                else [StreamKey(contract.con_id, t) for t in tick_types]
            )
            return [stream_coverage(self._store.engine, self._store.gaps, s, gap_ns) for s in streams]

        return await self.run(work)

    # ---- files on disk (IB-Studies' /v3/storage) ----------------------------------------------------------------
    async def storage_stats(self) -> dict[str, Any]:
        """Totals per stream and over the store, with the `optimization_summary`."""
        return await self.run(storage_stats, self._store)

    async def storage_files(self, contract_id: int, tick_types: Sequence[TickType], fmt: str) -> list[dict[str, Any]]:
        """The files holding a contract's streams (`fmt`: parquet, json or all), newest first."""
        streams = [StreamKey(contract_id, t) for t in tick_types]
        return [f.to_dict() for f in await self.run(stored_files, self._store, streams, fmt)]

    # ---- health and recording ---------------------------------------------------------------------------------
    def store_status(self) -> tuple[bool, str]:
        """Whether the store accepts writes, and why not (or how many writes are pending)."""
        return self._store.write_status()

    def backfiller(self, fetch: Fetch, gate: OverlapGate | None = None) -> Backfiller:
        """A backfiller that stores IB history fetched with `fetch` into this store (`gate`: the IB source's)."""
        return Backfiller(self._store, fetch, gate=gate)
