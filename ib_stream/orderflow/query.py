"""The public read-only Python API (order-flow service layer): `StorageQuery` answers range queries, order-flow
bars and L2 books over a data root, from the calling process, safe while a service writes the same root.

`from ib_stream.storage import StorageQuery` is the import path users rely on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from ib_stream.analytics.grid import parse_resolution
from ib_stream.analytics.request import BarsRequest, parse_kinds
from ib_stream.contracts import load_contracts
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import IbStreamError, QueryError, ValidationError
from ib_stream.orderflow.historical import check_bars_of, historical_bars
from ib_stream.orderflow.service import OrderFlow
from ib_stream.settings import load_settings
from ib_stream.store.query import QueryEngine
from ib_stream.store.readonly import open_readonly_engine
from ib_stream.store.snapshots import BookAt, book_at
from ib_stream.times import TimeLike, iso_compact, to_utc_ns


class StorageQuery:
    """Public query API: `await StorageQuery().query_range(contract_id, tick_types, start_time, ...)`.

    With no arguments it opens the data root of the default settings read-only (safe while the
    service is writing); the service passes its own engine.
    """

    def __init__(
        self, engine: QueryEngine | None = None, *, config: Any = None, executor: Executor | None = None
    ) -> None:
        if engine is None:
            engine = open_readonly_engine(config)
        self.engine = engine
        self.config = config
        self._contracts: dict[int, Contract] | None = None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="ib-stream-query"
        )

    async def query_range(
        self,
        contract_id: int,
        tick_types: str | TickType | Sequence[str | TickType],
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """Return the ticks (or bars) of a contract in [start_time, end_time) as a DataFrame.

        `end_time=None` means now; naive datetimes are local time; `resolution` is `tick` or a bar size.
        """
        args = self._arguments(contract_id, tick_types, start_time, end_time, resolution)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self._range(*args))

    def query_range_sync(
        self,
        contract_id: int,
        tick_types: str | TickType | Sequence[str | TickType],
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """The same as `query_range`, for code without an event loop."""
        return self._range(*self._arguments(contract_id, tick_types, start_time, end_time, resolution))

    def _range(
        self, contract_id: int, tick_types: tuple[TickType, ...], start: int, end: int, resolution: str
    ) -> pd.DataFrame:
        """Ticks from the engine, or bars from the bar engine (`orderflow.historical`), cached never stale."""
        if resolution == "tick":
            return self.engine.query(contract_id, tick_types, start, end)
        for tick_type in tick_types:
            check_bars_of(tick_type, resolution)
        flow = OrderFlow(self.engine, self._contract(contract_id, None))
        streams = [StreamKey(contract_id, t) for t in tick_types]
        key = ("bars", start, resolution, flow.contract.calendar)
        return self.engine.frames(
            key, streams, 0, end, lambda s: historical_bars(flow, s.tick_type, start, end, resolution)
        )

    def _arguments(
        self, contract_id: Any, tick_types: Any, start_time: TimeLike, end_time: TimeLike | None, resolution: str | None
    ) -> tuple[int, tuple[TickType, ...], int, int, str]:
        contract, start, end = self._span(contract_id, start_time, end_time)
        types = TickType.parse_list([tick_types] if isinstance(tick_types, TickType) else tick_types)
        return contract, types, start, end, parse_resolution(resolution)

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

    async def bars(
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
        default: the contract's in the contracts file, else XNYS. `options`: session, anchor, trades, levels,
        obi_source, as in the HTTP API.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: self.bars_sync(contract_id, start_time, end_time, resolution, kinds, calendar=calendar, **options),
        )

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
        """The same as `bars`, for code without an event loop."""
        contract_id, start, end = self._span(contract_id, start_time, end_time)
        if "trades" in options:
            options["trades"] = TickType.parse(options["trades"], "trades")
        request = BarsRequest(contract_id, start, end, resolution, parse_kinds(kinds), **options)
        return OrderFlow(self.engine, self._contract(contract_id, calendar)).bars(request).to_pandas()

    def _contract(self, contract_id: int, calendar: str | None) -> Contract:
        """The configured contract (for its calendar), or one made up for an id the contracts file does not list."""
        if self._contracts is None:
            try:
                self._contracts = {c.con_id: c for c in load_contracts(load_settings().contracts_file)}
            except IbStreamError:  # no contracts file here: every contract is made up
                self._contracts = {}
        contract = self._contracts.get(contract_id) or Contract(contract_id, str(contract_id), calendar="XNYS")
        return contract if calendar is None else dataclasses.replace(contract, calendar=calendar)

    async def book_at(self, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
        """The L2 book of a contract at `at` (default now): the latest valid snapshot plus at most an hour of deltas."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.book_at_sync(contract_id, at, levels)
        )

    def book_at_sync(self, contract_id: int, at: TimeLike | None = None, levels: int | None = None) -> BookAt:
        """The same as `book_at`, for code without an event loop."""
        return book_at(self.engine, contract_id, at, levels)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
