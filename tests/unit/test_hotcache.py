"""The hot tier: background conversion of the written JSON lines never loses, duplicates or reorders a tick."""

from __future__ import annotations

import threading

import pytest

from ib_stream.domain import StreamKey, TickType
from ib_stream.storage import TickStore
from ib_stream.store import hotcache
from tests.conftest import CONTRACT, T0_NS, trade


def test_background_conversion_under_concurrent_queries_keeps_every_tick_once(
    store: TickStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hotcache, "_TAIL_ROWS", 50)  # convert every few batches instead of every 65,536 rows
    monkeypatch.setattr(hotcache, "_MAX_CHUNKS", 8)  # and merge chunks often
    stream = StreamKey(CONTRACT, TickType.LAST)
    stop = threading.Event()
    seen_problems: list[str] = []

    def query_while_appending() -> None:
        while not stop.is_set():
            seqs = store.engine.read_stream(stream, 0, 2**62, columns=["seq"]).column("seq").to_pylist()
            if seqs != list(range(1, len(seqs) + 1)):
                seen_problems.append(f"{len(seqs)} ticks, not 1..n in order")

    reader = threading.Thread(target=query_while_appending)
    reader.start()
    try:
        for batch in range(300):
            ticks = [trade(T0_NS + batch * 1000 + i, i) for i in range(17)]
            store.append_batch_sync(CONTRACT, "last", ticks)
    finally:
        stop.set()
        reader.join()
    assert seen_problems == []
    table = store.engine.read_stream(stream, 0, 2**62)
    assert table.column("seq").to_pylist() == list(range(1, 300 * 17 + 1))
    hot = store.buffer.hot(stream)
    assert hot is not None and len(hot.snapshot().chunks) > 1  # conversions and merges really happened
