"""The store round-trips ticks through buffer, archive and compaction."""

from __future__ import annotations

from ib_stream.clock import ManualClock
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, seconds, trade


async def test_ticks_survive_archive_and_compaction(store: TickStore, clock: ManualClock) -> None:
    for batch in range(6):
        ticks = [trade(T0_NS + seconds(batch * 300 + j), j) for j in range(50)]
        await store.append_batch(CONTRACT, "last", ticks, source="test")
        clock.advance(300)
    before = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(3600))
    assert list(before["seq"]) == list(range(1, 301))
    clock.advance(3600)
    store.run_archival()
    store.run_compaction()
    after = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + seconds(3600))
    assert after.equals(before)
