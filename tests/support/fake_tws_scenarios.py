"""Scenarios of the fake TWS: failures (errors, refused requests, pacing, dropped sockets, 1100/1102, stalls) and
a scripted market trading behind it, whose log of every tick it made is the oracle of what the broker had.

    market = ScriptedMarket(tws, [(265598, "BidAsk"), (265598, "MidPoint")], clock=clock_seconds, seed=7)
    market.start()                      # a thread: 0-3 ticks per stream every `step` seconds, stamped int(clock())
    market.piggyback("after")           # every reqHistoricalTicks answer comes with a live tick in the same write
    market.stop()
    market.ticks[(265598, "BidAsk")]    # everything the broker traded (IB's history holds it all, at once)
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tests.support import fake_tws_messages as wire
from tests.support.fake_tws_connection import ClientConnection, Request
from tests.support.fake_tws_handlers import RequestHandlers, Subscription
from tests.support.fake_tws_messages import BidAskTick, LastTick, MidPointTick, Tick

if TYPE_CHECKING:
    from tests.support.fake_tws import FakeTWS

# Frames to write before and after a reqHistoricalTicks answer, in the same write (see FakeTWS.history_hook).
HistoryHook = Callable[[ClientConnection, Request], tuple[list[bytes], list[bytes]]]
WHAT_TO_SHOW = {"BidAsk": "BID_ASK", "Last": "TRADES", "AllLast": "TRADES", "MidPoint": "MIDPOINT"}


@dataclass(frozen=True)
class SentTick:
    """One tick-by-tick tick the fake wrote to a client: which stream, which tick, on which connection and reqId."""

    con_id: int
    kind: str
    tick: Tick
    connection: int
    req_id: int


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


class ScriptedMarket:
    """A market behind a FakeTWS (see the module docstring): each tick goes into IB's history, then live.

    Prices and sizes come from a small grid, so the same quote, trade or midpoint repeats within a second:
    de-duplication has to count, not just compare.
    """

    def __init__(
        self,
        tws: FakeTWS,
        streams: Sequence[tuple[int, str]],
        clock: Callable[[], float],
        *,
        seed: int = 0,
        step: float = 0.02,
        per_step: tuple[int, int] = (0, 3),
    ) -> None:
        whats = [(con_id, WHAT_TO_SHOW[kind]) for con_id, kind in streams]
        if len(set(whats)) != len(whats):
            raise ValueError(f"streams {list(streams)} share IB history (Last and AllLast are both TRADES)")
        self.tws = tws
        self.streams = list(streams)
        self.clock = clock
        self.step = step
        self.per_step = per_step
        self.ticks: dict[tuple[int, str], list[Tick]] = {s: [] for s in self.streams}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def make(self, con_id: int, kind: str, second: int | None = None) -> Tick:
        """A new tick of a stream, stamped with `second` or the current one (not yet traded: see `trade`)."""
        second, pick = int(self.clock()) if second is None else second, self._rng.randrange
        if kind == "BidAsk":
            bid = 100 + pick(3) * 0.25
            return BidAskTick(second, bid, bid + 0.25, 1 + pick(2), 1 + pick(2))
        if kind in ("Last", "AllLast"):
            return LastTick(second, 100 + pick(3) * 0.25, 1 + pick(2))
        return MidPointTick(second, 100 + pick(3) * 0.125)

    def trade(self, con_id: int, kind: str, tick: Tick | None = None, *, live: bool = True) -> Tick:
        """The broker makes `tick` (or a new one): into IB's history, then to every live subscriber (if `live`)."""
        with self._lock:
            tick = tick if tick is not None else self.make(con_id, kind)
            self.ticks[(con_id, kind)].append(tick)
            self.tws.add_historical_ticks(con_id, WHAT_TO_SHOW[kind], [tick])
        if live:
            self.tws.emit_ticks(con_id, kind, [tick], require_subscriber=False)
        return tick

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scripted-market", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        low, high = self.per_step
        while not self._stop.wait(self.step):
            for con_id, kind in self.streams:
                for _ in range(self._rng.randint(low, high)):
                    self.trade(con_id, kind)

    def piggyback(self, order: Literal["before", "after"], *, delay: float = 0.0, second: int | None = None) -> None:
        """Answer every reqHistoricalTicks together with a new live tick of its stream.

        The tick is stamped `second` (default: the current one) and is in IB's history before the answer is
        made; it is written just before or after the answer, or `delay` seconds later.
        """

        def hook(client: ClientConnection, request: Request) -> tuple[list[bytes], list[bytes]]:
            stream = next(
                ((c, k) for c, k in self.streams if c == request.con_id and WHAT_TO_SHOW[k] == request["whatToShow"]),
                None,
            )
            if stream is None:
                return [], []
            tick = self.trade(*stream, self.make(*stream, second), live=False)  # in the answer's history
            subs = [s for c, s in self.tws.subscribers(*stream[:1], "reqTickByTickData", stream[1]) if c is client]
            frames = [wire.tick_by_tick(s.req_id, stream[1], tick) for s in subs]
            sent = [SentTick(stream[0], stream[1], tick, client.index, s.req_id) for s in subs]
            if delay > 0 or self.tws.data_blocked:

                def later() -> None:
                    if not self.tws.data_blocked and client.send(b"".join(frames)):
                        self.tws.sent.extend(sent)

                threading.Timer(delay, later).start()
                return [], []
            self.tws.sent.extend(sent)
            return (frames, []) if order == "before" else ([], frames)

        self.tws.history_hook = hook
