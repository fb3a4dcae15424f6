"""Routes: `GET /v2/heatmap/{contract_id}` — the liquidity heatmap: time-weighted mean resting L2 size per time column
× price row, bids and asks apart, from the book at the window start (snapshot + deltas) and the depth ticks after it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import numpy as np
from fastapi import APIRouter, Query

from ib_stream.analytics.heatmap import (
    DEFAULT_COLUMNS,
    DEFAULT_ROWS,
    MAX_COLUMNS,
    MAX_ROWS,
    parse_grid_size,
    parse_price,
)
from ib_stream.analytics.request import MAX_LEVELS, parse_levels
from ib_stream.api.params import ContractIdPath, check_range
from ib_stream.api.responses import OrjsonResponse
from ib_stream.api.state import State
from ib_stream.api.windows import WindowDate, WindowEnd, WindowSession, WindowStart, resolve_window
from ib_stream.orderflow.dashboard import HeatmapResult
from ib_stream.times import iso_ns

router = APIRouter(tags=["order flow dashboard"])

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The bids and asks matrices (rows × columns), the time and price axes, how the book was built."
    },
    400: {"description": "Cannot be answered as asked (end not after start, range too long, too many depth updates)"},
    404: {"description": "Unknown contract, no session on that date, or no depth recorded in the window"},
    422: {"description": "A parameter is invalid (columns, rows, price_low, price_high, levels, time without offset)"},
}


@router.get("/v2/heatmap/{contract_id}", summary="Liquidity heatmap: resting L2 size over time", responses=_RESPONSES)
async def heatmap(
    state: State,
    contract_id: ContractIdPath,
    start_time: WindowStart = None,
    end_time: WindowEnd = None,
    session: WindowSession = "regular",
    date: WindowDate = None,
    columns: Annotated[int, Query(description=f"Time columns (at most; 1..{MAX_COLUMNS}).")] = DEFAULT_COLUMNS,
    rows: Annotated[int, Query(description=f"Price rows (at most; 1..{MAX_ROWS}).")] = DEFAULT_ROWS,
    price_low: Annotated[
        float | None, Query(description="Lowest price shown; default the lowest resting price in the window.")
    ] = None,
    price_high: Annotated[
        float | None, Query(description="Highest price shown; default the highest resting price in the window.")
    ] = None,
    levels: Annotated[
        int | None, Query(description=f"Depth rows / levels per side considered (1..{MAX_LEVELS}); default all.")
    ] = None,
) -> OrjsonResponse:
    """Return the resting-liquidity heatmap of a contract over a range or a session."""
    contract = state.streaming.require_contract(contract_id)
    n_columns = parse_grid_size(columns, "columns", DEFAULT_COLUMNS, MAX_COLUMNS)
    n_rows = parse_grid_size(rows, "rows", DEFAULT_ROWS, MAX_ROWS)
    low, high = parse_price(price_low, "price_low"), parse_price(price_high, "price_high")
    depth = None if levels is None else parse_levels(levels)
    flow = await state.order_flow(contract)
    start, end = await resolve_window(state, flow, start_time, end_time, session, date)
    check_range(state.settings.api, start, end)
    result = await state.heatmap(contract.con_id, start, end, n_columns, n_rows, low, high, depth)
    return OrjsonResponse(await state.run(heatmap_document, result))


def heatmap_document(result: HeatmapResult) -> dict[str, Any]:
    """The JSON answer of a heatmap (matrices as lists of rows, ascending price; sizes rounded to 0.01)."""
    found = result.map
    axis = found.axis
    return {
        "contract_id": result.contract_id,
        "start_time": iso_ns(result.start_ns),
        "end_time": iso_ns(result.end_ns),
        "columns": found.columns,
        "rows": axis.rows,
        "column_ns": found.column_ns,
        "times": [iso_ns(t) for t in found.column_starts().tolist()],
        "price_low": float(np.round(axis.low, 12)),
        "price_high": float(np.round(axis.high, 12)),
        "price_step": float(np.round(axis.height, 12)),
        "prices": axis.centres(),
        "bids": np.round(found.bids, 2),
        "asks": np.round(found.asks, 2),
        "max_size": round(found.max_size, 2),
        "snapshot_used": None if result.snapshot_ns is None else iso_ns(result.snapshot_ns),
        "deltas_replayed": result.deltas_replayed,
        "rollups_used": result.rollups_used,
    }
