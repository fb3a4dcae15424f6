"""Where a backfill meets live data: each tick of the overlap stored once, whichever path brings it first.

    gate = OverlapGate()
    async with gate.lock(stream):                   # the live path, for each batch of a stream
        ticks = gate.live(stream, ticks)            # minus those a backfill stored already
        await app.publish(...)
    async with gate.lock(stream):                   # a backfill, for the span it fills
        held = read(...); fresh = ...; await store.append_batch(...)
        gate.backfilled(stream, fresh, end_ns)

A backfill's span ends inside live data: the second in which a stream's data flowed again holds
ticks that only IB's history has (sent before the subscription was active) and ticks that also
arrive live. Two rules make the overlap exact:

1. *Serialised.* The backfill reads what the store holds of its span and appends what is missing
   while holding the stream's lock, and the live path holds the same lock from filtering a batch
   until it is durable. A live tick is therefore either stored before the backfill reads (and
   skipped by it), or arrives after the backfill appended.
2. *Late live ticks are dropped against what the backfill stored.* The keys (second, prices,
   sizes) of what the backfill appended in seconds that live data may still reach are remembered;
   a live tick matching one is the same tick (IB's history of a second that is over holds every
   tick of it, with multiplicity) and is dropped, once per remembered tick. Seconds below the
   newest live tick are forgotten (live ticks come in time order), and only the last
   `GUARD_SECONDS` of a span are remembered (the subscription became active at most that long
   before the span's end), so the memory stays small.

Rule 2 is exact only when the history covers whole seconds that are over, which is why the IB
source backfills a gap only after its last second has passed (`ib.backfill_delay_seconds`).
IB stamps tick-by-tick and historical ticks with whole seconds, so the second is the common key.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, Final

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType

# What makes two ticks of a stream the same tick, besides their second.
KEY_FIELDS: Final[dict[TickType, tuple[str, ...]]] = {
    TickType.BID_ASK: ("bid_price", "bid_size", "ask_price", "ask_size"),
    TickType.LAST: ("price", "size"),
    TickType.ALL_LAST: ("price", "size"),
    TickType.MID_POINT: ("mid_point",),
}
GUARD_SECONDS: Final = 5  # the last seconds of a backfilled span that live ticks may still reach
TickKey = tuple[Any, ...]


def tick_key(tick_type: TickType, tick: dict[str, Any]) -> TickKey:
    """(second, the fields that identify the tick) — equal for the live and the historical copy of a tick."""
    return (tick["ts"] // NS_PER_SECOND, *(float(tick[f]) for f in KEY_FIELDS[tick_type]))


class OverlapGate:
    """Serialises a backfill's read-and-append with the live appends of the same stream (see the module docstring)."""

    def __init__(self) -> None:
        self.dropped = 0  # live ticks not stored: a backfill had stored them already
        self._locks: dict[StreamKey, asyncio.Lock] = {}
        self._stored: dict[StreamKey, collections.Counter[TickKey]] = {}  # backfilled ticks live data may repeat
        self._live_second: dict[StreamKey, int] = {}  # second of the newest live tick

    def lock(self, stream: StreamKey) -> asyncio.Lock:
        """The stream's lock: held by the live path until a batch is durable, and by a backfill's read-and-append."""
        lock = self._locks.get(stream)
        if lock is None:
            lock = self._locks[stream] = asyncio.Lock()
        return lock

    def live(self, stream: StreamKey, ticks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Live ticks of `stream` minus those a backfill stored already (call holding `lock(stream)`)."""
        if not ticks:
            return []
        newest = max(t["ts"] for t in ticks) // NS_PER_SECOND
        stored = self._stored.get(stream)
        kept = list(ticks)
        if stored:
            kept = []
            for tick in ticks:
                key = tick_key(stream.tick_type, tick)
                if stored[key] > 0:
                    stored[key] -= 1
                    self.dropped += 1
                else:
                    kept.append(tick)
            for key in [k for k, n in stored.items() if n <= 0 or k[0] < newest]:
                del stored[key]
            if not stored:
                del self._stored[stream]
        self._live_second[stream] = max(newest, self._live_second.get(stream, newest))
        return kept

    def backfilled(self, stream: StreamKey, ticks: Sequence[dict[str, Any]], end_ns: int) -> None:
        """A backfill appended `ticks` of a span ending at `end_ns` (call holding `lock(stream)`)."""
        if stream.tick_type not in KEY_FIELDS or not ticks:
            return
        floor = end_ns // NS_PER_SECOND - GUARD_SECONDS
        if stream in self._live_second:
            floor = max(floor, self._live_second[stream])
        keys = [k for k in (tick_key(stream.tick_type, t) for t in ticks) if k[0] >= floor]
        if keys:
            self._stored.setdefault(stream, collections.Counter()).update(keys)

    def remembered(self, stream: StreamKey) -> int:
        """How many backfilled ticks of `stream` live data may still repeat (for status and tests)."""
        return sum(self._stored.get(stream, {}).values())
