"""A fake TWS for tests: a loopback server that the real ibapi 9.81 EClient connects to, with scriptable scenarios.

    with FakeTWS([AAPL]) as tws:                       # listens on 127.0.0.1:<tws.port>
        app.connect("127.0.0.1", tws.port, clientId=7)  # the real EClient
        tws.wait_connected()
        sub = tws.wait_subscribed(265598, "reqTickByTickData", "BidAsk")
        tws.emit_tick_by_tick(265598, "BidAsk", time=1704205800, bid=185.5, ask=185.52, bid_size=300, ask_size=200)
        tws.connectivity_lost(); tws.connectivity_restored()          # 1100 then 1102, socket kept
        tws.drop_connections()                                        # disconnect mid-stream
        tws.sent                                                      # every tick-by-tick tick written to a client

A `ScriptedMarket` (fake_tws_scenarios) trades behind it: every tick it makes is IB's history at once and goes
live to whoever is subscribed, so its log is the oracle of what the broker had. `history_hook` adds frames to a
reqHistoricalTicks answer (a live tick in the same write), `history_delay` holds the answer back (in flight while
the connection drops).

Every client frame is decoded and recorded (`requests_of`, `wait_for_request`); subscriptions are tracked per
connection so emitted data reaches whatever reqId the client chose. Threads: one listener, one reader per client,
one housekeeping thread; all sockets are blocking and woken by shutdown() on stop.

The 4096-byte pitfall (wire doc §3): ibapi's reader drops its whole buffer when a recv returns exactly 4096 bytes
and nothing follows for 1 s. After any quiet 0.1 s that follows >= 4096 bytes of output the server therefore
sends a 9-byte frame with message id 0, which the client's decoder ignores (no callback). `nudge=False` turns it off.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tests.support import fake_tws_messages as wire
from tests.support.fake_tws_connection import ClientConnection, Request
from tests.support.fake_tws_handlers import RequestHandlers, Subscription
from tests.support.fake_tws_messages import (
    AAPL,
    ES,
    TICK_BY_TICK_KINDS,
    BidAskTick,
    DepthUpdate,
    FakeContract,
    LastTick,
    MidPointTick,
    MktDataTick,
    Tick,
)
from tests.support.fake_tws_scenarios import FailureScenarios, HistoryHook, Refusal, SentTick

__all__ = [
    "AAPL",
    "ES",
    "BidAskTick",
    "ClientConnection",
    "DepthUpdate",
    "FakeContract",
    "FakeTWS",
    "LastTick",
    "MidPointTick",
    "MktDataTick",
    "Request",
    "SentTick",
    "Subscription",
]

AcceptMode = Literal["normal", "close", "silent"]
STARTUP_MESSAGES = (2104, 2106, 2158)  # the farm-OK notices a real TWS sends after startApi
_NUDGE = wire.frame(wire.NUDGE_ID, 0)


class FakeTWS(FailureScenarios):
    """Loopback TWS double speaking the ibapi 9.81 wire protocol; see the module docstring for an example."""

    def __init__(
        self,
        contracts: Iterable[FakeContract] = (),
        *,
        server_version: int = wire.MAX_SERVER_VERSION,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Sequence[str] = ("DU111111",),
        next_valid_id: int = 1,
        startup_messages: Sequence[int] = STARTUP_MESSAGES,
        time_zone: str = "UTC",
        clock: Callable[[], float] = time.time,
        tick_by_tick_limit: int | None = None,
        depth_limit: int | None = None,
        historical_pacing: tuple[int, float] | None = None,
        historical_chunk: int | None = None,
        nudge: bool = True,
    ) -> None:
        if not wire.MIN_SERVER_VERSION <= server_version <= wire.MAX_SERVER_VERSION:
            raise ValueError(f"server_version {server_version} outside {wire.MIN_SERVER_VERSION}..157")
        self.server_version = server_version
        self.host = host
        self.port = port
        self.accounts = tuple(accounts)
        self.next_valid_id = next_valid_id
        self.startup_messages = tuple(startup_messages)
        self.time_zone = time_zone
        self.clock = clock
        self.tick_by_tick_limit = tick_by_tick_limit  # simultaneous tick-by-tick per connection, else 10190
        self.depth_limit = depth_limit  # simultaneous reqMktDepth per connection, else 309
        self.historical_pacing = historical_pacing  # (requests, seconds): more in the window get 162
        self.historical_chunk = historical_chunk  # ticks per historical message (done only on the last)
        self.nudge = nudge
        self.contracts: dict[int, FakeContract] = {c.con_id: c for c in contracts}
        self.historical: dict[tuple[int, str], list[Tick]] = {}  # guarded by _cond (the market adds from its thread)
        self.sent: list[SentTick] = []  # tick-by-tick ticks written to a client, in order
        self.history_hook: HistoryHook | None = None
        self.history_delay = 0.0  # seconds a reqHistoricalTicks answer takes (sent from a timer thread)
        self.protocol_errors: list[str] = []
        self.dropped_messages = 0  # data withheld by stall() / connectivity_lost()
        self.rejected_connections = 0
        self._cond = threading.Condition(threading.RLock())
        self._requests: list[Request] = []
        self._clients: list[ClientConnection] = []
        self._refusals: list[Refusal] = []
        self._stalled = False
        self._connectivity_lost = False
        self._accept_mode: AcceptMode = "normal"
        self._stopping = threading.Event()
        self._listener: tuple[socket.socket, threading.Thread, threading.Event] | None = None
        self._housekeeper: threading.Thread | None = None
        self._handlers = RequestHandlers(self)

    # --- life cycle ----------------------------------------------------------------------------------------------

    def start(self) -> FakeTWS:
        self._listen()
        self._housekeeper = threading.Thread(target=self._housekeep, name="fake-tws-housekeeping", daemon=True)
        self._housekeeper.start()
        return self

    def stop(self) -> None:
        """Close the listener and every client connection; join all threads."""
        self._stopping.set()
        self.go_offline()
        for client in self.clients:
            if client.thread is not None:
                client.thread.join(timeout=2)
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=2)

    def __enter__(self) -> FakeTWS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_offline(self) -> int:
        """Stop listening (new connects are refused: client error 502) and drop every connection."""
        if self._listener is not None:
            sock, thread, stop = self._listener
            self._listener = None
            stop.set()
            thread.join(timeout=2)
            sock.close()
        return self.drop_connections()

    def go_online(self) -> None:
        """Listen again on the same port."""
        if self._listener is None and not self._stopping.is_set():
            self._listen()

    def set_accept_mode(self, mode: AcceptMode) -> None:
        """normal; close (accept then close at once: connect() returns unconnected); silent (never answer)."""
        self._accept_mode = mode

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        stop = threading.Event()
        thread = threading.Thread(target=self._accept_loop, args=(sock, stop), name="fake-tws-listener", daemon=True)
        self._listener = (sock, thread, stop)
        thread.start()

    def _accept_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._accept_mode == "close":
                conn.close()
                with self._cond:
                    self.rejected_connections += 1
                    self._cond.notify_all()
                continue
            with self._cond:
                client = ClientConnection(conn, len(self._clients) + 1, silent=self._accept_mode == "silent")
                self._clients.append(client)
            client.start(self)

    def _housekeep(self) -> None:
        while not self._stopping.wait(0.05):
            if self.nudge:
                for client in self.clients:
                    if client.ready and client.needs_nudge(quiet=0.1):
                        client.send(_NUDGE, nudge=True)

    # --- reading clients (ConnectionOwner) -----------------------------------------------------------------------

    def on_handshake(self, client: ClientConnection, text: str) -> None:
        versions, _, options = text.partition(" ")
        try:
            low, high = (int(v) for v in versions.removeprefix("v").split(".."))
        except ValueError:
            self.on_protocol_error(client, f"bad version range {text!r}")
            client.close()
            return
        self._record(client, "handshake", -1, {"minVersion": low, "maxVersion": high, "options": options}, (text,))
        client.server_version = min(self.server_version, high)
        if not client.silent:
            now = datetime.fromtimestamp(self.clock(), ZoneInfo(self.time_zone))
            client.send(wire.version_reply(client.server_version, now.strftime("%Y%m%d %H:%M:%S %Z")))

    def on_frame(self, client: ClientConnection, fields: tuple[str, ...]) -> None:
        try:
            name, msg_id, decoded = wire.decode_request(fields)
        except wire.RequestDecodeError as e:
            self.on_protocol_error(client, f"{e}; fields {list(fields)!r}")
            return
        request = self._record(client, name, msg_id, decoded, fields)
        if client.silent:
            return
        if not client.ready and name != "startApi":
            self.on_protocol_error(client, f"{name} before startApi")
        self._handlers.handle(client, request)

    def on_protocol_error(self, client: ClientConnection, text: str) -> None:
        with self._cond:
            self.protocol_errors.append(f"connection {client.index}: {text}")
            self._cond.notify_all()

    def on_closed(self, client: ClientConnection) -> None:
        with self._cond:
            self._cond.notify_all()

    def _record(
        self, client: ClientConnection, name: str, msg_id: int, fields: dict[str, Any], raw: tuple[str, ...]
    ) -> Request:
        request = Request(name, msg_id, fields, raw, client.index, time.monotonic(), self.clock())
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
        return request

    # --- what the client asked for -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._cond:
            return list(self._requests)

    def requests_of(self, name: str, **fields: Any) -> list[Request]:
        """Recorded requests named `name` (ibapi method name) whose fields equal `fields`."""
        return [r for r in self.requests if r.matches(name, **fields)]

    @property
    def clients(self) -> list[ClientConnection]:
        with self._cond:
            return list(self._clients)

    @property
    def live_clients(self) -> list[ClientConnection]:
        return [c for c in self.clients if c.alive and c.ready]

    def subscriptions(
        self, con_id: int | None = None, request: str | None = None, tick_type: str | None = None
    ) -> list[Subscription]:
        """Active subscriptions on live connections, filtered (request: reqMktData, reqTickByTickData, reqMktDepth)."""
        return [s for _, s in self.subscribers(con_id, request, tick_type)]

    def subscribers(
        self, con_id: int | None = None, request: str | None = None, tick_type: str | None = None
    ) -> list[tuple[ClientConnection, Subscription]]:
        """(connection, subscription) pairs of the ready connections, filtered like subscriptions()."""
        with self._cond:
            return [
                (c, s)
                for c in self._clients
                if c.alive and c.ready
                for s in c.subscriptions.values()
                if (con_id is None or s.con_id == con_id)
                and (request is None or s.request == request)
                and (tick_type is None or s.tick_type == tick_type)
            ]

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Return predicate()'s first truthy value, or raise TimeoutError naming `what`."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                seen = [r.name for r in self._requests][-20:]
                raise TimeoutError(f"fake TWS: no {what} within {timeout}s (last requests: {seen})")
            return predicate()

    def wait_connected(self, timeout: float = 5.0, count: int = 1) -> ClientConnection:
        """Wait until `count` clients in total have completed startApi; return the count-th."""
        ready = lambda: [c for c in self._clients if c.ready]  # noqa: E731
        return self.wait_until(lambda: len(ready()) >= count and ready()[count - 1], timeout, f"connection #{count}")

    def wait_disconnected(self, timeout: float = 5.0) -> None:
        self.wait_until(lambda: not any(c.alive for c in self._clients), timeout, "disconnection")

    def wait_for_request(self, name: str, timeout: float = 5.0, count: int = 1, **fields: Any) -> Request:
        """Wait until `count` requests named `name` with `fields` were received; return the count-th."""
        found = lambda: [r for r in self._requests if r.matches(name, **fields)]  # noqa: E731
        return self.wait_until(lambda: len(found()) >= count and found()[count - 1], timeout, f"{name} {fields}")

    def wait_subscribed(
        self, con_id: int, request: str, tick_type: str | None = None, timeout: float = 5.0
    ) -> Subscription:
        """Wait for an active subscription (the newest if several) and return it (its req_id is the client's)."""
        subs = lambda: self.subscriptions(con_id, request, tick_type)  # noqa: E731
        return self.wait_until(lambda: subs() and subs()[-1], timeout, f"{request} {tick_type or ''} for {con_id}")

    # --- data --------------------------------------------------------------------------------------------------

    def add_contract(self, contract: FakeContract) -> None:
        self.contracts[contract.con_id] = contract

    def add_historical_ticks(self, con_id: int, what_to_show: str, ticks: Iterable[Tick]) -> None:
        """Canned reqHistoricalTicks answers (BID_ASK: BidAskTick, TRADES: LastTick, MIDPOINT: MidPointTick)."""
        kind = wire.HISTORICAL_KINDS[what_to_show]
        ticks = list(ticks)
        if bad := [t for t in ticks if not isinstance(t, kind)]:
            raise TypeError(f"{what_to_show} takes {kind.__name__}, got {type(bad[0]).__name__}")
        with self._cond:
            stored = self.historical.setdefault((con_id, what_to_show), [])
            stored.extend(ticks)
            stored.sort(key=lambda t: t.time)

    def historical_ticks(self, con_id: int, what_to_show: str) -> list[Tick]:
        """A copy of IB's history of one contract and whatToShow, in time order."""
        with self._cond:
            return list(self.historical.get((con_id, what_to_show), []))

    def emit_tick_by_tick(self, con_id: int, kind: str, *, require_subscriber: bool = True, **values: Any) -> int:
        """Send one tick-by-tick tick to every subscription of (con_id, kind); return messages sent.

        BidAsk: time, bid, ask, bid_size, ask_size[, bid_past_low, ask_past_high]; Last/AllLast: time, price, size
        [, exchange, special_conditions, past_limit, unreported]; MidPoint: time, mid_point.
        """
        record = {"BidAsk": BidAskTick, "Last": LastTick, "AllLast": LastTick, "MidPoint": MidPointTick}[kind]
        return self.emit_ticks(con_id, kind, [record(**values)], require_subscriber=require_subscriber)

    def emit_ticks(self, con_id: int, kind: str, ticks: Iterable[Tick], *, require_subscriber: bool = True) -> int:
        """Send tick-by-tick ticks of one kind (BidAsk, Last, AllLast, MidPoint) in one write per subscriber."""
        if kind not in TICK_BY_TICK_KINDS:
            raise ValueError(f"tick-by-tick kind {kind!r} is not one of {sorted(TICK_BY_TICK_KINDS)}")
        ticks = list(ticks)

        def sent(client: ClientConnection, sub: Subscription) -> None:
            self.sent.extend(SentTick(con_id, kind, t, client.index, sub.req_id) for t in ticks)

        return self._emit(
            con_id, "reqTickByTickData", kind, lambda _, sub: [wire.tick_by_tick(sub.req_id, kind, t) for t in ticks],
            require_subscriber, sent,
        )  # fmt: skip

    def emit_mkt_data(
        self,
        con_id: int,
        tick_type: int,
        *,
        price: float | None = None,
        size: int | None = None,
        text: str | None = None,
        attrib_mask: int = 0,
        require_subscriber: bool = True,
    ) -> int:
        """Send a reqMktData tick: TICK_PRICE if price is given (size rides along), else TICK_SIZE or TICK_STRING."""
        tick = MktDataTick(tick_type, price, size, text, attrib_mask)
        return self.emit_mkt_data_ticks(con_id, [tick], require_subscriber=require_subscriber)

    def emit_mkt_data_ticks(self, con_id: int, ticks: Iterable[MktDataTick], *, require_subscriber: bool = True) -> int:
        """Send reqMktData ticks (e.g. a replayed sample) in one write per subscriber."""
        ticks = list(ticks)
        return self._emit(
            con_id, "reqMktData", None,
            lambda client, sub: [wire.mkt_data(sub.req_id, t, client.server_version) for t in ticks], require_subscriber,
        )  # fmt: skip

    def emit_depth(
        self,
        con_id: int,
        position: int,
        operation: int,
        side: int,
        price: float,
        size: int,
        market_maker: str | None = None,
        *,
        require_subscriber: bool = True,
    ) -> int:
        """Send updateMktDepth (market_maker None) or updateMktDepthL2 to every reqMktDepth of con_id."""
        update = DepthUpdate(position, operation, side, price, size, market_maker)
        return self.emit_depth_updates(con_id, [update], require_subscriber=require_subscriber)

    def emit_depth_updates(
        self, con_id: int, updates: Iterable[DepthUpdate], *, require_subscriber: bool = True
    ) -> int:
        """Send depth updates (e.g. a replayed sample) in one write per subscriber."""
        updates = list(updates)
        return self._emit(
            con_id, "reqMktDepth", None, lambda _, sub: [wire.depth(sub.req_id, u, sub.is_smart_depth) for u in updates],
            require_subscriber,
        )  # fmt: skip

    def _emit(
        self,
        con_id: int,
        request: str,
        tick_type: str | None,
        encode: Callable[[ClientConnection, Subscription], list[bytes]],
        require_subscriber: bool,
        on_sent: Callable[[ClientConnection, Subscription], None] | None = None,
    ) -> int:
        targets = self.subscribers(con_id, request, tick_type)
        blocked = self.data_blocked
        if not targets and require_subscriber and not blocked:
            raise LookupError(f"fake TWS: no active {request} {tick_type or ''} subscription for conId {con_id}")
        sent = 0
        for client, sub in targets:
            frames = encode(client, sub)
            if blocked:
                self.dropped_messages += len(frames)
            elif client.send(b"".join(frames)):
                sent += len(frames)
                if on_sent is not None:
                    on_sent(client, sub)
        return sent

    # --- subscription book-keeping (used by the request handlers) -----------------------------------------------

    def subscribe(self, client: ClientConnection, sub: Subscription) -> None:
        with self._cond:
            client.subscriptions[sub.req_id] = sub
            self._cond.notify_all()

    def unsubscribe(self, client: ClientConnection, req_id: int) -> None:
        with self._cond:
            client.subscriptions.pop(req_id, None)
            self._cond.notify_all()
