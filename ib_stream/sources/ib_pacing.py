"""IB pacing: sliding-window rate limits for what the IB source sends.

IB disconnects clients that send more than 50 messages a second, and answers historical requests
beyond 60 in 10 minutes (or 6 for one contract within 2 s) with a pacing violation. A `Pacer` with
`limit` per `window_seconds` makes callers wait for their turn instead:

    pacer = Pacer(60, 600)            # historical requests
    await pacer.acquire()             # returns at once while under the limit, else sleeps until a slot frees
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable


class Pacer:
    """At most `limit` acquisitions in any `window_seconds` (monotonic time)."""

    def __init__(self, limit: int, window_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError(f"pacing needs limit >= 1 and window > 0, not {limit} per {window_seconds}s")
        self.limit = limit
        self.window = window_seconds
        self._now = monotonic
        self._sent: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0

    def delay(self) -> float:
        """Seconds to wait before the next acquisition is allowed (0 when allowed now)."""
        now = self._now()
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.window - now

    def note(self) -> None:
        """Count one acquisition now (for callers that checked `delay` themselves)."""
        self._sent.append(self._now())

    async def acquire(self) -> float:
        """Wait for a slot and take it; return how long it waited."""
        waited = 0.0
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
                waited += wait
            self.note()
        self.waited_seconds += waited
        return waited
