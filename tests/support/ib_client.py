"""A tiny real-ibapi client for tests: EClient + EWrapper recording every callback as a plain tuple."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ibapi.client import EClient
from ibapi.common import TickAttrib, TickAttribBidAsk, TickAttribLast
from ibapi.contract import Contract, ContractDetails
from ibapi.wrapper import EWrapper

Event = tuple[Any, ...]  # (callback name, *arguments)


def ib_contract(con_id: int, exchange: str = "SMART", **fields: Any) -> Contract:
    """An ibapi Contract given by conId (other attributes as keyword arguments, ibapi spelling)."""
    contract = Contract()
    contract.conId = con_id
    contract.exchange = exchange
    for name, value in fields.items():
        setattr(contract, name, value)
    return contract


class RecordingClient(EWrapper, EClient):
    """The real EClient talking to a (fake) TWS; callbacks land in `events`, waited on with `wait_for`."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.connecting: threading.Thread | None = None

    def start(self, port: int, client_id: int = 7, timeout: float = 5.0) -> RecordingClient:
        """Connect (bounded: EClient.connect can block for ever) and run the message loop on a thread."""
        self.connecting = threading.Thread(target=self.connect, args=("127.0.0.1", port, client_id), daemon=True)
        self.connecting.start()
        self.connecting.join(timeout)
        if self.connecting.is_alive():
            raise TimeoutError(f"EClient.connect to port {port} did not return within {timeout}s")
        if self.isConnected():
            self.thread = threading.Thread(target=self.run, name=f"ibapi-run-{client_id}", daemon=True)
            self.thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        if self.isConnected():
            self.disconnect()
        if self.thread is not None:
            self.thread.join(timeout)

    def _add(self, *event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def events_of(self, name: str, req_id: int | None = None) -> list[Event]:
        """Events of one callback, optionally only those whose first argument is `req_id`."""
        with self._cond:
            return [e for e in self.events if e[0] == name and (req_id is None or e[1] == req_id)]

    def wait_for(
        self,
        name: str,
        req_id: int | None = None,
        count: int = 1,
        timeout: float = 5.0,
        where: Callable[[Event], bool] = lambda e: True,
    ) -> list[Event]:
        """Wait until `count` matching events arrived; return all matching events so far."""

        def found() -> list[Event]:
            return [e for e in self.events_of(name, req_id) if where(e)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(found()) >= count, timeout):
                names = [e[0] for e in self.events][-15:]
                raise TimeoutError(f"{count} x {name}({req_id}) not received within {timeout}s; last: {names}")
            return found()

    # --- EWrapper ------------------------------------------------------------------------------------------------

    def connectAck(self) -> None:
        self._add("connectAck")

    def connectionClosed(self) -> None:
        self._add("connectionClosed")

    def nextValidId(self, orderId: int) -> None:
        self._add("nextValidId", orderId)

    def managedAccounts(self, accountsList: str) -> None:
        self._add("managedAccounts", accountsList)

    def error(self, reqId: int, errorCode: int, errorString: str) -> None:
        self._add("error", reqId, errorCode, errorString)

    def currentTime(self, time: int) -> None:
        self._add("currentTime", time)

    def contractDetails(self, reqId: int, contractDetails: ContractDetails) -> None:
        self._add("contractDetails", reqId, contractDetails)

    def contractDetailsEnd(self, reqId: int) -> None:
        self._add("contractDetailsEnd", reqId)

    def tickReqParams(self, tickerId: int, minTick: float, bboExchange: str, snapshotPermissions: int) -> None:
        self._add("tickReqParams", tickerId, minTick, bboExchange, snapshotPermissions)

    def tickPrice(self, reqId: int, tickType: int, price: float, attrib: TickAttrib) -> None:
        self._add("tickPrice", reqId, tickType, price, (attrib.canAutoExecute, attrib.pastLimit, attrib.preOpen))

    def tickSize(self, reqId: int, tickType: int, size: int) -> None:
        self._add("tickSize", reqId, tickType, size)

    def tickString(self, reqId: int, tickType: int, value: str) -> None:
        self._add("tickString", reqId, tickType, value)

    def tickSnapshotEnd(self, reqId: int) -> None:
        self._add("tickSnapshotEnd", reqId)

    def tickByTickBidAsk(
        self, reqId: int, time: int, bidPrice: float, askPrice: float, bidSize: int, askSize: int,
        tickAttribBidAsk: TickAttribBidAsk,
    ) -> None:  # fmt: skip
        attrib = (tickAttribBidAsk.bidPastLow, tickAttribBidAsk.askPastHigh)
        self._add("tickByTickBidAsk", reqId, time, bidPrice, askPrice, bidSize, askSize, attrib)

    def tickByTickAllLast(
        self, reqId: int, tickType: int, time: int, price: float, size: int, tickAttribLast: TickAttribLast,
        exchange: str, specialConditions: str,
    ) -> None:  # fmt: skip
        attrib = (tickAttribLast.pastLimit, tickAttribLast.unreported)
        self._add("tickByTickAllLast", reqId, tickType, time, price, size, attrib, exchange, specialConditions)

    def tickByTickMidPoint(self, reqId: int, time: int, midPoint: float) -> None:
        self._add("tickByTickMidPoint", reqId, time, midPoint)

    def updateMktDepth(self, reqId: int, position: int, operation: int, side: int, price: float, size: int) -> None:
        self._add("updateMktDepth", reqId, position, operation, side, price, size)

    def updateMktDepthL2(
        self, reqId: int, position: int, marketMaker: str, operation: int, side: int, price: float, size: int,
        isSmartDepth: bool,
    ) -> None:  # fmt: skip
        self._add("updateMktDepthL2", reqId, position, marketMaker, operation, side, price, size, isSmartDepth)

    def historicalTicks(self, reqId: int, ticks: list[Any], done: bool) -> None:
        self._add("historicalTicks", reqId, [(t.time, t.price, t.size) for t in ticks], done)

    def historicalTicksBidAsk(self, reqId: int, ticks: list[Any], done: bool) -> None:
        rows = [
            (t.time, t.priceBid, t.priceAsk, t.sizeBid, t.sizeAsk, t.tickAttribBidAsk.bidPastLow,
             t.tickAttribBidAsk.askPastHigh)
            for t in ticks
        ]  # fmt: skip
        self._add("historicalTicksBidAsk", reqId, rows, done)

    def historicalTicksLast(self, reqId: int, ticks: list[Any], done: bool) -> None:
        rows = [
            (t.time, t.price, t.size, t.exchange, t.specialConditions, t.tickAttribLast.pastLimit,
             t.tickAttribLast.unreported)
            for t in ticks
        ]  # fmt: skip
        self._add("historicalTicksLast", reqId, rows, done)
