"""The service stopping as the streams see it: `drain` tells every running stream of its event loop,
waits until they ended (bounded by the grace period), and tells a stream that starts meanwhile at once;
a stream that has ended is not waited for."""

from __future__ import annotations

import asyncio
import time

from ib_stream.api.shutdown import Shutdown, drain


async def _stream(shutdown: Shutdown, linger: float, log: list[str], name: str) -> None:
    """A stream that, once told, takes `linger` seconds to say goodbye."""
    with shutdown.running():
        await shutdown.event.wait()
        await asyncio.sleep(linger)
        log.append(name)


async def test_drain_tells_every_running_stream_and_waits_until_they_ended() -> None:
    log: list[str] = []
    ended = Shutdown()
    with ended.running():
        pass  # a stream that already ended
    streams = [Shutdown(), Shutdown()]
    tasks = [
        asyncio.ensure_future(_stream(streams[0], 0.05, log, "a")),
        asyncio.ensure_future(_stream(streams[1], 0.2, log, "b")),
    ]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await drain(grace=5)
    assert log == ["a", "b"] and 0.2 <= time.monotonic() - started < 2  # until the slower one said goodbye
    assert not ended.event.is_set()
    late = Shutdown()
    with late.running():
        assert late.event.is_set()  # the service is stopping: a new stream ends at once
    await asyncio.gather(*tasks)


async def test_drain_gives_up_after_the_grace_period() -> None:
    stuck = Shutdown()
    task = asyncio.ensure_future(_stream(stuck, 60, [], "stuck"))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await drain(grace=0.3)
    assert stuck.event.is_set() and 0.3 <= time.monotonic() - started < 2
    task.cancel()


async def test_sleep_is_cut_short_when_the_service_stops() -> None:
    shutdown = Shutdown()
    with shutdown.running():
        assert await shutdown.sleep(0.01) is False
        asyncio.get_running_loop().call_later(0.05, shutdown.event.set)
        started = time.monotonic()
        assert await shutdown.sleep(10) is True and time.monotonic() - started < 2
