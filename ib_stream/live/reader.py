"""History joined to live with no gap and no duplicate: subscribe first, then read what is stored and
note per stream the highest seq the read covered; live items at or below it were in the history.

`read_history` is the read (blocking: run it in the store's executor after subscribing); `join_live`
does both steps for a stream that sends stored ticks and then live ones (`/v2/stream/{id}/buffer`),
and `LiveBarFeed` primes its builder with the same read.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ib_stream.domain import MAX_TS_NS, StreamKey, TickType
from ib_stream.store.query import QueryEngine
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import LiveItem, StreamingApp, Subscription


def read_merged(engine: QueryEngine, streams: Sequence[StreamKey], start_ns: int, end_ns: int) -> list[LiveItem]:
    """Every stored tick of the streams with start_ns <= ts < end_ns, merged by time (ties: stream
    order, then seq); each stream's own order is (ts, seq)."""
    per_stream = [
        [(stream, r) for r in table_to_records(engine.read_stream(stream, start_ns, end_ns))] for stream in streams
    ]
    if len(per_stream) == 1:
        return per_stream[0]
    return list(heapq.merge(*per_stream, key=lambda item: item[1]["ts"]))


@dataclass(frozen=True, slots=True)
class History:
    """What a read after subscribing found: the items, and per stream the seq through which live
    items were already in them."""

    items: list[LiveItem]
    through: dict[StreamKey, int]

    def unseen(self, items: Iterable[LiveItem]) -> list[LiveItem]:
        """The live items the history did not hold."""
        through = self.through
        return [(s, r) for s, r in items if r["seq"] > through.get(s, 0)]


def read_history(store: TickStore, streams: Sequence[StreamKey], start_ns: int) -> History:
    """Every stored tick of the streams with ts >= start_ns, merged in (ts, seq) order, and per stream
    the seq through which the live stream must skip (everything visible when read). Blocking."""
    through: dict[StreamKey, int] = {}
    for stream in streams:  # visible before the read: every such tick in range is in the history
        hot = store.buffer.hot(stream)
        chunks = hot.snapshot().chunks if hot is not None else ()
        through[stream] = chunks[-1].last_seq if chunks else 0
    items = read_merged(store.engine, streams, start_ns, MAX_TS_NS)
    for stream, record in items:
        if record["seq"] > through[stream]:
            through[stream] = record["seq"]
    return History(items, through)


class LiveJoin:
    """A subscription and the history read after it: `history.items`, then `get` gives the live
    items the history did not hold (a source for `pump`). `close` unsubscribes."""

    def __init__(self, app: StreamingApp, sub: Subscription, history: History) -> None:
        self.app = app
        self.sub = sub
        self.history = history

    @property
    def closed(self) -> bool:
        return self.sub.closed

    async def get(self, timeout: float | None = None) -> list[LiveItem]:
        """Wait up to `timeout` seconds for live items; return those not in the history."""
        return self.history.unseen(await self.sub.get(timeout))

    def resize(self, max_queue: int) -> None:
        self.sub.resize(max_queue)

    def close(self) -> None:
        self.app.unsubscribe(self.sub)


async def join_live(
    app: StreamingApp,
    contract_id: int,
    tick_types: Sequence[TickType],
    start_ns: int,
    max_queue: int | None = None,
) -> LiveJoin:
    """Subscribe to the streams (queue of `max_queue` items), then read their history since
    `start_ns` in the store's executor; the caller closes the join."""
    sub = app.subscribe(contract_id, tick_types, max_queue)
    streams = [StreamKey(contract_id, t) for t in tick_types]
    try:
        history = await asyncio.get_running_loop().run_in_executor(
            app.store.executor, read_history, app.store, streams, start_ns
        )
    except BaseException:
        app.unsubscribe(sub)
        raise
    return LiveJoin(app, sub, history)
