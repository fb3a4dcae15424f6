"""Routes: `GET /v2/footprint/{contract_id}` — footprint bars (volume by price level and aggressor side, delta, POC,
diagonal imbalances), the order-flow dashboard's main chart.

The range parameters are those of `/v2/bars`; JSON nests each bar's levels, CSV / Arrow / Parquet give one row per
bar × level. The service façade runs the computation off the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from starlette.responses import Response

from ib_stream.analytics.footprint import (
    DEFAULT_IMBALANCE_RATIO,
    MAX_CELLS,
    Footprint,
    parse_imbalance_ratio,
    parse_price_step,
)
from ib_stream.analytics.grid import BAR_RESOLUTIONS, parse_bar_resolution
from ib_stream.analytics.request import BarsRequest, parse_trades
from ib_stream.api.formats import MEDIA_TYPES, ResultFormat, streaming_response
from ib_stream.api.params import ContractIdPath, check_bar_budget
from ib_stream.api.responses import OrjsonResponse
from ib_stream.api.state import State
from ib_stream.api.windows import WindowDate, WindowEnd, WindowSession, WindowStart, resolve_window
from ib_stream.times import iso_basic, iso_ns

router = APIRouter(tags=["order flow dashboard"])

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Bars with trades, each with its price levels (JSON), or one row per bar × level (CSV, Arrow, "
        "Parquet).",
        "content": {MEDIA_TYPES[f]: {} for f in ("csv", "arrow", "parquet")},
    },
    400: {
        "description": "Cannot be answered as asked (end not after start, too many bars, too many bar × price cells)"
    },
    404: {"description": "Unknown contract, or no session on that date"},
    422: {"description": "A parameter is invalid (price_step, imbalance_ratio, resolution, time without offset)"},
}


@router.get("/v2/footprint/{contract_id}", summary="Footprint bars: volume by price and side", responses=_RESPONSES)
async def footprint(
    state: State,
    contract_id: ContractIdPath,
    start_time: WindowStart = None,
    end_time: WindowEnd = None,
    session: WindowSession = "regular",
    date: WindowDate = None,
    resolution: Annotated[
        str,
        Query(description="Bar size; `1d` = one bar per session.", json_schema_extra={"enum": list(BAR_RESOLUTIONS)}),
    ] = "1m",
    trades: Annotated[
        str, Query(description="Trade stream: last or all_last.", json_schema_extra={"enum": ["last", "all_last"]})
    ] = "last",
    price_step: Annotated[
        float | None, Query(description="Price level height (> 0); default the contract's min_tick.", examples=[0.01])
    ] = None,
    imbalance_ratio: Annotated[
        float, Query(description="Diagonal imbalance ratio (> 1).", examples=[DEFAULT_IMBALANCE_RATIO])
    ] = DEFAULT_IMBALANCE_RATIO,
    fmt: Annotated[ResultFormat, Query(alias="format", description="Output format.")] = "json",
) -> Response:
    """Return footprint bars of a contract over a range or a session (only bars with trades)."""
    contract = state.streaming.require_contract(contract_id)
    parsed_resolution = parse_bar_resolution(resolution)
    trade_type = parse_trades(trades)
    step = parse_price_step(contract.min_tick if price_step is None else price_step)
    ratio = parse_imbalance_ratio(imbalance_ratio)
    flow = await state.order_flow(contract)
    start, end = await resolve_window(state, flow, start_time, end_time, session, date)
    check_bar_budget(state.settings.api, start, end, parsed_resolution)
    request = BarsRequest(contract.con_id, start, end, parsed_resolution, ("ohlc",), session, trades=trade_type)
    if request.resolution != "1d":
        flow.grid(request)  # refuses too many bars before anything is read
    found = await state.footprint(flow, request, step, ratio)
    header = {
        "contract_id": contract.con_id,
        "resolution": request.resolution,
        "start_time": iso_ns(start),
        "end_time": iso_ns(end),
        "session": session,
        "trades": trade_type.value,
        "price_step": found.price_step,
        "imbalance_ratio": found.imbalance_ratio,
        "max_cells": MAX_CELLS,
        "count": len(found),
    }
    headers = {"X-Total-Count": str(len(found))}
    if fmt != "json":
        name = f"{contract.con_id}_footprint_{request.resolution}_{iso_basic(start)}"
        return streaming_response(fmt, found.long_table(), json_header=header, filename=name, headers=headers)
    document = await state.run(_document, header, found)
    return OrjsonResponse(document, headers=headers)


def _document(header: dict[str, Any], found: Footprint) -> dict[str, Any]:
    """The JSON answer: the header and one object per bar (timestamp, ts, the bar's fields, its levels)."""
    labels = found.labels.tolist()
    data = [
        {"timestamp": iso_ns(label), "ts": label, **bar} for label, bar in zip(labels, found.documents(), strict=True)
    ]
    return {**header, "data": data}
