"""How the fake TWS answers each client request: handshake follow-up, contract details, subscriptions, history."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.support import fake_tws_messages as wire
from tests.support.fake_tws_messages import FakeContract

if TYPE_CHECKING:
    from tests.support.fake_tws import FakeTWS
    from tests.support.fake_tws_connection import ClientConnection, Request


@dataclass(frozen=True)
class Subscription:
    """A live market-data request of one connection: reqMktData, reqTickByTickData or reqMktDepth."""

    connection: int
    request: str
    req_id: int
    con_id: int
    tick_type: str | None = None  # the tick-by-tick kind
    is_smart_depth: bool = False


_CANCELS = {"cancelMktData": "reqMktData", "cancelTickByTickData": "reqTickByTickData", "cancelMktDepth": "reqMktDepth"}


class RequestHandlers:
    """Dispatch one recorded request to its answer; all state lives on the FakeTWS."""

    def __init__(self, server: FakeTWS) -> None:
        self.server = server
        self._historical_times: deque[float] = deque()

    def handle(self, client: ClientConnection, request: Request) -> None:
        if request.name in _CANCELS:
            self._cancel(client, request)
            return
        handler = getattr(self, f"_on_{request.name}", None)
        if handler is not None:
            handler(client, request)

    def error(self, client: ClientConnection, req_id: int, code: int, message: str | None = None) -> None:
        text = message if message is not None else wire.ERROR_TEXT.get(code, f"error {code}")
        client.send(wire.error(req_id, code, text, client.server_version))

    # --- session -------------------------------------------------------------------------------------------------

    def _on_startApi(self, client: ClientConnection, request: Request) -> None:
        s = self.server
        frames = [wire.next_valid_id(s.next_valid_id), wire.managed_accounts(s.accounts, client.server_version)]
        text = wire.ERROR_TEXT
        frames += [wire.error(-1, code, text[code], client.server_version) for code in s.startup_messages]
        client.send(b"".join(frames))
        with s._cond:
            client.client_id = request["clientId"]
            client.ready = True
            s._cond.notify_all()

    def _on_reqIds(self, client: ClientConnection, request: Request) -> None:
        client.send(wire.next_valid_id(self.server.next_valid_id))

    def _on_reqCurrentTime(self, client: ClientConnection, request: Request) -> None:
        client.send(wire.current_time(int(self.server.clock())))

    def _on_reqManagedAccts(self, client: ClientConnection, request: Request) -> None:
        client.send(wire.managed_accounts(self.server.accounts, client.server_version))

    # --- contracts -----------------------------------------------------------------------------------------------

    def _contract(self, request: Request) -> FakeContract | None:
        contracts = self.server.contracts
        if request["conId"]:
            return contracts.get(request["conId"])
        for c in contracts.values():  # by symbol, as IB resolves a contract given without conId
            if (c.symbol, c.sec_type) == (request["symbol"], request["secType"]) and request["currency"] in (
                "",
                c.currency,
            ):
                return c
        return None

    def _refused_or_unknown(
        self, client: ClientConnection, request: Request, paced: bool = False
    ) -> FakeContract | None:
        """The contract to serve, or None after sending a scripted refusal, 162 (paced) or 200 (unknown)."""
        rule = self.server.take_refusal(request)
        if rule is not None:
            self.error(client, request["reqId"], rule.code, rule.message)
            if not rule.then_serve:
                return None
        if paced and self._paced_out():
            self.error(client, request["reqId"], 162)
            return None
        contract = self._contract(request)
        if contract is None:
            self.error(client, request["reqId"], 200)
        return contract

    def _on_reqContractDetails(self, client: ClientConnection, request: Request) -> None:
        contract = self._refused_or_unknown(client, request)
        if contract is not None:
            req_id = request["reqId"]
            client.send(wire.contract_data(req_id, contract, client.server_version) + wire.contract_data_end(req_id))

    # --- subscriptions -------------------------------------------------------------------------------------------

    def _admit(self, client: ClientConnection, request: Request, limit: int | None, limit_code: int) -> bool:
        req_id = request["reqId"]
        if req_id in client.subscriptions:
            self.error(client, req_id, 322)
            return False
        with self.server._cond:
            active = [s for s in client.subscriptions.values() if s.request == request.name]
        if limit is not None and len(active) >= limit:
            self.error(client, req_id, limit_code)
            return False
        return True

    def _on_reqMktData(self, client: ClientConnection, request: Request) -> None:
        contract = self._refused_or_unknown(client, request)
        if contract is None or not self._admit(client, request, None, 0):
            return
        req_id = request["reqId"]
        params = wire.tick_req_params(req_id, contract.min_tick, contract.bbo_exchange, contract.snapshot_permissions)
        if request["snapshot"] or request["regulatorySnapshot"]:
            client.send(params + wire.tick_snapshot_end(req_id))
            return
        client.send(params)
        self.server.subscribe(client, Subscription(client.index, request.name, req_id, contract.con_id))

    def _on_reqTickByTickData(self, client: ClientConnection, request: Request) -> None:
        kind = request["tickType"]
        if kind not in wire.TICK_BY_TICK_KINDS:
            self.error(client, request["reqId"], 321, wire.ERROR_TEXT[321].format(reason=f"Invalid tick type {kind}"))
            return
        contract = self._refused_or_unknown(client, request)
        if contract is None or not self._admit(client, request, self.server.tick_by_tick_limit, 10190):
            return
        sub = Subscription(client.index, request.name, request["reqId"], contract.con_id, tick_type=kind)
        self.server.subscribe(client, sub)

    def _on_reqMktDepth(self, client: ClientConnection, request: Request) -> None:
        contract = self._refused_or_unknown(client, request)
        if contract is None or not self._admit(client, request, self.server.depth_limit, 309):
            return
        smart = request["isSmartDepth"]
        sub = Subscription(client.index, request.name, request["reqId"], contract.con_id, is_smart_depth=smart)
        self.server.subscribe(client, sub)

    def _cancel(self, client: ClientConnection, request: Request) -> None:
        sub = client.subscriptions.get(request["reqId"])
        if sub is not None and sub.request == _CANCELS[request.name]:
            self.server.unsubscribe(client, sub.req_id)

    # --- history -------------------------------------------------------------------------------------------------

    def _on_reqHistoricalTicks(self, client: ClientConnection, request: Request) -> None:
        s, req_id = self.server, request["reqId"]
        contract = self._refused_or_unknown(client, request, paced=True)
        if contract is None:
            return
        what = request["whatToShow"]
        if what not in wire.HISTORICAL_KINDS:
            self._invalid(client, req_id, f"whatToShow {what!r} is not BID_ASK, TRADES or MIDPOINT")
            return
        try:
            start = wire.parse_ib_datetime(request["startDateTime"], s.time_zone)
            end = wire.parse_ib_datetime(request["endDateTime"], s.time_zone)
        except wire.RequestDecodeError as e:
            self._invalid(client, req_id, str(e))
            return
        if (start is None) == (end is None):
            self._invalid(client, req_id, "exactly one of startDateTime and endDateTime must be set")
            return
        if request["numberOfTicks"] <= 0:
            self._invalid(client, req_id, f"numberOfTicks {request['numberOfTicks']} must be positive")
            return
        n = min(request["numberOfTicks"], wire.HISTORICAL_TICKS_MAX)
        before, after = s.history_hook(client, request) if s.history_hook is not None else ([], [])
        ticks = s.historical_ticks(contract.con_id, what)
        if start is not None:
            ticks = [t for t in ticks if t.time >= start][:n]
        else:
            ticks = [t for t in ticks if end is not None and t.time <= end][-n:]
        chunk = s.historical_chunk or max(len(ticks), 1)
        parts = [ticks[i : i + chunk] for i in range(0, len(ticks), chunk)] or [[]]
        frames = [wire.historical_ticks(req_id, what, part, i == len(parts) - 1) for i, part in enumerate(parts)]
        answer = b"".join([*before, *frames, *after])
        if s.history_delay > 0:  # in flight: the connection may close before it is written
            threading.Timer(s.history_delay, client.send, args=(answer,)).start()
        else:
            client.send(answer)

    def _paced_out(self) -> bool:
        """Automatic pacing: more than N historical requests within the window get error 162."""
        if self.server.historical_pacing is None:
            return False
        limit, window = self.server.historical_pacing
        now = time.monotonic()
        while self._historical_times and now - self._historical_times[0] > window:
            self._historical_times.popleft()
        if len(self._historical_times) >= limit:
            return True
        self._historical_times.append(now)
        return False

    def _invalid(self, client: ClientConnection, req_id: int, reason: str) -> None:
        self.error(client, req_id, 321, wire.ERROR_TEXT[321].format(reason=reason))
