"""Blocking reads of the store behind the service façade: the ticks of several streams merged by time, the
history that joins the live stream at its seam, and what is held per stream (catalog + hot tier).

Each function blocks on files and SQLite; `ServiceState` runs them off the event loop.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from ib_stream.domain import MAX_TS_NS, Contract, StreamKey
from ib_stream.store.query import QueryEngine
from ib_stream.store.schema import table_to_records
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import LiveItem
from ib_stream.times import iso_us


def stored_streams(store: TickStore) -> set[StreamKey]:
    """Every stream the store holds: archived (catalog) or still in the buffer."""
    return set(store.index.streams()) | set(store.buffer.streams())


def contract_streams(store: TickStore, contract: Contract) -> list[StreamKey]:
    """The configured streams of a contract plus any other stream of it the store holds."""
    held = {s for s in stored_streams(store) if s.contract_id == contract.con_id}
    configured = [StreamKey(contract.con_id, t) for t in contract.tick_types]
    return configured + sorted(held - set(configured))


def read_merged(engine: QueryEngine, streams: Sequence[StreamKey], start_ns: int, end_ns: int) -> list[LiveItem]:
    """Every stored tick of the streams with start_ns <= ts < end_ns, merged by time (ties: stream
    order, then seq); each stream's own order is (ts, seq)."""
    per_stream = [
        [(stream, r) for r in table_to_records(engine.read_stream(stream, start_ns, end_ns))] for stream in streams
    ]
    if len(per_stream) == 1:
        return per_stream[0]
    return list(heapq.merge(*per_stream, key=lambda item: item[1]["ts"]))


def read_history(
    store: TickStore, streams: Sequence[StreamKey], start_ns: int
) -> tuple[list[LiveItem], dict[StreamKey, int]]:
    """Every stored tick of the streams with ts >= start_ns, merged in (ts, seq) order, and per
    stream the seq through which the live stream must skip (everything visible when read)."""
    through: dict[StreamKey, int] = {}
    for stream in streams:  # visible before the read: every such tick in range is in the history
        hot = store.buffer.hot(stream)
        chunks = hot.snapshot().chunks if hot is not None else ()
        through[stream] = chunks[-1].last_seq if chunks else 0
    items = read_merged(store.engine, streams, start_ns, MAX_TS_NS)
    for stream, record in items:
        if record["seq"] > through[stream]:
            through[stream] = record["seq"]
    return items, through


def holdings(store: TickStore, streams: Sequence[StreamKey]) -> list[dict[str, Any]]:
    """Per stream: ticks held (catalog + hot tier, each tick once), first/last event time, last seq."""
    archived_seqs = store.index.archived_seqs()
    out = []
    for stream in streams:
        files = store.index.files(stream)
        hot = store.buffer.hot(stream)
        chunks = hot.snapshot().chunks if hot is not None else ()
        archived = sum(f.tick_count for f in files)
        # The catalog holds every seq <= archived_seq; the hot tier is a contiguous seq suffix.
        hot_only = 0
        if chunks:
            below = max(chunks[0].first_seq - 1, archived_seqs.get(stream, 0))
            hot_only = max(0, chunks[-1].last_seq - below)
        firsts = [f.start_time for f in files] + [c.min_ts for c in chunks]
        lasts = [f.end_time for f in files] + [c.max_ts for c in chunks]
        if not firsts:
            continue
        out.append(
            {
                "contract_id": stream.contract_id,
                "tick_type": stream.tick_type.value,
                "tick_count": archived + hot_only,
                "archived_ticks": archived,
                "archive_files": len(files),
                "hot_ticks": sum(c.table.num_rows for c in chunks),
                "first_time": iso_us(min(firsts)),
                "last_time": iso_us(max(lasts)),
                "last_seq": max([f.last_seq for f in files] + [c.last_seq for c in chunks]),
            }
        )
    return out
