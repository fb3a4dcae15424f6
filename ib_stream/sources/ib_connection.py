"""One ibapi 9.81 connection on its own thread: every EWrapper callback becomes an event on the asyncio loop.

`IbConnection` is the only place where ibapi's EClient/EWrapper (and their camelCase) meet ib-stream.
Its callbacks never block and never convert: each one stamps the local receive time and hands
`IbEvent(name, args, recv_ns, connection)` to the event loop with `call_soon_threadsafe`; the
IB source (`ib_stream.sources.ib`) converts them with `ib_parsing` and stores them in batches.

ibapi 9.81's socket reader drops everything it has read when a `recv` returns exactly 4096 bytes
and the next one times out (wire doc §3, pitfall 3): a burst ending on a 4096-byte boundary
followed by a quiet second would be lost, and a frame cut there corrupts the stream for good.
`_KeepPartialConnection` keeps the bytes instead; every connection made here uses it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ibapi.client import EClient
from ibapi.common import (
    ListOfHistoricalTick,
    ListOfHistoricalTickBidAsk,
    ListOfHistoricalTickLast,
    TickAttrib,
    TickAttribBidAsk,
    TickAttribLast,
)
from ibapi.connection import Connection
from ibapi.contract import Contract as IbContract
from ibapi.contract import ContractDetails
from ibapi.wrapper import EWrapper

from ib_stream.clock import Clock
from ib_stream.domain import Contract

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IbEvent:
    """One callback: its name, its arguments (ibapi order), when it arrived and on which connection."""

    name: str
    args: tuple[Any, ...]
    recv_ns: int
    connection: IbConnection


def ib_contract(contract: Contract) -> IbContract:
    """The ibapi Contract for a configured contract (identified by conId; exchange for depth)."""
    ib = IbContract()
    ib.conId = contract.con_id
    ib.symbol = contract.symbol
    ib.secType = contract.sec_type
    ib.exchange = contract.exchange
    ib.currency = contract.currency
    ib.primaryExchange = str(contract.extra.get("primary_exchange", ""))
    return ib


class _KeepPartialConnection(Connection):
    """ibapi's Connection, except that bytes already read survive a timeout of the next `recv`."""

    def _recvAllMsg(self) -> bytes:
        received = b""
        while self.isConnected():
            try:
                chunk = self.socket.recv(4096)
            except TimeoutError:
                if received:
                    return received  # ibapi 9.81 would raise here and drop `received`
                raise
            received += chunk
            if len(chunk) < 4096:
                break
        return received


class IbConnection(EWrapper, EClient):
    """The real EClient plus an EWrapper that forwards every callback to `deliver` on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[IbEvent], None], clock: Clock) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self._loop = loop
        self._deliver = deliver
        self._clock = clock
        self.port: int | None = None
        self.thread: threading.Thread | None = None

    @property
    def conn(self) -> Connection | None:
        """The socket connection; EClient.connect creates it, and it is made a `_KeepPartialConnection` at once."""
        return self.__dict__.get("_socket_conn")

    @conn.setter
    def conn(self, value: Connection | None) -> None:
        if value is not None and type(value) is Connection:
            value.__class__ = _KeepPartialConnection
        self.__dict__["_socket_conn"] = value

    # --- life cycle (called from the event loop) ---------------------------------------------------------------

    async def open(self, host: str, port: int, client_id: int, timeout: float) -> bool:
        """Connect (bounded: EClient.connect can block) and start the message loop thread; True when connected."""
        connecting = threading.Thread(target=self.connect, args=(host, port, client_id), daemon=True)
        connecting.start()
        await asyncio.get_running_loop().run_in_executor(None, connecting.join, timeout)
        if connecting.is_alive() or not self.isConnected():
            self.close()
            return False
        self.port = port
        self.thread = threading.Thread(target=self._run, name=f"ibapi-{host}:{port}", daemon=True)
        self.thread.start()
        return True

    def close(self) -> None:
        """Disconnect; the message loop thread then ends and reports `closed` once."""
        try:
            self.disconnect()
        except OSError as e:  # the socket may already be gone
            log.debug("IB disconnect: %s", e)

    def _run(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("the ibapi message loop stopped with an error")
        finally:
            self._emit("closed")

    def _emit(self, name: str, *args: Any) -> None:
        event = IbEvent(name, args, self._clock.now_ns(), self)
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the event loop closed (the service stopped): nobody is listening any more
            log.debug("IB %s after the event loop closed", name)

    # --- EWrapper (ibapi thread) ---------------------------------------------------------------------------------

    def connectionClosed(self) -> None:
        self._emit("closed")

    def nextValidId(self, orderId: int) -> None:
        self._emit("next_valid_id", orderId)

    def currentTime(self, time: int) -> None:
        self._emit("current_time", time)

    def error(self, reqId: int, errorCode: int, errorString: str) -> None:
        self._emit("error", reqId, errorCode, errorString)

    def contractDetails(self, reqId: int, contractDetails: ContractDetails) -> None:
        self._emit("contract_details", reqId, contractDetails.contract)

    def contractDetailsEnd(self, reqId: int) -> None:
        self._emit("contract_details_end", reqId)

    def tickByTickBidAsk(
        self, reqId: int, time: int, bidPrice: float, askPrice: float, bidSize: int, askSize: int,
        tickAttribBidAsk: TickAttribBidAsk,
    ) -> None:  # fmt: skip
        self._emit("tbt_bid_ask", reqId, time, bidPrice, askPrice, bidSize, askSize, tickAttribBidAsk)

    def tickByTickAllLast(
        self, reqId: int, tickType: int, time: int, price: float, size: int, tickAttribLast: TickAttribLast,
        exchange: str, specialConditions: str,
    ) -> None:  # fmt: skip
        self._emit("tbt_trade", reqId, tickType, time, price, size, tickAttribLast, exchange, specialConditions)

    def tickByTickMidPoint(self, reqId: int, time: int, midPoint: float) -> None:
        self._emit("tbt_mid_point", reqId, time, midPoint)

    def tickPrice(self, reqId: int, tickType: int, price: float, attrib: TickAttrib) -> None:
        self._emit("tick_price", reqId, tickType, price)

    def tickSize(self, reqId: int, tickType: int, size: int) -> None:
        self._emit("tick_size", reqId, tickType, size)

    def updateMktDepth(self, reqId: int, position: int, operation: int, side: int, price: float, size: int) -> None:
        self._emit("depth", reqId, position, operation, side, price, size, "")

    def updateMktDepthL2(
        self, reqId: int, position: int, marketMaker: str, operation: int, side: int, price: float, size: int,
        isSmartDepth: bool,
    ) -> None:  # fmt: skip
        self._emit("depth", reqId, position, operation, side, price, size, marketMaker)

    def historicalTicks(self, reqId: int, ticks: ListOfHistoricalTick, done: bool) -> None:
        self._emit("historical", reqId, list(ticks), done)

    def historicalTicksBidAsk(self, reqId: int, ticks: ListOfHistoricalTickBidAsk, done: bool) -> None:
        self._emit("historical", reqId, list(ticks), done)

    def historicalTicksLast(self, reqId: int, ticks: ListOfHistoricalTickLast, done: bool) -> None:
        self._emit("historical", reqId, list(ticks), done)

    # --- requests (event loop thread; EClient serialises sends) ------------------------------------------------

    def request_current_time(self) -> None:
        """reqCurrentTime: TWS answers once it has processed everything sent before (a barrier, see ib_subscriptions)."""
        self.reqCurrentTime()

    def request_details(self, req_id: int, contract: IbContract) -> None:
        self.reqContractDetails(req_id, contract)

    def request_tick_by_tick(self, req_id: int, contract: IbContract, kind: str) -> None:
        self.reqTickByTickData(req_id, contract, kind, 0, False)

    def request_mkt_data(self, req_id: int, contract: IbContract) -> None:
        self.reqMktData(req_id, contract, "", False, False, [])

    def request_depth(self, req_id: int, contract: IbContract, rows: int) -> None:
        self.reqMktDepth(req_id, contract, rows, False, [])

    def request_historical_ticks(self, req_id: int, contract: IbContract, start: str, what: str, count: int) -> None:
        """reqHistoricalTicks from `start` ("YYYYMMDD HH:MM:SS UTC") forward, all hours, sizes kept."""
        self.reqHistoricalTicks(req_id, contract, start, "", count, what, 0, False, [])

    def cancel(self, req_id: int, method: str) -> None:
        """Cancel a subscription made with method tbt, mkt or depth."""
        if method == "tbt":
            self.cancelTickByTickData(req_id)
        elif method == "mkt":
            self.cancelMktData(req_id)
        elif method == "depth":
            self.cancelMktDepth(req_id, False)
