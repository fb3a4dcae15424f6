"""Routes: `POST /v2/ticks` — an external producer appends a batch of ticks to one stream.

The endpoint needs `Authorization: Bearer <api.token>`; with no token configured it is disabled
(403), never open. Ticks go through `StreamingApp.publish`, so they are durable before the answer
and reach live subscribers like any source's ticks. A batch sent with an `idempotency_key` is
stored once: a retry with the same key gets the original answer back. The keys are remembered in
memory by this process (bounded, for `IDEMPOTENCY_TTL_SECONDS`), not across restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

from cachetools import TTLCache
from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from ib_stream.api.metrics import count_ingest
from ib_stream.api.params import MAX_CONTRACT_ID
from ib_stream.api.state import ServiceState, State
from ib_stream.domain import TickType
from ib_stream.errors import IbStreamError, TickValidationError

router = APIRouter(tags=["ingest"])
MAX_BATCH_TICKS: Final = 100_000
IDEMPOTENCY_KEYS: Final = 100_000
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 3600
_EXTRAS_KEY: Final = "idempotency"
bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="The token of setting api.token.")


class AuthenticationError(IbStreamError):
    """The request has no bearer token or a wrong one."""

    code = "UNAUTHORIZED"
    http_status = 401


class IngestDisabledError(IbStreamError):
    """No token is configured, so the endpoints that need one are switched off."""

    code = "INGEST_DISABLED"
    http_status = 403


class IdempotencyConflictError(IbStreamError):
    """An idempotency key was reused for a different batch."""

    code = "IDEMPOTENCY_CONFLICT"
    http_status = 409


class TickBatch(BaseModel):
    """A batch of ticks for one stream."""

    model_config = ConfigDict(extra="forbid")

    contract_id: int = Field(ge=1, le=MAX_CONTRACT_ID, description="IB contract id of a configured contract.")
    tick_type: str = Field(description="bid_ask, last, all_last, mid_point or depth (PascalCase accepted).")
    ticks: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_TICKS,
        description="Ticks: `ts` (int ns UTC) and the type's fields; `seq` and `recv_ts` are assigned by the store.",
    )
    source: str = Field("api", min_length=1, max_length=64, description="Source label stored with each tick.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Retries with the same key store nothing twice."
    )
    on_error: Literal["reject", "skip"] = Field(
        "reject", description="reject: a bad tick fails the whole batch (422); skip: store the good ones."
    )


async def require_token(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Let the request through only with the configured bearer token."""
    token = state.settings.api.token
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        raise IngestDisabledError(
            "this endpoint is disabled: no api.token is configured (set IB_STREAM_API__TOKEN to enable it)",
            details={"setting": "api.token"},
        )
    if credentials is None:
        raise AuthenticationError(
            "Authorization header with a bearer token is required", details={"field": "Authorization"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise AuthenticationError("bearer token is not valid", details={"field": "Authorization"})


@router.post(
    "/v2/ticks",
    summary="Append ticks from an external producer",
    dependencies=[Depends(require_token)],
    responses={
        401: {"description": "Missing or wrong bearer token"},
        403: {"description": "Disabled: no api.token configured"},
        404: {"description": "Unknown contract"},
        409: {"description": "idempotency_key reused for a different batch"},
        422: {"description": "Invalid batch or tick (names index, field and value)"},
    },
)
async def append_ticks(state: State, batch: TickBatch) -> dict[str, Any]:
    """Store the batch durably, fan it out to live subscribers and return the seq range it got."""
    state.streaming.require_contract(batch.contract_id)
    tick_type = TickType.parse(batch.tick_type, "tick_type")
    if batch.idempotency_key is None:
        return await _append_counted(state, batch, tick_type)
    cache = _idempotency_cache(state)
    result, replayed = await cache.run(
        batch.idempotency_key, fingerprint(batch, tick_type), lambda: _append_counted(state, batch, tick_type)
    )
    if replayed:
        count_ingest(state, "replayed")
    return {**result, "replayed": replayed}


async def _append_counted(state: ServiceState, batch: TickBatch, tick_type: TickType) -> dict[str, Any]:
    try:
        result = await append(state, batch, tick_type)
    except TickValidationError:
        count_ingest(state, "rejected")
        raise
    count_ingest(state, "stored")
    return result


async def append(state: ServiceState, batch: TickBatch, tick_type: TickType) -> dict[str, Any]:
    """Publish the batch; with on_error=skip the store leaves invalid ticks out and reports them."""
    result = await state.streaming.publish(batch.contract_id, tick_type, batch.ticks, batch.source, batch.on_error)
    stored = result.count > 0
    return {
        "contract_id": batch.contract_id,
        "tick_type": tick_type.value,
        "first_seq": result.first_seq if stored else None,
        "last_seq": result.last_seq if stored else None,
        "count": result.count,
        "rejected": [
            {"index": e.details.get("index"), "field": e.field, "value": e.details.get("value"), "message": e.message}
            for e in result.rejected
        ],
        "idempotency_key": batch.idempotency_key,
    }


def fingerprint(batch: TickBatch, tick_type: TickType) -> str:
    """A digest of what the batch would store (json, not orjson: ticks may hold integers of any size)."""
    payload = [batch.contract_id, tick_type.value, batch.source, batch.on_error, batch.ticks]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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


def _idempotency_cache(state: ServiceState) -> IdempotencyCache:
    cache = state.extras.get(_EXTRAS_KEY)
    if not isinstance(cache, IdempotencyCache):
        cache = state.extras[_EXTRAS_KEY] = IdempotencyCache()
    return cache
