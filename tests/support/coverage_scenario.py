"""The coverage invariant checked against the broker's own log, and scripted disconnect scenarios to check it on.

Invariant (DESIGN §5, 9): for every recorded stream and every second between its first and last tick,
the broker's ticks of that second are stored exactly once, or the second lies inside a ledger gap with
a reason. The oracle is the `ScriptedMarket`'s log of every tick the fake TWS's broker made (IB's
history holds them all, live subscribers got those sent while they were subscribed) — never the code
under test. Ticks are compared per second as multisets of their prices and sizes (IB stamps whole
seconds; the same quote may come twice in a second and must then be stored twice).

    outcome = await run_scenario(Scenario.random(seed=7), tmp_path)
    assert outcome.coverage.violations == [] and outcome.coverage.duplicates == 0
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.settings import IbConfig, StorageConfig
from ib_stream.sources.ib import IbSource
from ib_stream.storage import TickStore
from ib_stream.store.gaps import Gap
from ib_stream.store.schema import table_to_records
from ib_stream.streaming import StreamingApp
from tests.conftest import T0_NS
from tests.support.fake_tws import FakeTWS
from tests.support.fake_tws_messages import AAPL, ES, BidAskTick, FakeContract, LastTick, Tick
from tests.support.fake_tws_scenarios import ScriptedMarket

TICK_TYPES = {
    "BidAsk": TickType.BID_ASK,
    "Last": TickType.LAST,
    "AllLast": TickType.ALL_LAST,
    "MidPoint": TickType.MID_POINT,
}
MSFT = FakeContract(272093, "MSFT", primary_exchange="NASDAQ")
NVDA = FakeContract(4815747, "NVDA", primary_exchange="NASDAQ")
FAKE_CONTRACTS = (AAPL, MSFT, NVDA, ES)
Key = tuple[float, ...]
DisconnectKind = Literal["drop", "1100-1101", "1100-1102", "1102", "drop-in-history", "stall"]
STALE_AFTER_SECONDS = 0.4  # the watchdog's patience in "stall" runs (T0 is a Friday 09:00 New York: markets open)


class RunningClock:
    """Wall-clock pace from a fixed start (T0 + time elapsed), so every run starts at the same instant of a second."""

    def __init__(self, start_ns: int = T0_NS) -> None:
        self._start = start_ns
        self._origin = time.monotonic_ns()

    def now_ns(self) -> int:
        return self._start + time.monotonic_ns() - self._origin

    def seconds(self) -> float:
        return self.now_ns() / NS_PER_SECOND


# --- the oracle ---------------------------------------------------------------------------------------------------


def broker_key(tick: Tick) -> Key:
    if isinstance(tick, BidAskTick):
        return (tick.bid, tick.ask, float(tick.bid_size), float(tick.ask_size))
    if isinstance(tick, LastTick):
        return (tick.price, float(tick.size))
    return (tick.mid_point,)


def stored_key(tick_type: TickType, row: dict[str, Any]) -> Key:
    if tick_type is TickType.BID_ASK:
        return (row["bid_price"], row["ask_price"], row["bid_size"], row["ask_size"])
    if tick_type in (TickType.LAST, TickType.ALL_LAST):
        return (row["price"], row["size"])
    return (row["mid_point"],)


@dataclass
class Coverage:
    """What the store holds of what the broker made, per second: the invariant's verdict and the counts."""

    streams: int = 0
    ticks: int = 0  # the broker's ticks
    sent_live: int = 0  # of them, written to a live subscriber of the recording connection
    stored: int = 0
    losses: int = 0  # broker ticks not stored
    losses_outside_gaps: int = 0
    duplicates: int = 0  # ticks stored more often than the broker made them
    violations: list[str] = field(default_factory=list)  # seconds breaking the invariant

    def add(self, other: Coverage) -> None:
        for name in ("streams", "ticks", "sent_live", "stored", "losses", "losses_outside_gaps", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.violations += other.violations

    def summary(self) -> str:
        return (
            f"{self.streams} streams, {self.ticks} broker ticks ({self.sent_live} sent live), {self.stored} stored, "
            f"{self.losses} lost ({self.losses_outside_gaps} outside gaps), {self.duplicates} duplicates"
        )


def in_gap(gaps: Iterable[Gap], stream: StreamKey, second: int) -> bool:
    lo, hi = second * NS_PER_SECOND, (second + 1) * NS_PER_SECOND
    return any(g.stream == stream and g.start_ns < hi and (g.end_ns is None or g.end_ns > lo) for g in gaps)


def check_coverage(
    broker: dict[StreamKey, Sequence[Tick]],
    stored: dict[StreamKey, Sequence[dict[str, Any]]],
    gaps: Sequence[Gap],
    sent_live: int = 0,
) -> Coverage:
    """The invariant over every second from each stream's first to its last broker tick."""
    out = Coverage(sent_live=sent_live)
    for stream, ticks in broker.items():
        if not ticks:
            continue
        out.streams += 1
        want: dict[int, collections.Counter[Key]] = collections.defaultdict(collections.Counter)
        have: dict[int, collections.Counter[Key]] = collections.defaultdict(collections.Counter)
        for tick in ticks:
            want[tick.time][broker_key(tick)] += 1
        rows = stored.get(stream, ())
        for row in rows:
            have[row["ts"] // NS_PER_SECOND][stored_key(stream.tick_type, row)] += 1
        first, last = min(want), max(want)
        out.ticks += len(ticks)
        out.stored += sum(1 for row in rows if first <= row["ts"] // NS_PER_SECOND <= last)
        for second in range(first, last + 1):
            missing = sum((want[second] - have[second]).values())
            extra = sum((have[second] - want[second]).values())
            out.losses += missing
            out.duplicates += extra
            if (missing or extra) and not in_gap(gaps, stream, second):
                out.losses_outside_gaps += missing
                out.violations.append(
                    f"{stream} second {second - T0_NS // NS_PER_SECOND:+d}: {missing} missing, {extra} extra"
                )
    return out


def stored_rows(store: TickStore, streams: Iterable[StreamKey]) -> dict[StreamKey, list[dict[str, Any]]]:
    return {s: table_to_records(store.engine.read_stream(s, 0, 2**62)) for s in streams}


# --- scenarios ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One scripted run: a market on `contracts` contracts, one disconnect of `kind` at `at_fraction` of a second."""

    seed: int
    kind: DisconnectKind = "drop"
    at_fraction: float = 0.9  # where in its second the disconnect happens (late: detection falls in the next one)
    outage_seconds: float = 0.3  # 1100 .. 1101/1102, or how long a stall withholds data
    contracts: int = 2
    kinds: tuple[str, ...] = ("BidAsk", "Last", "MidPoint")
    messages_per_second: int = 40
    piggyback: Literal["before", "after"] | None = None  # a live tick in the same write as each history answer
    backfill_delay: float = 0.5
    before_seconds: float = 0.8  # market running before the disconnect
    after_seconds: float = 0.8  # and after everything is subscribed again

    @classmethod
    def random(cls, seed: int) -> Scenario:
        rng = random.Random(seed)
        kinds: list[DisconnectKind] = ["drop", "drop", "1100-1101", "1100-1102", "1102", "drop-in-history", "stall"]
        late = rng.random() < 0.5
        kind = rng.choice(kinds)
        return cls(
            seed=seed,
            kind=kind,
            at_fraction=rng.uniform(0.8, 0.99) if late else rng.uniform(0.0, 0.8),
            # a stall past the watchdog's first patience (resubscribe) and, sometimes, its second (reconnect)
            outage_seconds=rng.uniform(0.6, 1.2) if kind == "stall" else rng.uniform(0.05, 0.6),
            contracts=rng.choice([1, 2, 3]),
            piggyback=rng.choice([None, "before", "after"]),
            backfill_delay=rng.choice([0.0, 0.3, 1.0]),
            before_seconds=rng.uniform(0.3, 1.2),
        )

    def describe(self) -> str:
        return (
            f"seed {self.seed}: {self.kind} at {self.at_fraction:.2f} of a second, {self.contracts} contracts x "
            f"{len(self.kinds)}, {self.messages_per_second} msg/s, piggyback {self.piggyback}, "
            f"delay {self.backfill_delay}"
        )


@dataclass
class Outcome:
    scenario: Scenario
    coverage: Coverage
    gaps: list[Gap]
    status: dict[str, Any]


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll `predicate` on the event loop until it is truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.01)
    return value


async def at_fraction(clock: RunningClock, fraction: float) -> None:
    """Sleep until the clock is `fraction` into a second."""
    now = clock.seconds()
    target = int(now) + fraction
    if target <= now + 0.05:
        target += 1
    await asyncio.sleep(target - now)


def all_subscribed(tws: FakeTWS, source: IbSource, streams: int) -> bool:
    subscribed = {(s.con_id, s.tick_type) for s in tws.subscriptions(request="reqTickByTickData")}
    return len(subscribed) >= streams and source.status()["uncovered"] == 0


async def run_scenario(sc: Scenario, root: Path) -> Outcome:
    """Record a scripted market through the real IB source, disconnect as `sc` says, and judge the store."""
    clock = RunningClock()
    fakes = FAKE_CONTRACTS[: sc.contracts]
    contracts = [Contract(c.con_id, c.symbol, tick_types=tuple(TICK_TYPES[k] for k in sc.kinds)) for c in fakes]
    streams = [(c.con_id, k) for c in fakes for k in sc.kinds]
    config = StorageConfig(data_root=root, fsync_interval_ms=1, compaction_delay_seconds=0)
    store = TickStore(config, clock).open()
    tws = FakeTWS(fakes, clock=clock.seconds)
    market = ScriptedMarket(tws, streams, clock.seconds, seed=sc.seed)
    if sc.piggyback is not None:
        market.piggyback(sc.piggyback)
    ib = IbConfig(
        ports=(0,), client_id=3, connect_timeout_seconds=5, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2,
        max_tick_by_tick_subscriptions=32, max_messages_per_second=sc.messages_per_second,
        backfill_delay_seconds=sc.backfill_delay, pacing_retry_seconds=0.2,
        stale_after_seconds=STALE_AFTER_SECONDS if sc.kind == "stall" else 600,
    )  # fmt: skip
    paced = 2 + 2 * len(streams) / sc.messages_per_second  # one connection's requests, paced
    try:
        with tws:
            source = IbSource(ib.model_copy(update={"ports": (tws.port,)}), contracts, clock)
            app = StreamingApp(store, contracts)
            await app.start([source])
            try:
                await until(lambda: all_subscribed(tws, source, len(streams)), "first subscriptions", paced + 5)
                market.start()
                await asyncio.sleep(sc.before_seconds)
                await at_fraction(clock, sc.at_fraction)
                await _disconnect(sc, tws)
                await asyncio.sleep(0.3)  # the reconnect (or 1101/1102) is under way
                await until(lambda: all_subscribed(tws, source, len(streams)), "subscriptions again", paced + 10)
                await asyncio.sleep(sc.after_seconds)
                # The market trades on (a silent feed would be stale to the watchdog); judged: the seconds before now.
                cut = int(clock.seconds())
                keys = [StreamKey(con_id, TICK_TYPES[k]) for con_id, k in streams]

                def judge() -> tuple[Coverage, list[Gap]]:
                    gaps = store.gaps.gaps()
                    made = {StreamKey(c, TICK_TYPES[k]): list(ticks) for (c, k), ticks in market.ticks.items()}
                    broker = {s: [t for t in ticks if t.time < cut] for s, ticks in made.items()}
                    live = sum(1 for sent in list(tws.sent) if sent.tick.time < cut)
                    return check_coverage(broker, stored_rows(store, keys), gaps, live), gaps

                def settled() -> tuple[Coverage, list[Gap]] | None:
                    if any(g.end_ns is None or g.backfill == "pending" for g in store.gaps.gaps()):
                        return None
                    coverage, gaps = judge()
                    return (coverage, gaps) if coverage.losses == 0 and coverage.duplicates == 0 else None

                try:  # until every gap is closed and backfilled and the last live ticks are stored
                    coverage, gaps = await until(settled, "a settled store", 8 + paced)
                except TimeoutError:
                    coverage, gaps = judge()
                status = source.status()
            finally:
                market.stop()
                await app.stop()
    finally:
        store.close()
    return Outcome(sc, coverage, gaps, status)


async def _disconnect(sc: Scenario, tws: FakeTWS) -> None:
    if sc.kind == "drop":
        tws.drop_connections()
    elif sc.kind in ("1100-1101", "1100-1102"):
        tws.connectivity_lost()
        await asyncio.sleep(sc.outage_seconds)
        tws.connectivity_restored(data_lost=sc.kind == "1100-1101")
    elif sc.kind == "1102":
        tws.connectivity_restored(data_lost=False)  # a 1102 alone: everything is resubscribed
    elif sc.kind == "stall":  # connected, no data: the watchdog resubscribes (and may reconnect)
        tws.stall()
        await asyncio.sleep(sc.outage_seconds)
        tws.resume()
    else:  # drop, then drop again while the first backfill's answer is in flight
        tws.history_delay = 0.3
        before = len(tws.requests_of("reqHistoricalTicks"))
        tws.drop_connections()
        await until(lambda: len(tws.requests_of("reqHistoricalTicks")) > before, "a backfill request", 15)
        tws.drop_connections()
        tws.history_delay = 0.0
