"""Routes: `POST /v2/ticks` — an external producer appends a batch of ticks to one stream.

The endpoint needs `Authorization: Bearer <api.token>`; with no token configured it is disabled
(403), never open. Ticks go through `StreamingApp.publish`, so they are durable before the answer
and reach live subscribers like any source's ticks. A batch sent with an `idempotency_key` is
stored once: a retry with the same key gets the original answer back (`ib_stream.api.idempotency`).
A tick whose `ts` is more than `api.max_future_skew_seconds` ahead of the service clock is refused
(422 naming it, nothing of the batch stored; with `on_error=skip` it is listed in `rejected`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ib_stream.api.auth import require_token
from ib_stream.api.params import MAX_CONTRACT_ID
from ib_stream.api.state import ServiceState, State
from ib_stream.domain import TickType
from ib_stream.errors import TickValidationError
from ib_stream.times import FutureSkew

router = APIRouter(tags=["ingest"])
MAX_BATCH_TICKS: Final = 100_000


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


# OpenAPI links: what a client (or a stateful test) can read of the contract a batch was stored for.
_CONTRACT = {"contract_id": "$response.body#/contract_id"}
_READS_OF_THE_CONTRACT = {
    "latest": {"operationId": "latest_v2_latest__contract_id__get", "parameters": _CONTRACT},
    "coverage": {"operationId": "coverage_v2_contracts__contract_id__coverage_get", "parameters": _CONTRACT},
    "historical": {
        "operationId": "historical_v2_historical__contract_id__get",
        "parameters": {**_CONTRACT, "tick_types": "$response.body#/tick_type"},
    },
}


@router.post(
    "/v2/ticks",
    summary="Append ticks from an external producer",
    dependencies=[Depends(require_token)],
    responses={
        200: {"description": "Stored: the seq range the batch got", "links": _READS_OF_THE_CONTRACT},
        401: {"description": "Missing or wrong bearer token"},
        403: {"description": "Disabled: no api.token configured"},
        404: {"description": "Unknown contract"},
        409: {"description": "idempotency_key reused for a different batch"},
        413: {"description": "Body larger than api.max_body_mb"},
        422: {"description": "Invalid batch or tick, or a tick too far in the future (names index, field and value)"},
        503: {"description": "The store cannot write (I/O error): nothing stored; retry after Retry-After"},
        507: {"description": "The disk is full: nothing stored; retry after Retry-After"},
    },
)
async def append_ticks(state: State, batch: TickBatch) -> dict[str, Any]:
    """Store the batch durably, fan it out to live subscribers and return the seq range it got."""
    state.streaming.require_contract(batch.contract_id)
    tick_type = TickType.parse(batch.tick_type, "tick_type")
    if batch.idempotency_key is None:
        return await _append_counted(state, batch, tick_type)
    result, replayed = await state.idempotency.run(
        batch.idempotency_key, fingerprint(batch, tick_type), lambda: _append_counted(state, batch, tick_type)
    )
    if replayed:
        state.metrics.count_ingest("replayed")
    return {**result, "replayed": replayed}


async def _append_counted(state: ServiceState, batch: TickBatch, tick_type: TickType) -> dict[str, Any]:
    try:
        result = await append(state, batch, tick_type)
    except TickValidationError:
        state.metrics.count_ingest("rejected")
        raise
    state.metrics.count_ingest("stored")
    return result


async def append(state: ServiceState, batch: TickBatch, tick_type: TickType) -> dict[str, Any]:
    """Publish the batch; with on_error=skip the store leaves invalid ticks out and reports them."""
    skew = FutureSkew.of_seconds(state.settings.api.max_future_skew_seconds, "api.max_future_skew_seconds")
    result = await state.streaming.publish(
        batch.contract_id, tick_type, batch.ticks, batch.source, batch.on_error, future_skew=skew
    )
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
