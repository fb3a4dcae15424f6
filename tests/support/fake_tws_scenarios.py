"""Failure scenarios of the fake TWS: errors, refused requests, pacing, dropped sockets, 1100/1102, stalls."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tests.support.fake_tws_connection import ClientConnection, Request
from tests.support.fake_tws_handlers import RequestHandlers, Subscription


@dataclass
class Refusal:
    """A scripted error answer to matching requests (see FakeTWS.refuse)."""

    request: str
    code: int
    con_id: int | None
    tick_type: str | None  # tick-by-tick kind, or whatToShow for reqHistoricalTicks
    message: str | None
    remaining: int | None  # None: every matching request
    then_serve: bool


class FailureScenarios:
    """Mixin of FakeTWS: everything that makes the broker misbehave on purpose."""

    _cond: threading.Condition
    _handlers: RequestHandlers
    _refusals: list[Refusal]
    _stalled: bool
    _connectivity_lost: bool

    @property
    def clients(self) -> list[ClientConnection]:
        raise NotImplementedError

    @property
    def live_clients(self) -> list[ClientConnection]:
        raise NotImplementedError

    def subscriptions(
        self, con_id: int | None = None, request: str | None = None, tick_type: str | None = None
    ) -> list[Subscription]:
        raise NotImplementedError

    def subscribers(
        self, con_id: int | None = None, request: str | None = None, tick_type: str | None = None
    ) -> list[tuple[ClientConnection, Subscription]]:
        raise NotImplementedError

    def unsubscribe(self, client: ClientConnection, req_id: int) -> None:
        raise NotImplementedError

    @property
    def data_blocked(self) -> bool:
        """True while stall() or connectivity_lost() withholds market data."""
        return self._stalled or self._connectivity_lost

    def send_error(self, code: int, req_id: int = -1, message: str | None = None) -> None:
        """Send error(req_id, code, message) to every live client (message defaults to IB's text for code)."""
        for client in self.live_clients:
            self._handlers.error(client, req_id, code, message)

    def emit_error(
        self,
        con_id: int,
        request: str,
        code: int,
        message: str | None = None,
        tick_type: str | None = None,
        cancel: bool = False,
    ) -> list[int]:
        """Send error(reqId, code) for each matching subscription (e.g. 317 depth reset); cancel=True ends them."""
        req_ids = []
        for client, sub in self.subscribers(con_id, request, tick_type):
            self._handlers.error(client, sub.req_id, code, message)
            req_ids.append(sub.req_id)
            if cancel:
                self.unsubscribe(client, sub.req_id)
        return req_ids

    def competing_session(self, con_id: int | None = None) -> list[int]:
        """Error 10189 for each tick-by-tick subscription (of con_id, or all), which then stops; return reqIds."""
        con_ids = sorted({s.con_id for s in self.subscriptions(con_id, "reqTickByTickData")})
        return [rid for cid in con_ids for rid in self.emit_error(cid, "reqTickByTickData", 10189, cancel=True)]

    def refuse(
        self,
        request: str,
        code: int,
        *,
        con_id: int | None = None,
        tick_type: str | None = None,
        message: str | None = None,
        times: int | None = 1,
        then_serve: bool = False,
    ) -> None:
        """Answer the next `times` (None: all) matching requests with error(reqId, code) instead of serving them.

        E.g. refuse("reqTickByTickData", 10189), refuse("reqMktData", 354), refuse("reqHistoricalTicks", 162);
        `tick_type` matches the tick-by-tick kind or whatToShow; then_serve=True sends the error as a warning and
        serves the request anyway (10167 delayed data).
        """
        with self._cond:
            self._refusals.append(Refusal(request, code, con_id, tick_type, message, times, then_serve))

    def pacing_violation(self, times: int = 1, code: int = 162) -> None:
        """The next `times` reqHistoricalTicks get error 162 (pacing violation) and no data."""
        self.refuse("reqHistoricalTicks", code, times=times)

    def take_refusal(self, request: Request) -> Refusal | None:
        """The first refusal rule matching `request`, consumed once (used by the request handlers)."""
        with self._cond:
            for rule in self._refusals:
                if rule.request != request.name or rule.remaining == 0 or rule.con_id not in (None, request.con_id):
                    continue
                if rule.tick_type not in (None, request.fields.get("tickType"), request.fields.get("whatToShow")):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule
        return None

    def drop_connections(self) -> int:
        """Close every client socket at once (the client sees connectionClosed); return how many."""
        alive = [c for c in self.clients if c.alive]
        for client in alive:
            client.close()
        with self._cond:
            self._cond.notify_all()
        return len(alive)

    def stall(self) -> None:
        """Keep connections and answer requests, but withhold all market data until resume()."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    def connectivity_lost(self) -> None:
        """Send error 1100 to every client (socket kept) and withhold market data until connectivity_restored()."""
        self._connectivity_lost = True
        self.send_error(1100)

    def connectivity_restored(self, data_lost: bool = False) -> None:
        """Send 1102 (data maintained) or 1101 (data lost: every subscription ends, the client must resubscribe)."""
        if data_lost:
            for client, sub in self.subscribers():
                self.unsubscribe(client, sub.req_id)
        self._connectivity_lost = False
        self.send_error(1101 if data_lost else 1102)
