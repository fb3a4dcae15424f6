"""The Interactive Brokers source: connects through ibapi, subscribes every configured contract, stores its ticks.

    source = IbSource(settings.ib, contracts)          # a TickSource: await app.start([source])
    source.status()                                    # connection, subscriptions, refusals, reconnects, gaps

Life cycle: connect to `config.host` trying `config.ports` in order (bounded by
`connect_timeout_seconds`), wait for nextValidId, resolve every conId with reqContractDetails
(error 200: the contract is reported as not subscribed, the others go on), then subscribe:
reqTickByTickData per tick type (bid_ask, last, all_last, mid_point; source ib_tbt) up to
`max_tick_by_tick_subscriptions`; beyond that, or when IB refuses one (10189/10190), reqMktData for
the contract (bid_ask/last through `MarketDataAssembler`, source ib_mkt); reqMktDepth with the
contract's `depth_rows` when it records `depth` (source ib_depth). Error 317 (depth reset) is only
logged: the depth stream stores IB's insert/update/delete rows, and a reader rebuilding a book
starts again from the rows that follow.

Errors go through `ib_errors.classify` and a table of handlers (`_ACTIONS`). A closed connection
opens a gap and reconnects with exponential backoff and jitter, then resubscribes everything;
1100 opens a gap ("IB 1100: ..."); 1101/1102 close it and cancel and resubscribe everything.

Threads: `IbConnection` runs ibapi's message loop on a daemon thread and hands every callback to
this loop; one consumer task converts them with `ib_parsing` and publishes them grouped per stream
(ticks arriving together are one `publish`), so the ibapi thread never waits for the store.

Watchdog: while connected, a contract whose subscriptions delivered no callback for
`stale_after_seconds` while its session is open (`MarketSessions.is_open_at(now, "extended")`;
a closed market or the daily break never counts) is resubscribed; still silent after another
`stale_after_seconds`, the connection is dropped (a gap "stale feed ..." opens, logged as an error)
and the reconnect loop takes over. Not here yet: backfill after a reconnect, persisting gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ibapi.contract import Contract as IbContract

from ib_stream.clock import NS_PER_SECOND, Clock, SystemClock
from ib_stream.domain import Contract, TickType
from ib_stream.settings import IbConfig
from ib_stream.sources import ib_parsing as parse
from ib_stream.sources.ib_connection import IbConnection, IbEvent, ib_contract
from ib_stream.sources.ib_errors import Action, classify, format_error
from ib_stream.storage.sessions import MarketSessions
from ib_stream.streaming import StreamingApp

log = logging.getLogger(__name__)

TBT_KINDS: Final[dict[TickType, str]] = {
    TickType.BID_ASK: "BidAsk",
    TickType.LAST: "Last",
    TickType.ALL_LAST: "AllLast",
    TickType.MID_POINT: "MidPoint",
}
MKT_TYPES: Final = frozenset({TickType.BID_ASK, TickType.LAST})  # what reqMktData can stand in for
DATA_EVENTS: Final = frozenset({"tbt_bid_ask", "tbt_trade", "tbt_mid_point", "tick_price", "tick_size", "depth"})
FLUSH_AFTER_SECONDS: Final = 0.1  # settle reqMktData prices still waiting for their size after this quiet
StreamBatch = dict[tuple[int, TickType, str], list[dict[str, Any]]]


@dataclass(slots=True)
class Gap:
    """An interval in which IB data did not flow (end_ns None while it lasts)."""

    start_ns: int
    reason: str
    end_ns: int | None = None


@dataclass(slots=True)
class _Request:
    """One request of the current connection: contract details or a subscription (tbt, mkt or depth)."""

    method: str  # details | tbt | mkt | depth
    contract: Contract
    tick_types: set[TickType] = field(default_factory=set)  # what it records (mkt may record two)
    assembler: parse.MarketDataAssembler | None = None
    resolved: asyncio.Future[IbContract | None] | None = None


class IbSource:
    """TickSource recording every configured contract from TWS / IB Gateway (see the module docstring)."""

    name = "ib"

    def __init__(self, config: IbConfig, contracts: Sequence[Contract], clock: Clock | None = None) -> None:
        self.config = config
        self.contracts = list(contracts)
        self.clock = clock or SystemClock()
        self.gaps: list[Gap] = []
        self.reconnects = 0
        self.refused: dict[int, dict[str, str]] = {}  # con_id -> tick type (or "contract") -> why
        self._requests: dict[int, _Request] = {}
        self._resolved: dict[int, IbContract] = {}
        self._ids = itertools.count(1)
        self._conn: IbConnection | None = None
        self._closed = asyncio.Event()
        self._next_id = asyncio.Event()
        self._events: asyncio.Queue[IbEvent] = asyncio.Queue()
        self._app: StreamingApp | None = None
        self._last_data: dict[int, int] = {}  # con_id -> receive time of its latest callback (or subscribe time)
        self._stale: set[int] = set()  # con_ids resubscribed by the watchdog, not heard from since
        self.watchdog_checks = 0

    # --- TickSource ----------------------------------------------------------------------------------------------

    async def run(self, app: StreamingApp) -> None:
        """Connect, subscribe and store ticks until cancelled, reconnecting whenever the connection drops."""
        self._app = app
        consumer = asyncio.create_task(self._consume(), name="ib-events")
        try:
            await self._connection_loop()
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            if self._conn is not None:
                self._conn.close()

    def status(self) -> dict[str, Any]:
        """Connection, subscriptions per contract and tick type (method tbt|mkt|depth), refusals, reconnects, gaps."""
        subscriptions: dict[int, dict[str, str]] = {}
        for request in self._requests.values():
            for tick_type in request.tick_types:
                subscriptions.setdefault(request.contract.con_id, {})[tick_type.value] = request.method
        conn = self._conn
        return {
            "connected": conn is not None and conn.isConnected() and not self._closed.is_set(),
            "port": conn.port if conn is not None else None,
            "subscriptions": subscriptions,
            "not_subscribed": {con_id: dict(why) for con_id, why in self.refused.items()},
            "reconnects": self.reconnects,
            "stale": sorted(self._stale),
            "gaps": [{"start_ns": g.start_ns, "end_ns": g.end_ns, "reason": g.reason} for g in self.gaps],
        }

    # --- connection ----------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt, ever_connected = 0, False
        while True:
            if await self._connect():
                if ever_connected:
                    self.reconnects += 1
                ever_connected, attempt = True, 0
                await self._session()
                self._open_gap("IB connection closed")
            delay = min(self.config.reconnect_max_seconds, self.config.reconnect_initial_seconds * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        for port in self.config.ports:
            conn = IbConnection(loop, self._events.put_nowait, self.clock)
            self._closed.clear()
            self._next_id.clear()
            self._conn = conn
            timeout = self.config.connect_timeout_seconds
            if await conn.open(self.config.host, port, self.config.client_id, timeout):
                try:
                    await asyncio.wait_for(self._next_id.wait(), timeout)
                    return True
                except TimeoutError:
                    log.warning("IB at %s:%d sent no nextValidId within %.1fs", self.config.host, port, timeout)
                    conn.close()
            log.info("IB not reachable at %s:%d", self.config.host, port)
        self._conn = None
        return False

    async def _session(self) -> None:
        """Resolve, subscribe, then wait until the connection closes."""
        log.info("connected to IB at %s:%s", self.config.host, self._conn.port if self._conn else "?")
        self._requests.clear()
        self.refused.clear()
        await self._resolve_all()
        self._subscribe_all()
        self._close_gaps()
        now = self.clock.now_ns()
        self._last_data = {c.con_id: now for c in self.contracts}
        self._stale.clear()
        watchdog = asyncio.create_task(self._watchdog(), name="ib-watchdog")
        try:
            await self._closed.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        self._requests.clear()

    async def _watchdog(self) -> None:
        """Resubscribe a contract silent for stale_after_seconds in an open session; then drop the connection."""
        stale_ns = int(self.config.stale_after_seconds * NS_PER_SECOND)
        while True:
            await asyncio.sleep(min(1.0, self.config.stale_after_seconds / 4))
            self.watchdog_checks += 1
            now = self.clock.now_ns()
            for contract in self.contracts:
                con_id = contract.con_id
                subscribed = any(r.contract.con_id == con_id and r.method != "details" for r in self._requests.values())
                if not subscribed or now - self._last_data.get(con_id, now) < stale_ns:
                    continue
                try:
                    is_open = MarketSessions.for_contract(contract).is_open_at(now, "extended")
                except Exception:  # an unknown calendar must not stop the watchdog: treat the market as open
                    log.exception("IB watchdog: no sessions for %s (calendar %s)", contract.symbol, contract.calendar)
                    is_open = True
                if not is_open:
                    continue
                silent = f"no data from {contract.symbol} ({con_id}) for {self.config.stale_after_seconds:g}s"
                if con_id not in self._stale:
                    log.warning("IB stale feed: %s while its session is open: resubscribing", silent)
                    self._stale.add(con_id)
                    self._last_data[con_id] = now
                    self._resubscribe(con_id)
                    continue
                log.error("IB stale feed: %s after a resubscribe: reconnecting", silent)
                self._open_gap(f"stale feed: {silent}")
                if self._conn is not None:
                    self._conn.close()
                return

    async def _resolve_all(self) -> None:
        conn = self._conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        pending: dict[int, asyncio.Future[IbContract | None]] = {}
        for contract in self.contracts:
            req_id = next(self._ids)
            future: asyncio.Future[IbContract | None] = loop.create_future()
            self._requests[req_id] = _Request("details", contract, resolved=future)
            pending[contract.con_id] = future
            conn.request_details(req_id, ib_contract(contract))
        timeout = self.config.connect_timeout_seconds
        for contract in self.contracts:
            try:
                resolved = await asyncio.wait_for(pending[contract.con_id], timeout)
            except TimeoutError:
                resolved = None
                self.refused.setdefault(contract.con_id, {})["contract"] = f"no contract details within {timeout}s"
            if resolved is not None:
                self._resolved[contract.con_id] = resolved
        for req_id in [r for r, req in self._requests.items() if req.method == "details"]:
            del self._requests[req_id]

    # --- subscriptions -------------------------------------------------------------------------------------------

    def _subscribe_all(self) -> None:
        for contract in self.contracts:
            if contract.con_id in self._resolved:
                self._subscribe(contract)

    def _subscribe(self, contract: Contract) -> None:
        conn, ib = self._conn, self._resolved[contract.con_id]
        assert conn is not None
        fallback: set[TickType] = set()
        for tick_type in contract.tick_types:
            kind = TBT_KINDS.get(tick_type)
            if kind is None:
                continue
            if self._count("tbt") < self.config.max_tick_by_tick_subscriptions:
                req_id = next(self._ids)
                self._requests[req_id] = _Request("tbt", contract, {tick_type})
                conn.request_tick_by_tick(req_id, ib, kind)
            else:
                fallback.add(tick_type)
        limit = f"over the {self.config.max_tick_by_tick_subscriptions} tick-by-tick subscriptions allowed"
        self._fall_back(contract, fallback, limit)
        if contract.depth_rows > 0 and TickType.DEPTH in contract.tick_types:
            req_id = next(self._ids)
            self._requests[req_id] = _Request("depth", contract, {TickType.DEPTH})
            conn.request_depth(req_id, ib, contract.depth_rows)

    def _fall_back(self, contract: Contract, tick_types: set[TickType], why: str) -> None:
        """Record `tick_types` of `contract` with reqMktData instead (those it cannot give are reported)."""
        for tick_type in tick_types - MKT_TYPES:
            self._refuse(contract, tick_type, f"{why}; reqMktData has no {tick_type.value}")
        wanted = tick_types & MKT_TYPES
        if not wanted or self._conn is None:
            return
        for request in self._requests.values():
            if request.method == "mkt" and request.contract.con_id == contract.con_id:
                request.tick_types |= wanted
                return
        req_id = next(self._ids)
        self._requests[req_id] = _Request("mkt", contract, set(wanted), parse.MarketDataAssembler())
        self._conn.request_mkt_data(req_id, self._resolved[contract.con_id])
        log.info("IB %s %s: reqMktData (%s)", contract.symbol, sorted(t.value for t in wanted), why)

    def _resubscribe(self, con_id: int | None = None) -> None:
        """Cancel every subscription (of one contract, or all) and request it again (new request ids)."""
        if self._conn is None:
            return
        for req_id, request in list(self._requests.items()):
            if request.method != "details" and con_id in (None, request.contract.con_id):
                self._conn.cancel(req_id, request.method)
                del self._requests[req_id]
        self.refused = {c: why for c, why in self.refused.items() if "contract" in why or con_id not in (None, c)}
        for contract in self.contracts:
            if contract.con_id in self._resolved and con_id in (None, contract.con_id):
                self._subscribe(contract)

    def _count(self, method: str) -> int:
        return sum(1 for r in self._requests.values() if r.method == method)

    def _refuse(self, contract: Contract, what: TickType | str, why: str) -> None:
        name = what.value if isinstance(what, TickType) else what
        self.refused.setdefault(contract.con_id, {})[name] = why
        log.warning("IB %s (%d) %s not subscribed: %s", contract.symbol, contract.con_id, name, why)

    # --- gaps ----------------------------------------------------------------------------------------------------

    def _open_gap(self, reason: str) -> None:
        if not any(g.end_ns is None for g in self.gaps):
            self.gaps.append(Gap(self.clock.now_ns(), reason))

    def _close_gaps(self) -> None:
        now = self.clock.now_ns()
        for gap in self.gaps:
            if gap.end_ns is None:
                gap.end_ns = now

    # --- events (event loop) -------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._events.get(), FLUSH_AFTER_SECONDS)
            except TimeoutError:
                await self._publish(self._flush_assemblers())
                continue
            events = [first]
            while not self._events.empty():
                events.append(self._events.get_nowait())
            batch: StreamBatch = {}
            for event in events:
                try:
                    self._handle(event, batch)
                except Exception:
                    log.exception("IB event %s%r could not be handled", event.name, event.args)
            await self._publish(batch)

    def _handle(self, event: IbEvent, batch: StreamBatch) -> None:
        if event.connection is not self._conn:
            return  # a late callback of an earlier connection
        if event.name in DATA_EVENTS and (request := self._requests.get(event.args[0])) is not None:
            self._last_data[request.contract.con_id] = event.recv_ns
            self._stale.discard(request.contract.con_id)
        handler = _EVENTS.get(event.name)
        if handler is not None:
            handler(self, event, batch)

    async def _publish(self, batch: StreamBatch) -> None:
        assert self._app is not None
        for (con_id, tick_type, source), ticks in batch.items():
            try:
                await self._app.publish(con_id, tick_type, ticks, source)
            except Exception:
                log.exception("IB ticks for %d %s could not be stored (%d ticks)", con_id, tick_type, len(ticks))

    def _flush_assemblers(self) -> StreamBatch:
        batch: StreamBatch = {}
        now = self.clock.now_ns()
        for request in self._requests.values():
            if request.assembler is not None:
                self._add_pairs(batch, request, request.assembler.flush(now))
        return batch

    @staticmethod
    def _add(batch: StreamBatch, request: _Request, tick_type: TickType, tick: dict[str, Any]) -> None:
        if tick_type in request.tick_types:
            batch.setdefault((request.contract.con_id, tick_type, tick["source"]), []).append(tick)

    def _add_pairs(self, batch: StreamBatch, request: _Request, pairs: list[tuple[TickType, dict[str, Any]]]) -> None:
        for tick_type, tick in pairs:
            self._add(batch, request, tick_type, tick)

    # One handler per callback; `args` are ibapi's, in its order.

    def _on_closed(self, event: IbEvent, batch: StreamBatch) -> None:
        self._closed.set()

    def _on_next_valid_id(self, event: IbEvent, batch: StreamBatch) -> None:
        self._next_id.set()

    def _on_contract_details(self, event: IbEvent, batch: StreamBatch) -> None:
        request = self._requests.get(event.args[0])
        if request is not None and request.resolved is not None and not request.resolved.done():
            request.resolved.set_result(event.args[1])

    def _on_contract_details_end(self, event: IbEvent, batch: StreamBatch) -> None:
        request = self._requests.get(event.args[0])
        if request is not None and request.resolved is not None and not request.resolved.done():
            request.resolved.set_result(None)
            self._refuse(request.contract, "contract", "reqContractDetails returned no contract")

    def _on_tbt_bid_ask(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self._requests.get(req_id)) is not None:
            self._add(batch, request, TickType.BID_ASK, parse.bid_ask_from_tbt(*args))

    def _on_tbt_trade(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self._requests.get(req_id)) is not None:
            self._add(batch, request, *parse.trade_from_tbt(*args))

    def _on_tbt_mid_point(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, *args = event.args
        if (request := self._requests.get(req_id)) is not None:
            self._add(batch, request, TickType.MID_POINT, parse.midpoint_from_tbt(*args))

    def _on_tick_price(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, tick_type, price = event.args
        request = self._requests.get(req_id)
        if request is not None and request.assembler is not None:
            self._add_pairs(batch, request, request.assembler.on_price(tick_type, price, event.recv_ns))

    def _on_tick_size(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, tick_type, size = event.args
        request = self._requests.get(req_id)
        if request is not None and request.assembler is not None:
            self._add_pairs(batch, request, request.assembler.on_size(tick_type, size, event.recv_ns))

    def _on_depth(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, position, operation, side, price, size, market_maker = event.args
        if (request := self._requests.get(req_id)) is not None:
            tick = parse.depth_from_mkt_depth(position, operation, side, price, size, event.recv_ns, market_maker)
            self._add(batch, request, TickType.DEPTH, tick)

    def _on_error(self, event: IbEvent, batch: StreamBatch) -> None:
        req_id, code, message = event.args
        rule = classify(code, message)
        request = self._requests.get(req_id) if req_id >= 0 else None
        context = f"{request.method} {request.contract.symbol}" if request is not None else ""
        log.log(rule.severity.level, format_error(code, message, req_id, context))
        handler = _ACTIONS.get(rule.action)
        if handler is not None:
            handler(self, code, message, request, req_id)

    # Error actions: (code, message, the request it concerns or None, reqId).

    def _gap(self, code: int, message: str, request: _Request | None, req_id: int) -> None:
        self._open_gap(f"IB {code}: {classify(code, message).description}")

    def _restored(self, code: int, message: str, request: _Request | None, req_id: int) -> None:
        self._close_gaps()
        self._resubscribe()

    def _refused(self, code: int, message: str, request: _Request | None, req_id: int) -> None:
        if request is None:
            return
        if request.method == "details":
            if request.resolved is not None and not request.resolved.done():
                request.resolved.set_result(None)
            self._refuse(request.contract, "contract", f"IB {code}: {message}")
            return
        del self._requests[req_id]
        if self._conn is not None:
            self._conn.cancel(req_id, request.method)
        if request.method == "tbt":
            self._fall_back(request.contract, request.tick_types, f"tick-by-tick refused: IB {code}")
        else:
            for tick_type in request.tick_types:
                self._refuse(request.contract, tick_type, f"{request.method} refused: IB {code}: {message}")

    def _disconnected(self, code: int, message: str, request: _Request | None, req_id: int) -> None:
        if self._conn is not None:
            self._conn.close()


_EVENTS: Final[dict[str, Callable[[IbSource, IbEvent, StreamBatch], None]]] = {
    "closed": IbSource._on_closed,
    "next_valid_id": IbSource._on_next_valid_id,
    "contract_details": IbSource._on_contract_details,
    "contract_details_end": IbSource._on_contract_details_end,
    "tbt_bid_ask": IbSource._on_tbt_bid_ask,
    "tbt_trade": IbSource._on_tbt_trade,
    "tbt_mid_point": IbSource._on_tbt_mid_point,
    "tick_price": IbSource._on_tick_price,
    "tick_size": IbSource._on_tick_size,
    "depth": IbSource._on_depth,
    "error": IbSource._on_error,
}
# What each ib_errors Action does; actions not listed (farm up/down, delayed data, depth reset 317, pacing,
# historical) are only logged by _on_error.
_ACTIONS: Final[dict[Action, Callable[[IbSource, int, str, _Request | None, int], None]]] = {
    Action.MARK_GAP: IbSource._gap,
    Action.RESUBSCRIBE: IbSource._restored,
    Action.SUBSCRIPTION_REFUSED: IbSource._refused,
    Action.SUBSCRIPTION_LOST: IbSource._refused,
    Action.CONTRACT_UNKNOWN: IbSource._refused,
    Action.DISCONNECTED: IbSource._disconnected,
}
