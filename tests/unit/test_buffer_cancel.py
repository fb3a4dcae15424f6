"""A caller cancelled while waiting for its append does not break the buffer (shutdown path)."""

from __future__ import annotations

import asyncio

from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, trade


async def test_cancelled_waiter_leaves_the_writer_running(store: TickStore) -> None:
    waiter = asyncio.ensure_future(store.append_batch(CONTRACT, "last", [trade(T0_NS + i, i) for i in range(100)]))
    await asyncio.sleep(0)
    waiter.cancel()
    result = await store.append_batch(CONTRACT, "last", [trade(T0_NS + 500, 1)])
    assert result.first_seq == 101  # the cancelled batch was still written, in order
    frame = await StorageQuery(store.engine).query_range(CONTRACT, "last", T0_NS, T0_NS + 10**9)
    assert list(frame["seq"]) == list(range(1, 102))
