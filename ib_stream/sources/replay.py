"""The replay source: re-plays a stored range into the live streams (not into the store) at N×
real time or as fast as possible, with the original timestamps in every tick.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey
from ib_stream.errors import ConfigError
from ib_stream.settings import ReplayConfig
from ib_stream.store.query import QueryEngine
from ib_stream.store.schema import table_to_records
from ib_stream.streaming import StreamingApp
from ib_stream.times import to_utc_ns

_CHUNK = 500  # records handed to the fan-out at once when replaying as fast as possible


def replay_items(
    engine: QueryEngine, streams: Sequence[StreamKey], start_ns: int, end_ns: int
) -> Iterator[tuple[StreamKey, dict[str, Any]]]:
    """Every stored tick of the streams in [start, end), merged in (ts, seq) order."""
    per_stream = []
    for stream in streams:
        records = table_to_records(engine.read_stream(stream, start_ns, end_ns))
        per_stream.append([(r["ts"], r["seq"], i, stream, r) for i, r in enumerate(records)])
    for _ts, _seq, _i, stream, record in heapq.merge(*per_stream, key=lambda item: (item[0], item[1])):
        yield stream, record


async def paced_batches(
    items: Iterator[tuple[StreamKey, dict[str, Any]]], speed: float
) -> AsyncIterator[list[tuple[StreamKey, dict[str, Any]]]]:
    """Yield lists of items when they are due at `speed`× the original pace (0 = no waiting)."""
    batch: list[tuple[StreamKey, dict[str, Any]]] = []
    first_ts: int | None = None
    started = time.monotonic()
    for item in items:
        ts = item[1]["ts"]
        if first_ts is None:
            first_ts = ts
        if speed > 0:
            due = started + (ts - first_ts) / NS_PER_SECOND / speed
            delay = due - time.monotonic()
            if delay > 0.005 and batch:
                yield batch
                batch = []
            if delay > 0:
                await asyncio.sleep(delay)
        batch.append(item)
        if len(batch) >= _CHUNK:
            yield batch
            batch = []
            await asyncio.sleep(0)
    if batch:
        yield batch


class ReplaySource:
    """Re-plays `[start_time, end_time)` of every configured contract into the live fan-out."""

    name = "replay"

    def __init__(self, config: ReplayConfig, contracts: Sequence[Contract]) -> None:
        if not config.start_time or not config.end_time:
            raise ConfigError("the replay source needs replay.start_time and replay.end_time")
        self.config = config
        self.contracts = contracts
        self.start_ns = to_utc_ns(config.start_time, "replay.start_time")
        self.end_ns = to_utc_ns(config.end_time, "replay.end_time")
        if self.end_ns <= self.start_ns:
            raise ConfigError(f"replay.end_time {config.end_time} is not after replay.start_time {config.start_time}")

    async def run(self, app: StreamingApp) -> None:
        streams = [StreamKey(c.con_id, t) for c in self.contracts for t in c.tick_types]
        while True:
            items = await asyncio.to_thread(
                lambda: list(replay_items(app.store.engine, streams, self.start_ns, self.end_ns))
            )
            async for batch in paced_batches(iter(items), self.config.speed):
                # Consecutive runs of one stream, so subscribers of several streams see time order.
                for stream, run in itertools.groupby(batch, key=lambda item: item[0]):
                    app.publish_live(stream, [record for _, record in run])
            if not self.config.loop:
                return
