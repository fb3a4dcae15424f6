"""The idempotency keys of `POST /v2/ticks`: the answers already given per key and the appends in flight.

The keys are remembered in memory by this process (bounded, for `IDEMPOTENCY_TTL_SECONDS`), not across
restarts; the service façade owns one cache (`ServiceState.idempotency`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from cachetools import TTLCache

from ib_stream.errors import IbStreamError

IDEMPOTENCY_KEYS: Final = 100_000
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 3600


class IdempotencyConflictError(IbStreamError):
    """An idempotency key was reused for a different batch."""

    code = "IDEMPOTENCY_CONFLICT"
    http_status = 409


class IdempotencyCache:
    """Answers already given per idempotency key (bounded, TTL) and the appends in flight.

    An append runs in its own task, so a client that disconnects mid-request cannot leave a stored
    batch unremembered; a concurrent retry with the same key waits for that task instead of storing.
    """

    def __init__(self, maxsize: int = IDEMPOTENCY_KEYS, ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS) -> None:
        self._done: TTLCache[str, tuple[str, dict[str, Any]]] = TTLCache(maxsize=maxsize, ttl=ttl_seconds)
        self._inflight: dict[str, tuple[str, asyncio.Task[dict[str, Any]]]] = {}

    async def run(
        self, key: str, digest: str, produce: Callable[[], Awaitable[dict[str, Any]]]
    ) -> tuple[dict[str, Any], bool]:
        """Return (result, replayed): the remembered result of `key`, or the result of `produce()`."""
        done = self._done.get(key)
        if done is not None:
            self._check(key, digest, done[0])
            return done[1], True
        inflight = self._inflight.get(key)
        if inflight is not None:
            self._check(key, digest, inflight[0])
            return await asyncio.shield(inflight[1]), True
        task = asyncio.ensure_future(self._produce(key, digest, produce))
        self._inflight[key] = (digest, task)
        task.add_done_callback(lambda t: self._finished(key, t))
        return await asyncio.shield(task), False

    async def _produce(self, key: str, digest: str, produce: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        result = await produce()
        self._done[key] = (digest, result)
        return result

    def _finished(self, key: str, task: asyncio.Task[dict[str, Any]]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here: the request that started it may be gone

    @staticmethod
    def _check(key: str, digest: str, remembered: str) -> None:
        if digest != remembered:
            raise IdempotencyConflictError(
                f"idempotency_key {key} was already used for a different batch",
                details={"field": "idempotency_key", "value": key},
            )
