"""The live pump on its own, over a scripted item source: `limit` (counted messages only, exactly, even
inside a batch; opening messages too), `timeout`, a slow consumer, the service stopping, a closed
source, the queue settling after the first batch, and `guarded` turning a failure into the last message.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, Iterator, Sequence

import anyio
import pytest

from ib_stream.errors import IbStreamError, SlowConsumerError, StorageError
from ib_stream.live.pump import Message, SlowConsumer, guarded, pump

SID = "s1"


class ScriptedSource:
    """Items in scripted batches: each `get` returns the next batch at once, then (when the script is
    spent) waits up to its timeout for `push`. Records the timeouts asked for and cancelled waits."""

    def __init__(self, *batches: list[int], error: Exception | None = None) -> None:
        self.batches = collections.deque(batches)
        self.error = error  # raised once the script is spent
        self.closed = False
        self.timeouts: list[float | None] = []
        self.cancelled = 0
        self.resized: list[int] = []
        self._more = asyncio.Event()

    def push(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self._more.set()

    def close(self) -> None:
        self.closed = True
        self._more.set()

    async def get(self, timeout: float | None = None) -> list[int]:
        self.timeouts.append(timeout)
        if not self.batches and self.error is not None:
            raise self.error
        if not self.batches and not self.closed:
            self._more.clear()
            try:
                await asyncio.wait_for(self._more.wait(), timeout)
            except TimeoutError:
                return []
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return self.batches.popleft() if self.batches else []

    def resize(self, max_queue: int) -> None:
        self.resized.append(max_queue)


class Encoder:
    """Items as messages: a `tick` per item >= 0, an uncounted `note` per negative item; records what it built."""

    def __init__(self) -> None:
        self.built: list[int] = []

    def __call__(self, items: Sequence[int]) -> Iterator[Message]:
        for item in items:
            self.built.append(item)
            yield {"type": "tick" if item >= 0 else "note", "stream_id": SID, "data": {"item": item}}


async def run(gen: AsyncGenerator[list[Message], None]) -> list[list[Message]]:
    return [batch async for batch in gen]


def flat(batches: list[list[Message]]) -> list[Message]:
    return [m for batch in batches for m in batch]


def items_of(messages: list[Message]) -> list[int]:
    return [m["data"]["item"] for m in messages if m["type"] in ("tick", "note")]


async def test_limit_ends_after_exactly_n_counted_messages_even_inside_a_batch() -> None:
    source, encode = ScriptedSource([1, -1, 2], [3, -2, 4, 5, 6]), Encoder()
    out = flat(await run(pump(source, SID, encode, limit=4, timeout=None)))
    assert items_of(out) == [1, -1, 2, 3, -2, 4]  # notes pass uncounted; 5 and 6 are beyond the limit
    assert encode.built == [1, -1, 2, 3, -2, 4]  # and are never built
    done = out[-1]
    assert done["type"] == "complete" and done["stream_id"] == SID
    assert done["data"]["reason"] == "limit_reached" and done["data"]["total_ticks"] == 4
    assert len(source.batches) == 0 and source.timeouts == [None, None]


async def test_opening_messages_come_first_and_count_toward_the_limit() -> None:
    source = ScriptedSource([1])
    opening = [{"type": "bar", "data": {}}, {"type": "bar", "data": {}}, {"type": "info", "data": {}}]
    batches = await run(pump(source, SID, Encoder(), limit=2, timeout=None, counts="bar", opening=opening))
    assert [[m["type"] for m in b] for b in batches] == [["bar", "bar", "complete"]]
    assert batches[0][-1]["data"]["total_ticks"] == 2 and source.timeouts == []  # the source was never read
    source = ScriptedSource([1, 2])
    batches = await run(pump(source, SID, Encoder(), limit=3, timeout=None, opening=[{"type": "tick", "data": {}}]))
    assert [[m["type"] for m in b] for b in batches] == [["tick"], ["tick", "tick", "complete"]]


async def test_timeout_ends_with_complete_counting_what_was_sent() -> None:
    source = ScriptedSource([1, 2])
    started = time.monotonic()
    out = flat(await run(pump(source, SID, Encoder(), limit=10, timeout=0.3)))
    elapsed = time.monotonic() - started
    assert items_of(out) == [1, 2] and out[-1]["type"] == "complete"
    assert out[-1]["data"]["reason"] == "timeout" and out[-1]["data"]["total_ticks"] == 2
    assert out[-1]["data"]["duration_seconds"] >= 0.3 and 0.3 <= elapsed < 2
    # Each wait is what is left of the timeout, never more.
    waits = [t for t in source.timeouts if t is not None]
    assert len(waits) == len(source.timeouts) >= 2 and all(0 < t <= 0.3 for t in waits)
    assert waits == sorted(waits, reverse=True)


async def test_the_timeout_counts_from_started() -> None:
    out = flat(
        await run(pump(ScriptedSource([1]), SID, Encoder(), limit=None, timeout=5, started=time.monotonic() - 5))
    )
    assert [m["type"] for m in out] == ["complete"] and out[0]["data"]["reason"] == "timeout"


async def test_a_slow_consumer_ends_with_its_error() -> None:
    slow = SlowConsumerError("subscriber fell more than 10 messages behind", details={"max_queue": 10})
    batches = await run(pump(ScriptedSource([1, 2], error=slow), SID, Encoder(), limit=None, timeout=None))
    assert items_of(flat(batches)) == [1, 2] and len(batches[-1]) == 1
    error = batches[-1][0]
    assert error["type"] == "error" and error["stream_id"] == SID
    assert error["data"] == {
        "code": "SLOW_CONSUMER",
        "message": "subscriber fell more than 10 messages behind",
        "details": {"max_queue": 10},
        "recoverable": True,
    }


@pytest.mark.parametrize("event_type", [asyncio.Event, anyio.Event])
async def test_the_service_stopping_ends_a_waiting_stream_with_server_shutdown(event_type: type) -> None:
    source, stop = ScriptedSource([1]), event_type()
    gen = pump(source, SID, Encoder(), limit=None, timeout=None, shutdown=stop)
    assert items_of(await anext(gen)) == [1]
    waiting = asyncio.ensure_future(anext(gen))
    await asyncio.sleep(0.05)
    assert not waiting.done() and source.timeouts == [None, None]  # waiting for items
    stop.set()
    last = await asyncio.wait_for(waiting, 5)
    assert [m["type"] for m in last] == ["complete"] and last[0]["data"]["reason"] == "server_shutdown"
    assert last[0]["data"]["total_ticks"] == 1 and source.cancelled == 1  # the wait was given up
    with pytest.raises(StopAsyncIteration):
        await anext(gen)
    source.push([2])  # nothing more is sent, and the source still holds the item
    assert list(source.batches) == [[2]]


async def test_a_closed_source_ends_with_server_shutdown() -> None:
    source = ScriptedSource([1, 2])
    gen = pump(source, SID, Encoder(), limit=None, timeout=None)
    assert items_of(await anext(gen)) == [1, 2]
    asyncio.get_running_loop().call_later(0.05, source.close)
    last = await asyncio.wait_for(anext(gen), 5)
    assert last[-1]["type"] == "complete" and last[-1]["data"]["reason"] == "server_shutdown"
    assert last[-1]["data"]["total_ticks"] == 2


async def test_the_queue_settles_after_the_first_batch() -> None:
    source = ScriptedSource([1], [2], [3])
    await run(pump(source, SID, Encoder(), limit=3, timeout=None, slow_consumer=SlowConsumer(settle_queue=7)))
    assert source.resized == [7]
    source = ScriptedSource([1], [2])
    await run(pump(source, SID, Encoder(), limit=2, timeout=None))
    assert source.resized == []


async def test_nothing_follows_the_last_message() -> None:
    for kwargs in ({"limit": 1, "timeout": None}, {"limit": None, "timeout": 0.05}):
        batches = await run(pump(ScriptedSource([1, 2], [3]), SID, Encoder(), **kwargs))
        kinds = [m["type"] for m in flat(batches)]
        assert kinds[-1] == "complete" and kinds.count("complete") == 1 and all(batches)


async def test_guarded_makes_a_failure_the_last_message_and_closes_the_stream() -> None:
    closed: list[str] = []

    async def failing(error: Exception) -> AsyncGenerator[list[Message], None]:
        try:
            yield [{"type": "info", "data": {}}]
            raise error
        finally:
            closed.append(type(error).__name__)

    got = await run(guarded(failing(StorageError("history could not be read")), SID))
    assert [m["type"] for m in flat(got)] == ["info", "error"]
    assert got[-1][0]["data"]["code"] == "STORAGE_ERROR" and got[-1][0]["data"]["recoverable"] is True
    got = await run(guarded(failing(KeyError("bug")), SID))
    assert got[-1][0]["data"] == {
        "code": "INTERNAL_ERROR",
        "message": "internal server error",
        "details": {},
        "recoverable": True,
    }
    assert closed == ["StorageError", "KeyError"]
    stream = guarded(failing(IbStreamError("never raised")), SID)
    await anext(stream)
    await stream.aclose()  # a consumer that leaves early closes the stream it guards
    assert closed[-1] == "IbStreamError"
