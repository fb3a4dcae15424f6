"""The public read-only Python API (order-flow service layer): `StorageQuery` answers range queries, order-flow
bars, L2 books, footprints and liquidity heatmaps over a data root, from the calling process, safe while a service writes the same root.

`from ib_stream.storage import StorageQuery` is the import path users rely on. Each operation has one
blocking implementation (`query_range_sync`, `bars_sync`, `book_at_sync`, `footprint_sync`, `heatmap_sync`);
its awaitable form (`query_range`, `bars`, `book_at`, `footprint`, `heatmap`) is the same method run on the
query's worker threads by `_awaitable`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from ib_stream.analytics.footprint import DEFAULT_IMBALANCE_RATIO, Footprint
from ib_stream.analytics.grid import parse_bar_resolution, parse_resolution
from ib_stream.analytics.heatmap import (
    DEFAULT_COLUMNS,
    DEFAULT_ROWS,
    MAX_COLUMNS,
    MAX_ROWS,
    parse_grid_size,
    parse_price,
)
from ib_stream.analytics.request import BarsRequest, parse_kinds, parse_levels, parse_trades
from ib_stream.contracts import load_contracts
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import IbStreamError, QueryError, ValidationError
from ib_stream.orderflow.dashboard import HeatmapResult, footprint_of, liquidity_heatmap
from ib_stream.orderflow.historical import check_bars_of, historical_bars
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import Settings, StorageConfig, load_settings
from ib_stream.store.query import QueryEngine
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.service_file import data_root_in_use
from ib_stream.store.snapshots import BookAt, book_at
from ib_stream.times import TimeLike, iso_compact, to_utc_ns

P = ParamSpec("P")
R = TypeVar("R")


def _awaitable(
    blocking: Callable[Concatenate[StorageQuery, P], R],
) -> Callable[Concatenate[StorageQuery, P], Coroutine[Any, Any, R]]:
    """The awaitable form of a blocking `StorageQuery` method: the same arguments, run on the query's
    worker threads so the event loop never waits on files."""

    @functools.wraps(blocking)
    async def off_loop(self: StorageQuery, *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(contextvars.copy_context().run, blocking, self, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)  # the caller's budget too

    name = blocking.__name__.removesuffix("_sync")
    off_loop.__name__, off_loop.__qualname__ = name, f"StorageQuery.{name}"
    off_loop.__doc__ = f"Awaitable `{blocking.__name__}` (the same arguments and answer).\n\n{blocking.__doc__}"
    return off_loop


class StorageQuery:
    """Public query API: `await StorageQuery().query_range(contract_id, tick_types, start_time, ...)`.

    With no engine it opens a data root read-only (safe while the service is writing): that of `config`,
    else that of the settings (`load_settings()`) — or, when that holds no catalog, that of the one
    `ib-stream serve` running (`store.service_file.data_root_in_use`) — and reads the contracts file of
    the settings once, now. The service passes its own engine and contracts. `contracts` give each contract its calendar
    (CVD reset, `1d` bars); a contract not among them is made up with the XNYS calendar.
    """

    def __init__(
        self,
        engine: QueryEngine | None = None,
        *,
        config: StorageConfig | None = None,
        contracts: Iterable[Contract] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if engine is None:
            settings = None
            if config is None:
                settings = load_settings()
                config = data_root_in_use(settings.storage)  # else that of the running service
            engine = open_readonly_engine(config)
            if contracts is None:
                contracts = _configured_contracts(settings)
        self.engine = engine
        self.config = config
        self._contracts = {c.con_id: c for c in contracts or ()}
        self._executor = executor or ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="ib-stream-query"
        )

    def query_range_sync(
        self,
        contract_id: int,
        tick_types: str | TickType | Sequence[str | TickType],
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Return the ticks (or bars) of a contract in [start_time, end_time) as a DataFrame.

        `end_time=None` means now; naive datetimes are local time; `resolution` is `tick` or a bar size.
        `limit`: at most this many rows, the first ones (for ticks only as much is read as they need).
        """
        contract, start, end = self._span(contract_id, start_time, end_time)
        types = TickType.parse_list(tick_types if isinstance(tick_types, str) else tuple(tick_types))
        resolved = parse_resolution(resolution)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValidationError("limit", limit, "must be a positive integer")
        if resolved == "tick":
            return self.engine.query(contract, types, start, end, limit)
        for tick_type in types:
            check_bars_of(tick_type, resolved)
        flow = OrderFlow(self.engine, self._contract(contract, None))
        streams = [StreamKey(contract, t) for t in types]
        key = ("bars", start, resolved, flow.contract.calendar)
        bars = self.engine.frames(
            key, streams, 0, end, lambda s: historical_bars(flow, s.tick_type, start, end, resolved)
        )
        return bars if limit is None else bars.iloc[:limit]

    def bars_sync(
        self,
        contract_id: int,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str = "1m",
        kinds: str | Sequence[str] = ("ohlc", "cvd", "obi"),
        *,
        calendar: str | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Order-flow bars of a contract in [start_time, end_time) — OHLC with buy / sell volume and VWAP, CVD,
        OBI — as a DataFrame with the columns of `GET /v2/bars` (see docs/concepts/order-flow.md).

        `calendar` (an exchange_calendars name) gives the sessions that reset the CVD and make `1d` bars;
        default: the contract's among the contracts, else XNYS. `options`: session, anchor, trades, levels,
        obi_source, as in the HTTP API.
        """
        contract_id, start, end = self._span(contract_id, start_time, end_time)
        if "trades" in options:
            options["trades"] = TickType.parse(options["trades"], "trades")
        request = BarsRequest(contract_id, start, end, resolution, parse_kinds(kinds), **options)
        return OrderFlow(self.engine, self._contract(contract_id, calendar)).bars(request).to_pandas()

    def book_at_sync(self, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
        """The L2 book of a contract at `at` (default now): the latest valid snapshot plus at most an hour of deltas."""
        return book_at(self.engine, contract_id, at, levels)

    def footprint_sync(
        self,
        contract_id: int,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str = "1m",
        *,
        price_step: float | None = None,
        imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
        trades: str = "last",
        session: str = "regular",
        calendar: str | None = None,
    ) -> Footprint:
        """Footprint bars of a contract in [start_time, end_time): per bar and price level the buy / sell / unknown
        volume, delta, trade count and diagonal imbalances, per bar OHLC, volume, delta and POC — the answer of
        `GET /v2/footprint` (see docs/concepts/order-flow.md). `.documents()` gives the JSON bars, `.to_pandas()`
        one row per bar × level.

        `price_step` (default the contract's min_tick) buckets prices; `imbalance_ratio` (> 1, default 3).
        Only bars with trades are listed; trade sides are those of `bars` (the same classifier).
        """
        contract_id, start, end = self._span(contract_id, start_time, end_time)
        request = BarsRequest(
            contract_id, start, end, parse_bar_resolution(resolution), ("ohlc",), session, trades=parse_trades(trades)
        )
        flow = OrderFlow(self.engine, self._contract(contract_id, calendar))
        return footprint_of(flow, request, price_step, imbalance_ratio)

    def heatmap_sync(
        self,
        contract_id: int,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        *,
        columns: int = DEFAULT_COLUMNS,
        rows: int = DEFAULT_ROWS,
        price_low: float | None = None,
        price_high: float | None = None,
        levels: int | None = None,
        use_rollups: bool = True,
    ) -> HeatmapResult:
        """The liquidity heatmap of a contract over [start_time, end_time): the time-weighted mean resting L2 size
        per time column × price row, bids and asks apart — the answer of `GET /v2/heatmap` (see
        docs/concepts/order-book.md). The book at the start comes from the latest snapshot plus deltas.

        `columns` 1..4000, `rows` 1..1000 (at most; rows are whole price steps of the contract's min_tick);
        `price_low` / `price_high` default to the lowest / highest resting price; `levels`: rows per side
        considered (default all). NotFoundError when no depth rests in the window. `use_rollups=False` walks
        every depth update of the window instead of reading the heatmap rollups (the same answer).
        """
        contract_id, start, end = self._span(contract_id, start_time, end_time)
        return liquidity_heatmap(
            self.engine,
            self._contract(contract_id, None),
            start,
            end,
            parse_grid_size(columns, "columns", DEFAULT_COLUMNS, MAX_COLUMNS),
            parse_grid_size(rows, "rows", DEFAULT_ROWS, MAX_ROWS),
            parse_price(price_low, "price_low"),
            parse_price(price_high, "price_high"),
            None if levels is None else parse_levels(levels),
            use_rollups,
        )

    query_range = _awaitable(query_range_sync)
    bars = _awaitable(bars_sync)
    book_at = _awaitable(book_at_sync)
    footprint = _awaitable(footprint_sync)
    heatmap = _awaitable(heatmap_sync)

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    def _span(self, contract_id: Any, start_time: TimeLike, end_time: TimeLike | None) -> tuple[int, int, int]:
        """The contract id and [start, end) in UTC ns (end default now), each checked."""
        if isinstance(contract_id, bool) or not isinstance(contract_id, int | np.integer):
            raise ValidationError("contract_id", contract_id, "must be an integer")
        start = to_utc_ns(start_time, "start_time")
        end = self.engine.clock.now_ns() if end_time is None else to_utc_ns(end_time, "end_time")
        if end <= start:
            raise QueryError(
                f"end_time {iso_compact(end)} is not after start_time {iso_compact(start)}",
                details={"field": "end_time", "value": iso_compact(end), "start_time": iso_compact(start)},
            )
        return int(contract_id), start, end

    def _contract(self, contract_id: int, calendar: str | None) -> Contract:
        """The contract as given (for its calendar), or one made up for an id the contracts do not list."""
        contract = self._contracts.get(contract_id) or Contract(contract_id, str(contract_id), calendar="XNYS")
        return contract if calendar is None else dataclasses.replace(contract, calendar=calendar)


def _configured_contracts(settings: Settings | None) -> list[Contract]:
    """The contracts file of `settings` (default: `load_settings()`); none when it cannot be read here."""
    try:
        return load_contracts((settings or load_settings()).contracts_file)
    except IbStreamError:  # no contracts file (or settings) here: every contract is made up
        return []
