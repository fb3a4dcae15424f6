"""Blocking reads of the store behind the service façade: the streams a contract holds and what is held per
stream (catalog + hot tier); the ticks of several streams merged by time are `live.reader.read_merged`.

Each function blocks on files and SQLite; `ServiceState` runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ib_stream.domain import Contract, StreamKey
from ib_stream.store.tickstore import TickStore
from ib_stream.times import iso_us


def stored_streams(store: TickStore) -> set[StreamKey]:
    """Every stream the store holds: archived (catalog) or still in the buffer."""
    return set(store.index.streams()) | set(store.buffer.streams())


def contract_streams(store: TickStore, contract: Contract) -> list[StreamKey]:
    """The configured streams of a contract plus any other stream of it the store holds."""
    held = {s for s in stored_streams(store) if s.contract_id == contract.con_id}
    configured = [StreamKey(contract.con_id, t) for t in contract.tick_types]
    return configured + sorted(held - set(configured))


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
