"""Routes: `GET /v2/depth/{contract_id}` — the L2 order book at an instant, rebuilt from a snapshot plus deltas."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from ib_stream.analytics.book import Level
from ib_stream.analytics.request import DEFAULT_LEVELS, MAX_LEVELS, parse_levels
from ib_stream.api.params import ContractIdPath
from ib_stream.api.state import State
from ib_stream.store.snapshots import BookAt
from ib_stream.times import iso_ns, parse_http_time

router = APIRouter(tags=["depth"])

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "The book: bids and asks best first, cumulative depth, and how it was rebuilt."},
    404: {"description": "Unknown contract"},
    422: {"description": "A parameter is invalid (time without offset, levels out of range)"},
}


@router.get("/v2/depth/{contract_id}", summary="The L2 order book at an instant", responses=_RESPONSES)
async def depth(
    state: State,
    contract_id: ContractIdPath,
    at: Annotated[
        str | None,
        Query(
            description="Instant, ISO-8601 with Z or an offset; every depth update stamped at or before it is "
            "applied. Default now.",
            examples=["2025-01-10T14:30:00Z"],
        ),
    ] = None,
    levels: Annotated[
        int | None, Query(description=f"Levels (rows) per side, 1..{MAX_LEVELS}; default {DEFAULT_LEVELS}.")
    ] = None,
) -> dict[str, Any]:
    """Return the book of a contract at `at`: the latest valid snapshot before it plus the depth updates since."""
    state.streaming.require_contract(contract_id)
    at_ns = state.clock.now_ns() if at is None else parse_http_time(at, "at")
    return depth_document(await state.book_at(contract_id, at_ns, parse_levels(levels)))


def depth_document(result: BookAt) -> dict[str, Any]:
    """The JSON document of a book at an instant (prices and sizes as [price, size] pairs, best first)."""
    book = result.book
    cumulative_bids, cumulative_asks = result.cumulative()
    return {
        "contract_id": result.contract_id,
        "at": iso_ns(result.at_ns),
        "levels": result.depth,
        "mode": None if book.by_price is None else ("price_levels" if book.by_price else "position_rows"),
        "bids": _pairs(result.bids),
        "asks": _pairs(result.asks),
        "cumulative": {"bids": _pairs(cumulative_bids), "asks": _pairs(cumulative_asks)},
        "last_update": None if book.last_ts is None else iso_ns(book.last_ts),
        "snapshot_used": None if result.snapshot is None else iso_ns(result.snapshot.boundary_ns),
        "deltas_replayed": result.deltas_replayed,
    }


def _pairs(levels: list[Level]) -> list[list[float]]:
    return [[price, size] for price, size in levels]
