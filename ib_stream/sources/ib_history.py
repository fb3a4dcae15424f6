"""reqHistoricalTicks over an IB connection: paced requests, one future each, pacing violations retried.

    history = HistoryRequests(ids, Pacer(60, 600), timeout=30, pacing_wait=15)
    history.conn = connection                 # the IbConnection in use (None while disconnected)
    raw = await history.fetch(ib_contract, start_ns, "BID_ASK")   # up to 1,000 ibapi HistoricalTick* objects

The owner routes callbacks here: `on_ticks` for the `historical` event, `on_error` for errors on a
request id this object `owns`, `fail_all` when the connection closes. A request that cannot be
sent (no connection) or whose answer was still in flight when the connection closed fails with
`HistoryInterrupted`: nothing is wrong with the request, it can be made again on the next connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ibapi.contract import Contract as IbContract

from ib_stream.clock import NS_PER_SECOND, from_ns
from ib_stream.errors import SourceError
from ib_stream.sources.ib_connection import IbConnection
from ib_stream.sources.ib_errors import Action
from ib_stream.sources.ib_pacing import Pacer

log = logging.getLogger(__name__)
TICKS_PER_REQUEST: Final = 1000  # IB's maximum for reqHistoricalTicks


class HistoricalDataError(SourceError):
    """A reqHistoricalTicks request failed (not connected, refused, timed out, paced out)."""

    code = "HISTORICAL_DATA_ERROR"


class HistoryInterrupted(HistoricalDataError):
    """No IB connection to send the request on, or it closed before the answer came (same code as its parent)."""


class _PacingViolation(Exception):
    pass


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[list[Any]]
    ticks: list[Any] = field(default_factory=list)


def ib_time(ns: int) -> str:
    """An IB request time in UTC, whole seconds: '20220302 01:00:00 UTC'."""
    return from_ns(ns - ns % NS_PER_SECOND).strftime("%Y%m%d %H:%M:%S UTC")


class HistoryRequests:
    """Historical tick requests of one IB source (see the module docstring)."""

    def __init__(
        self, ids: Iterator[int], pacer: Pacer, *, timeout: float, pacing_wait: float, retries: int = 5
    ) -> None:
        self.conn: IbConnection | None = None
        self.pacer = pacer
        self.timeout = timeout
        self.pacing_wait = pacing_wait
        self.retries = retries
        self.requests = 0
        self.pacing_violations = 0
        self._ids = ids
        self._pending: dict[int, _Pending] = {}

    def owns(self, req_id: int) -> bool:
        return req_id in self._pending

    async def fetch(self, contract: IbContract, start_ns: int, what: str) -> list[Any]:
        """Up to 1,000 ticks from `start_ns` (whole second) forward; waits for pacing; raises HistoricalDataError."""
        loop = asyncio.get_running_loop()
        for _ in range(self.retries + 1):
            await self.pacer.acquire()
            conn = self.conn
            if conn is None or not conn.isConnected():
                raise HistoryInterrupted("not connected to IB: historical ticks cannot be requested")
            req_id = next(self._ids)
            pending = _Pending(loop.create_future())
            self._pending[req_id] = pending
            self.requests += 1
            conn.request_historical_ticks(req_id, contract, ib_time(start_ns), what, TICKS_PER_REQUEST)
            try:
                return await asyncio.wait_for(pending.future, self.timeout)
            except _PacingViolation:
                self.pacing_violations += 1
                log.warning(
                    "IB pacing violation on historical %s: waiting %.0fs before retrying", what, self.pacing_wait
                )
                await asyncio.sleep(self.pacing_wait)
            except TimeoutError:
                raise HistoricalDataError(
                    f"reqHistoricalTicks {what} from {ib_time(start_ns)} got no answer within {self.timeout:g}s"
                ) from None
            finally:
                self._pending.pop(req_id, None)
        raise HistoricalDataError(f"historical {what} requests kept violating IB pacing ({self.retries} retries)")

    def on_ticks(self, req_id: int, ticks: list[Any], done: bool) -> None:
        pending = self._pending.get(req_id)
        if pending is None:
            return
        pending.ticks.extend(ticks)
        if done and not pending.future.done():
            pending.future.set_result(pending.ticks)

    def on_error(self, req_id: int, code: int, message: str, action: Action) -> None:
        pending = self._pending.get(req_id)
        if pending is None or pending.future.done():
            return
        if action is Action.HISTORICAL_NO_DATA:
            pending.future.set_result([])
        elif action is Action.PACING:
            pending.future.set_exception(_PacingViolation())
        else:
            pending.future.set_exception(HistoricalDataError(f"IB {code}: {message}", details={"ib_code": code}))

    def fail_all(self, why: str) -> None:
        """The connection closed: every request still waiting fails with HistoryInterrupted."""
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(HistoryInterrupted(why))
