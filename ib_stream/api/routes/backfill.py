"""Route: `POST /v2/contracts/{id}/backfill` — fill a span from IB history through the running IB source.

The service holds the data root, so this is how `ib-stream backfill` works while it runs. It needs
the bearer token (like POST /v2/ticks) and the IB source; the answer comes when the span is done
(IB's pacing allows 60 requests of 1,000 ticks per 10 minutes, so a long busy span takes a while).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from ib_stream.api.auth import require_token
from ib_stream.api.params import ContractIdPath, parse_tick_types
from ib_stream.api.state import State
from ib_stream.errors import IbStreamError, ValidationError
from ib_stream.sources.ib_backfill import backfillable
from ib_stream.times import parse_http_time

router = APIRouter(tags=["recording"])


class NoIbSourceError(IbStreamError):
    """Backfill needs the IB source, and the service records another one."""

    code = "NO_IB_SOURCE"
    http_status = 409


@router.post(
    "/v2/contracts/{contract_id}/backfill",
    dependencies=[Depends(require_token)],
    summary="Backfill a span of a contract's streams from IB's historical ticks (no duplicates)",
    responses={
        401: {"description": "Missing or wrong bearer token"},
        403: {"description": "Disabled: no api.token configured"},
        404: {"description": "Unknown contract"},
        409: {"description": "The service is not recording from IB"},
        422: {"description": "Invalid times or tick types"},
    },
)
async def backfill(
    state: State,
    contract_id: ContractIdPath,
    start_time: Annotated[str, Query(description="Start of the span (ISO-8601 with offset or Z).")],
    end_time: Annotated[str, Query(description="End of the span, exclusive (ISO-8601 with offset or Z).")],
    tick_types: Annotated[
        str | None, Query(description="Comma list of tick types (default: the contract's backfillable streams).")
    ] = None,
) -> dict[str, Any]:
    """Request the span from IB and store the ticks the store does not hold; mark covered ledger gaps."""
    contract = state.streaming.require_contract(contract_id)
    start_ns, end_ns = parse_http_time(start_time, "start_time"), parse_http_time(end_time, "end_time")
    if end_ns <= start_ns:
        raise ValidationError("end_time", end_time, "must be after start_time")
    asked = parse_tick_types(tick_types) if tick_types else contract.tick_types
    wanted = [t for t in asked if backfillable(t)]
    if not wanted:
        raise ValidationError("tick_types", tick_types or "", "has nothing IB can backfill (no history for depth)")
    from ib_stream.sources.ib import IbSource

    source = next((s for s in state.streaming.sources if isinstance(s, IbSource)), None)
    if source is None:
        raise NoIbSourceError(
            f"the service records from {state.source_name}, not IB: backfill needs the IB source",
            details={"source": state.source_name},
        )
    backfiller = state.backfiller(source.fetch_history, source.gate)  # serialised with its live ticks
    results = []
    for tick_type in wanted:
        result, marked = await backfiller.fill_span(contract, tick_type, start_ns, end_ns)
        results.append({**result.summary(), "gaps_marked": marked})
    skipped = [t.value for t in asked if t not in wanted]
    return {"contract_id": contract_id, "results": results, "skipped": skipped}
