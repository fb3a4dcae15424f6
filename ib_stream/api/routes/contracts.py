"""Routes: `GET /v2/contracts` (what is configured and held) and `GET /v2/contracts/{id}/coverage`.

What is held per stream comes from the catalog (archive files) plus the buffer's hot tier; the two
overlap while archived ticks are still hot, so counts use the seq ranges to count every tick once.
Coverage (intervals, holes, the gap ledger) is computed by `ib_stream.store.coverage`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ib_stream.api.params import ContractIdPath, parse_duration, parse_tick_types
from ib_stream.api.protocol import contract_info
from ib_stream.api.state import State
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract
from ib_stream.store.coverage import GAP_REASONS_NOTE

router = APIRouter(tags=["contracts"])


def describe_contract(contract: Contract) -> dict[str, Any]:
    return {
        "con_id": contract.con_id,
        **contract_info(contract),
        "calendar": contract.calendar,
        "tick_types": [t.value for t in contract.tick_types],
        "depth_rows": contract.depth_rows,
        "min_tick": contract.min_tick,
        "record": contract.record,
        "extra": dict(contract.extra),
    }


@router.get("/v2/contracts", summary="Configured contracts and what is held of each stream")
async def list_contracts(state: State) -> dict[str, Any]:
    """Return every configured contract with, per stream, the first/last tick time and the tick count."""
    held = await state.contract_holdings(state.contracts)
    contracts = [
        {**describe_contract(contract), "streams": streams}
        for contract, streams in zip(state.contracts, held, strict=True)
    ]
    return {"count": len(contracts), "contracts": contracts}


@router.get(
    "/v2/contracts/{contract_id}/coverage",
    summary="Time intervals held per stream, and the gaps between them",
    responses={404: {"description": "Unknown contract"}, 422: {"description": "Invalid tick type or min_gap"}},
)
async def coverage(
    state: State,
    contract_id: ContractIdPath,
    tick_types: Annotated[
        str | None, Query(description="Comma list of tick types (default: the contract's streams).")
    ] = None,
    min_gap: Annotated[
        str, Query(description="Holes shorter than this are closed; longer ones are reported as gaps (30s, 5m, 1h).")
    ] = "1m",
) -> dict[str, Any]:
    """Return, per stream, the merged intervals held (archive files + hot tier) and the gaps between them."""
    contract = state.streaming.require_contract(contract_id)
    gap_ns = parse_duration(min_gap, "min_gap")
    asked = parse_tick_types(tick_types) if tick_types is not None and tick_types.strip() else None
    report = await state.coverage(contract, asked, gap_ns)
    return {
        "contract_id": contract_id,
        "symbol": contract.symbol,
        "min_gap_seconds": gap_ns / NS_PER_SECOND,
        "gap_reasons": GAP_REASONS_NOTE,
        "streams": report,
    }
