"""The subscriptions of the IB source on its current connection: what is requested how, what was refused.

Per contract: reqTickByTickData per tick type (bid_ask, last, all_last, mid_point; source ib_tbt)
up to `max_tick_by_tick_subscriptions`; beyond that, or when IB refuses one (10189/10190),
reqMktData for the contract (bid_ask/last through `MarketDataAssembler`, source ib_mkt);
reqMktDepth with the contract's `depth_rows` when it records `depth`. What cannot be subscribed
is reported (`refused`, and the `on_refused` callback that opens a gap in the ledger).

Every request and cancel goes out through a paced outbox (`ib.max_messages_per_second`; IB
disconnects a client that sends more than 50 messages a second), so subscribing many contracts
at once, or resubscribing everything after a reconnect, never trips IB's limit.

Acknowledgement: queuing a subscription says nothing about when it reaches TWS (at 1 message a
second, 40 requests take 40 s). After subscription requests the outbox sends a barrier, a
reqCurrentTime (once the outbox is empty, or every `BARRIER_AFTER` subscriptions): TWS handles a
client's messages in order, so its currentTime reply means every request sent before it has been
processed. `acknowledged()` (called for each currentTime) returns the subscriptions the oldest
outstanding barrier covers that are still current (not refused or cancelled in between).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ibapi.contract import Contract as IbContract

from ib_stream.domain import Contract, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources import ib_parsing as parse
from ib_stream.sources.ib_connection import IbConnection, ib_contract
from ib_stream.sources.ib_pacing import Pacer

log = logging.getLogger(__name__)

TBT_KINDS: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "BidAsk",
    TickType.LAST: "Last",
    TickType.ALL_LAST: "AllLast",
    TickType.MID_POINT: "MidPoint",
}
MKT_TYPES: Final = frozenset({TickType.BID_ASK, TickType.LAST})  # what reqMktData can stand in for
BARRIER_AFTER: Final = 10  # subscriptions one reqCurrentTime acknowledges at most
OnRefused = Callable[[Contract, "TickType | str", str], None]


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One outbox entry: a request of `conn` (method None: nothing to send) and the subscription it acknowledges."""

    conn: IbConnection
    method: Callable[..., None] | None
    args: tuple[Any, ...] = ()
    ack: int | None = None  # request id of a subscription the next barrier acknowledges


@dataclass(slots=True)
class Request:
    """One request of the current connection: contract details or a subscription (tbt, mkt or depth)."""

    method: str  # details | tbt | mkt | depth
    contract: Contract
    tick_types: set[TickType] = field(default_factory=set)  # what it records (mkt may record two)
    assembler: parse.MarketDataAssembler | None = None
    resolved: asyncio.Future[IbContract | None] | None = None


class Subscriptions:
    """Requests of one IB source (see the module docstring); `conn` is the connection in use."""

    def __init__(self, config: IbConfig, ids: Iterator[int], on_refused: OnRefused) -> None:
        self.config = config
        self.conn: IbConnection | None = None
        self.requests: dict[int, Request] = {}
        self.resolved: dict[int, IbContract] = {}
        self.refused: dict[int, dict[str, str]] = {}  # con_id -> tick type (or "contract") -> why
        self._ids = ids
        self._on_refused = on_refused
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._pacer = Pacer(config.max_messages_per_second, 1.0)
        self._unacked: list[int] = []  # subscriptions sent since the last barrier
        self._barriers: collections.deque[list[int]] = collections.deque()  # sent, not answered yet (oldest first)

    # --- the paced outbox ----------------------------------------------------------------------------------------
    def send(self, method: Callable[..., None] | None, *args: Any, ack: int | None = None) -> None:
        """Queue one request of the current connection (sent by `run_outbox`, paced).

        `ack`: the subscription this request makes (or, with method None, one already made) is acknowledged
        by the barrier that follows it.
        """
        if self.conn is not None:
            self._outbox.put_nowait(_Outgoing(self.conn, method, args, ack))

    async def run_outbox(self) -> None:
        """Send queued requests at most `max_messages_per_second`; requests of an old connection are dropped."""
        while True:
            item = await self._outbox.get()
            conn = item.conn
            if conn is not self.conn or not conn.isConnected():
                continue
            if item.method is not None:
                await self._pacer.acquire()
                if conn is not self.conn:
                    continue
                try:
                    item.method(*item.args)
                except Exception:
                    log.exception("IB request %s%r could not be sent", getattr(item.method, "__name__", ""), item.args)
                    continue
            if item.ack is not None:
                self._unacked.append(item.ack)
            if self._unacked and (self._outbox.empty() or len(self._unacked) >= BARRIER_AFTER):
                await self._send_barrier(conn)

    async def _send_barrier(self, conn: IbConnection) -> None:
        await self._pacer.acquire()
        if conn is not self.conn or not conn.isConnected():
            return
        covered, self._unacked = self._unacked, []
        self._barriers.append(covered)
        try:
            conn.request_current_time()
        except Exception:
            log.exception("IB reqCurrentTime could not be sent")

    def acknowledged(self) -> list[Request]:
        """TWS answered the oldest barrier: the subscriptions sent before it that are still current."""
        covered = self._barriers.popleft() if self._barriers else []
        return [r for r in (self.requests.get(req_id) for req_id in covered) if r is not None and r.method != "details"]

    @property
    def queued(self) -> int:
        return self._outbox.qsize()

    # --- requests ------------------------------------------------------------------------------------------------
    def reset(self, conn: IbConnection | None) -> None:
        """A new connection (or none): nothing is requested on it yet."""
        self.conn = conn
        self.requests.clear()
        self.refused.clear()
        self._unacked = []
        self._barriers.clear()

    def details(self, contract: Contract, future: asyncio.Future[IbContract | None]) -> None:
        """Ask for the contract details of `contract`; `future` gets the ibapi Contract or None."""
        assert self.conn is not None
        req_id = next(self._ids)
        self.requests[req_id] = Request("details", contract, resolved=future)
        self.send(self.conn.request_details, req_id, ib_contract(contract))

    def drop_details(self) -> None:
        for req_id in [r for r, req in self.requests.items() if req.method == "details"]:
            del self.requests[req_id]

    def subscribe_all(self, contracts: list[Contract], con_id: int | None = None) -> None:
        for contract in contracts:
            if contract.con_id in self.resolved and con_id in (None, contract.con_id):
                self.subscribe(contract)

    def subscribe(self, contract: Contract) -> None:
        conn, ib = self.conn, self.resolved[contract.con_id]
        assert conn is not None
        fallback: set[TickType] = set()
        for tick_type in contract.tick_types:
            kind = TBT_KINDS.get(tick_type)
            if kind is None:
                continue
            if self.count("tbt") < self.config.max_tick_by_tick_subscriptions:
                req_id = next(self._ids)
                self.requests[req_id] = Request("tbt", contract, {tick_type})
                self.send(conn.request_tick_by_tick, req_id, ib, kind, ack=req_id)
            else:
                fallback.add(tick_type)
        limit = f"over the {self.config.max_tick_by_tick_subscriptions} tick-by-tick subscriptions allowed"
        self.fall_back(contract, fallback, limit)
        if contract.depth_rows > 0 and TickType.DEPTH in contract.tick_types:
            req_id = next(self._ids)
            self.requests[req_id] = Request("depth", contract, {TickType.DEPTH})
            self.send(conn.request_depth, req_id, ib, contract.depth_rows, ack=req_id)

    def fall_back(self, contract: Contract, tick_types: set[TickType], why: str) -> None:
        """Record `tick_types` of `contract` with reqMktData instead (those it cannot give are reported)."""
        for tick_type in tick_types - MKT_TYPES:
            self.refuse(contract, tick_type, f"{why}; reqMktData has no {tick_type.value}")
        wanted = tick_types & MKT_TYPES
        if not wanted or self.conn is None:
            return
        for req_id, request in self.requests.items():
            if request.method == "mkt" and request.contract.con_id == contract.con_id:
                request.tick_types |= wanted
                self.send(None, ack=req_id)  # already requested: the next barrier acknowledges the added types
                return
        req_id = next(self._ids)
        self.requests[req_id] = Request("mkt", contract, set(wanted), parse.MarketDataAssembler())
        self.send(self.conn.request_mkt_data, req_id, self.resolved[contract.con_id], ack=req_id)
        log.info("IB %s %s: reqMktData (%s)", contract.symbol, sorted(t.value for t in wanted), why)

    def resubscribe(self, contracts: list[Contract], con_id: int | None = None) -> None:
        """Cancel every subscription (of one contract, or all) and request it again (new request ids)."""
        if self.conn is None:
            return
        for req_id, request in list(self.requests.items()):
            if request.method != "details" and con_id in (None, request.contract.con_id):
                self.send(self.conn.cancel, req_id, request.method)
                del self.requests[req_id]
        self.refused = {c: why for c, why in self.refused.items() if "contract" in why or con_id not in (None, c)}
        self.subscribe_all(contracts, con_id)

    def cancel(self, req_id: int) -> Request | None:
        """Forget a request and cancel it at IB; return it."""
        request = self.requests.pop(req_id, None)
        if request is not None and self.conn is not None and request.method != "details":
            self.send(self.conn.cancel, req_id, request.method)
        return request

    def count(self, method: str) -> int:
        return sum(1 for r in self.requests.values() if r.method == method)

    def subscribed(self, con_id: int) -> bool:
        return any(r.contract.con_id == con_id and r.method != "details" for r in self.requests.values())

    def refuse(self, contract: Contract, what: TickType | str, why: str) -> None:
        name = what.value if isinstance(what, TickType) else what
        self.refused.setdefault(contract.con_id, {})[name] = why
        log.warning("IB %s (%d) %s not subscribed: %s", contract.symbol, contract.con_id, name, why)
        self._on_refused(contract, what, why)

    def by_method(self) -> dict[int, dict[str, str]]:
        """con_id -> tick type -> method (tbt|mkt|depth), for status()."""
        out: dict[int, dict[str, str]] = {}
        for request in self.requests.values():
            for tick_type in request.tick_types:
                out.setdefault(request.contract.con_id, {})[tick_type.value] = request.method
        return out
