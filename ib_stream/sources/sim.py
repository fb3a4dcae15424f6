"""The built-in simulated market: realistic, deterministic (seeded) ticks for every configured
contract, so the service shows live data with no broker.

Per contract: a mid price random walk on the contract's tick grid; a spread of 1–3 ticks;
quote arrivals whose intensity follows a slow log-normal activity factor with occasional bursts;
trades at the quote (or inside a wide spread) with heavy-tailed sizes and persistent aggressor
runs; 10 levels of position-based depth per side. `SimMarket` is pure (event time in, ticks
out); `SimSource` paces it against the wall clock and hands batches to the StreamingApp.

Real data stays real: `SimSource` never simulates a contract whose streams hold ticks of another source
(broker, imported, ingested: the store's `provenance`), and stops simulating one that receives such ticks
while it runs. After a restart each contract's path continues from its last stored quote and trade
(`Resume`), not from `start_price`.

While the store refuses writes (a full disk) the market goes on and its batches are dropped — the
StreamingApp records the outage as a `storage_error` gap — so the source resumes by itself when the disk does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ib_stream.clock import NS_PER_SECOND, Clock, SystemClock
from ib_stream.domain import SIM_SOURCE, Contract, StreamKey, TickType
from ib_stream.errors import StorageWriteError
from ib_stream.settings import SimConfig
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import StreamingApp

log = logging.getLogger(__name__)
Ticks = dict[TickType, list[dict[str, Any]]]
SOURCE = SIM_SOURCE
# How far back a restart looks for the last stored price, window by window (the last: the whole store).
_RESUME_WINDOWS_NS: Final = tuple(n * NS_PER_SECOND for n in (60, 3600, 86_400, 30 * 86_400, 10**9))
_EXCHANGES = ("NASDAQ", "ARCA", "BATS", "EDGX", "IEX", "NYSE", "FINRA")


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a contract's stored series ends: the last stored quote, trade and midpoint (None: none stored)."""

    ts: int  # the event time of the latest of them
    bid: float | None = None
    ask: float | None = None
    trade: float | None = None
    mid_point: float | None = None


class SimMarket:
    """One contract's simulated market; `advance(until_ns)` returns the ticks of the elapsed time. With `resume` the
    path continues from the stored prices (and draws another random sequence than a fresh start)."""

    def __init__(self, contract: Contract, config: SimConfig, start_ns: int, resume: Resume | None = None) -> None:
        self.contract = contract
        self.config = config
        self.tick = contract.min_tick
        self.rng = random.Random(f"{config.seed}:{contract.con_id}" + (f":{resume.ts}" if resume else ""))
        start_price = float(contract.extra.get("start_price", 100.0))
        self.mid_ticks = max(10, round(start_price / self.tick))  # bid in ticks = mid_ticks, ask = + spread
        self.spread = 1
        self.activity = 1.0
        self.burst_until = 0
        self.aggressor = 1
        self.last_trade = self.mid_ticks
        self.last_mid: float | None = None
        if resume is not None:
            self._resume(resume)
        self.now_ns = start_ns
        self.next_second = start_ns
        self.next_event = start_ns
        self.depth_rows = contract.depth_rows
        self.book: dict[str, list[float]] = {"bid": [], "ask": []}
        self.types = set(contract.tick_types)

    def advance(self, until_ns: int, is_open: Callable[[int], bool] | None = None) -> Ticks:
        """Simulate up to `until_ns` (event time) and return the ticks, per tick type, in time order."""
        out: Ticks = {t: [] for t in self.types}
        if self.depth_rows and TickType.DEPTH in self.types and not self.book["bid"]:
            self._depth_snapshot(out, self.now_ns)
        while self.next_event <= until_ns:
            ts = self.next_event
            while self.next_second <= ts:
                self._update_activity()
                self.next_second += NS_PER_SECOND
            if is_open is None or is_open(ts):
                self._quote_event(out, ts)
            rate = self.config.quotes_per_second * self.activity * (6.0 if ts < self.burst_until else 1.0)
            self.next_event = ts + max(1_000, int(self.rng.expovariate(rate) * NS_PER_SECOND))
        self.now_ns = until_ns
        return out

    def _resume(self, resume: Resume) -> None:
        if resume.bid is not None and resume.ask is not None and resume.ask > resume.bid:
            self.mid_ticks = max(2, round(resume.bid / self.tick))
            self.spread = min(3, max(1, round((resume.ask - resume.bid) / self.tick)))
        elif resume.trade is not None:
            self.mid_ticks = max(2, round(resume.trade / self.tick))
        elif resume.mid_point is not None:
            self.mid_ticks = max(2, math.floor(resume.mid_point / self.tick))
        self.last_trade = round(resume.trade / self.tick) if resume.trade is not None else self.mid_ticks
        self.last_mid = resume.mid_point

    # ---- the processes ----------------------------------------------------------------------------
    def _update_activity(self) -> None:
        # AR(1) in log space around 1, plus rare bursts of 3-30 s.
        log_activity = 0.97 * math.log(self.activity) + self.rng.gauss(0.0, 0.12)
        self.activity = min(8.0, max(0.1, math.exp(log_activity)))
        if self.rng.random() < 0.004:
            self.burst_until = self.next_second + self.rng.randint(3, 30) * NS_PER_SECOND

    def _quote_event(self, out: Ticks, ts: int) -> None:
        moved = False
        step = self.rng.random()
        if step < 0.18:
            self.mid_ticks += 1 if self.rng.random() < 0.5 else -1
            self.mid_ticks = max(2, self.mid_ticks)
            moved = True
        if self.rng.random() < 0.03:
            self.spread = self.rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
            moved = True
        bid, ask = self._price(self.mid_ticks), self._price(self.mid_ticks + self.spread)
        bid_size, ask_size = self._quote_size(), self._quote_size()
        if TickType.BID_ASK in self.types:
            out[TickType.BID_ASK].append(
                {"ts": ts, "bid_price": bid, "bid_size": bid_size, "ask_price": ask, "ask_size": ask_size}
            )
        mid = round((bid + ask) / 2, 10)
        if TickType.MID_POINT in self.types and mid != self.last_mid:
            out[TickType.MID_POINT].append({"ts": ts, "mid_point": mid})
            self.last_mid = mid
        if self.depth_rows and TickType.DEPTH in self.types:
            self._depth_update(out, ts, bid_size, ask_size, moved)
        if self.rng.random() < self.config.trades_per_quote:
            self._trade(out, ts)

    def _trade(self, out: Ticks, ts: int) -> None:
        if self.rng.random() > 0.85:  # aggressor runs persist
            self.aggressor = -self.aggressor
        inside = self.spread >= 2 and self.rng.random() < 0.3
        if inside:
            price_ticks = self.mid_ticks + self.rng.randint(1, self.spread - 1)
        else:
            price_ticks = self.mid_ticks + self.spread if self.aggressor > 0 else self.mid_ticks
        size = float(min(5000, max(1, int(self.rng.paretovariate(1.3) * (100 if self.rng.random() < 0.5 else 7)))))
        trade = {
            "ts": ts,
            "price": self._price(price_ticks),
            "size": size,
            "exchange": self.rng.choice(_EXCHANGES),
            "conditions": "I" if size < 100 else "",
        }
        self.last_trade = price_ticks
        for tick_type in (TickType.LAST, TickType.ALL_LAST):
            if tick_type in self.types:
                out[tick_type].append(dict(trade))

    def _depth_snapshot(self, out: Ticks, ts: int) -> None:
        for side, sign in (("bid", -1), ("ask", 1)):
            base = self.mid_ticks if side == "bid" else self.mid_ticks + self.spread
            self.book[side] = [self._quote_size() for _ in range(self.depth_rows)]
            for position, size in enumerate(self.book[side]):
                out[TickType.DEPTH].append(self._depth(ts, side, position, "insert", base + sign * position, size))

    def _depth_update(self, out: Ticks, ts: int, bid_size: float, ask_size: float, moved: bool) -> None:
        for side, sign, top in (("bid", -1, bid_size), ("ask", 1, ask_size)):
            base = self.mid_ticks if side == "bid" else self.mid_ticks + self.spread
            levels = self.book[side]
            positions: Sequence[int]
            if moved:  # the whole side re-prices: IB sends an update per row
                levels[:] = [top] + [self._quote_size() for _ in range(self.depth_rows - 1)]
                positions = range(self.depth_rows)
            else:
                levels[0] = top
                positions = (0,) if self.rng.random() < 0.7 else (0, self.rng.randrange(self.depth_rows))
            for position in positions:
                out[TickType.DEPTH].append(
                    self._depth(ts, side, position, "update", base + sign * position, levels[position])
                )

    # ---- helpers --------------------------------------------------------------------------------------
    def _price(self, ticks: int) -> float:
        return round(ticks * self.tick, 10)

    def _quote_size(self) -> float:
        size = self.rng.paretovariate(1.5) * 100
        return float(min(20_000, round(size / 100) * 100 or 100))

    def _depth(self, ts: int, side: str, position: int, op: str, price_ticks: int, size: float) -> dict[str, Any]:
        return {
            "ts": ts,
            "side": side,
            "position": position,
            "operation": op,
            "price": self._price(price_ticks),
            "size": size,
        }


def stored_resume(store: TickStore, contract: Contract, now_ns: int) -> Resume | None:
    """The contract's last stored quote, trade and midpoint at or before `now_ns` (None: nothing stored). Blocking."""
    last = {t: _last_stored(store, StreamKey(contract.con_id, t), now_ns) for t in _RESUME_TYPES}
    found = [r for r in last.values() if r is not None]
    if not found:
        return None
    quote, mid_point = last[TickType.BID_ASK], last[TickType.MID_POINT]
    trades = [r for r in (last[TickType.LAST], last[TickType.ALL_LAST]) if r is not None]
    trade = max(trades, key=lambda r: r["ts"]) if trades else None
    return Resume(
        max(r["ts"] for r in found),
        bid=quote["bid_price"] if quote else None,
        ask=quote["ask_price"] if quote else None,
        trade=trade["price"] if trade else None,
        mid_point=mid_point["mid_point"] if mid_point else None,
    )


_RESUME_TYPES: Final = (TickType.BID_ASK, TickType.LAST, TickType.ALL_LAST, TickType.MID_POINT)


def _last_stored(store: TickStore, stream: StreamKey, now_ns: int) -> dict[str, Any] | None:
    """The stream's stored tick with the latest (ts, seq) at or before `now_ns`, looking back window by window."""
    for window in _RESUME_WINDOWS_NS:
        table = store.engine.read_stream(stream, max(0, now_ns - window), now_ns + 1)
        if table.num_rows:
            return table_to_records(table.slice(table.num_rows - 1))[0]
    return None


class SimSource:
    """Paces `SimMarket`s against the clock and publishes their ticks every `batch_ms`."""

    name = "sim"

    def __init__(
        self,
        contracts: list[Contract],
        config: SimConfig,
        clock: Clock | None = None,
        is_open: Callable[[Contract, int], bool] | None = None,
    ) -> None:
        self.contracts = contracts
        self.config = config
        self.clock = clock or SystemClock()
        self.is_open = is_open if config.follow_sessions else None
        self.not_simulated: dict[int, str] = {}  # con_id -> why the simulator leaves it alone
        self.resumed: dict[int, Resume] = {}  # con_id -> the stored prices its path continues from

    def status(self) -> dict[str, Any]:
        """The contracts not simulated (they hold real data) and those resumed from stored prices (for /health)."""
        return {
            "not_simulated": dict(self.not_simulated),
            "resumed_from": {
                con_id: {"bid": r.bid, "ask": r.ask, "trade": r.trade, "ts": r.ts} for con_id, r in self.resumed.items()
            },
        }

    async def run(self, app: StreamingApp) -> None:
        store = app.store
        start = self.clock.now_ns()
        contracts = [c for c in self.contracts if self._may_simulate(store, c)]
        loop = asyncio.get_running_loop()
        markets = []
        for contract in contracts:
            resume = await loop.run_in_executor(store.executor, stored_resume, store, contract, start)
            if resume is not None:
                self.resumed[contract.con_id] = resume
                log.info("simulator: %s continues from its stored prices (%s)", contract.symbol, resume)
            markets.append(SimMarket(contract, self.config, start, resume))
        while True:
            await asyncio.sleep(self.config.batch_ms / 1000)
            now = self.clock.now_ns()
            markets = [m for m in markets if self._may_simulate(store, m.contract)]
            for market in markets:
                is_open = None if self.is_open is None else functools.partial(self.is_open, market.contract)
                ticks = market.advance(now, is_open)
                for tick_type, batch in ticks.items():
                    if batch:
                        with contextlib.suppress(StorageWriteError):  # dropped; the app records the outage
                            await app.publish(market.contract.con_id, tick_type, batch, SOURCE)

    def _may_simulate(self, store: TickStore, contract: Contract) -> bool:
        if not store.provenance.holds_real(contract.con_id):
            return True
        if contract.con_id not in self.not_simulated:
            sources = ", ".join(store.provenance.real_contracts().get(contract.con_id, ()))
            self.not_simulated[contract.con_id] = f"its streams hold non-simulated ticks ({sources})"
            log.error(
                "simulator: %s (%d) is not simulated: its streams in %s hold non-simulated ticks (%s)",
                contract.symbol,
                contract.con_id,
                store.layout.data_root,
                sources,
            )
        return False
