"""Routes: `GET /v2/bars/{contract_id}` — order-flow bars (OHLC, CVD, OBI) — and `/v2/bars/{contract_id}/summary`.

The range is [start_time, end_time), or without start_time the session of `date` (default: the
current one) of type `session`. Bars come back in the formats of /v2/historical (JSON, CSV,
Arrow IPC, Parquet); the service façade runs the computation off the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from starlette.responses import StreamingResponse

from ib_stream.analytics.grid import BAR_RESOLUTIONS
from ib_stream.analytics.request import (
    ANCHORS,
    DEFAULT_LEVELS,
    KINDS,
    MAX_LEVELS,
    OBI_SOURCES,
    BarsRequest,
    parse_bar_resolution,
    parse_kinds,
    parse_levels,
    parse_trades,
)
from ib_stream.api.formats import MEDIA_TYPES, ResultFormat, streaming_response
from ib_stream.api.params import ContractIdPath, check_bar_budget
from ib_stream.api.state import ServiceState, State
from ib_stream.api.windows import resolve_window
from ib_stream.calendars import SESSION_TYPES, check_session_type
from ib_stream.orderflow.service import OrderFlow
from ib_stream.times import iso_basic, iso_ns

router = APIRouter(prefix="/v2/bars", tags=["bars"])

StartTime = Annotated[
    str | None,
    Query(description="Range start, ISO-8601 with Z or an offset (inclusive); default: the session's start."),
]
EndTime = Annotated[str | None, Query(description="Range end (exclusive); default now, or the session's end.")]
Session = Annotated[
    str,
    Query(
        description="Session type for the window without start_time, the CVD reset and `1d` bars.",
        json_schema_extra={"enum": list(SESSION_TYPES)},
    ),
]
Date = Annotated[
    str | None, Query(description="Trading date (YYYY-MM-DD) of the session window used without start_time.")
]
Levels = Annotated[
    int | None, Query(description=f"Depth levels per side for OBI from depth (1..{MAX_LEVELS}, default 10).")
]
Trades = Annotated[
    str, Query(description="Trade stream: last or all_last.", json_schema_extra={"enum": ["last", "all_last"]})
]
Anchor = Annotated[
    str,
    Query(
        description="CVD restarts at each session start, or once at the range start.",
        json_schema_extra={"enum": list(ANCHORS)},
    ),
]
ObiSource = Annotated[
    str,
    Query(
        description="OBI from top-N depth, from top-of-book quote sizes, or auto (depth when recorded).",
        json_schema_extra={"enum": list(OBI_SOURCES)},
    ),
]
_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "One row per bar. JSON: a document with `data` rows; other formats: the rows as a file.",
        "content": {MEDIA_TYPES[f]: {} for f in ("csv", "arrow", "parquet")},
    },
    400: {"description": "The query cannot be answered as asked (end not after start, too many bars, no depth)"},
    404: {"description": "Unknown contract, or no session on that date"},
    422: {"description": "A parameter is invalid (kinds, resolution, time without offset, levels, session)"},
}


@router.get("/{contract_id}", summary="Order-flow bars: OHLC, CVD and OBI", responses=_RESPONSES)
async def bars(
    state: State,
    contract_id: ContractIdPath,
    kinds: Annotated[str, Query(description="Comma list of ohlc, cvd, obi.", examples=["ohlc,cvd,obi"])] = ",".join(
        KINDS
    ),
    resolution: Annotated[
        str,
        Query(description="Bar size; `1d` = one bar per session.", json_schema_extra={"enum": list(BAR_RESOLUTIONS)}),
    ] = "1m",
    start_time: StartTime = None,
    end_time: EndTime = None,
    session: Session = "regular",
    date: Date = None,
    levels: Levels = None,
    trades: Trades = "last",
    anchor: Anchor = "session",
    obi_source: ObiSource = "auto",
    fmt: Annotated[ResultFormat, Query(alias="format", description="Output format.")] = "json",
) -> StreamingResponse:
    """Return order-flow bars of a contract over a range or a session, streamed in the asked format."""
    flow, request = await _request(
        state, contract_id, kinds, resolution, start_time, end_time, session, date, levels, trades, anchor, obi_source
    )
    result = await state.bars(flow, request)
    header = {
        **_describe(request),
        "format": "json",
        "obi_source": result.obi_source,
        "side_methods": result.side_methods,
        "count": result.table.num_rows,
    }
    headers = {"X-Total-Count": str(result.table.num_rows)}
    if result.obi_source is not None:
        headers["X-OBI-Source"] = result.obi_source
    filename = (
        f"{request.contract_id}_bars_{'-'.join(request.kinds)}_{request.resolution}_{iso_basic(request.start_ns)}"
    )
    return streaming_response(fmt, result.table, json_header=header, filename=filename, headers=headers)


@router.get("/{contract_id}/summary", summary="Order-flow summary of a range", responses=_RESPONSES)
async def summary(
    state: State,
    contract_id: ContractIdPath,
    start_time: StartTime = None,
    end_time: EndTime = None,
    session: Session = "regular",
    date: Date = None,
    levels: Levels = None,
    trades: Trades = "last",
    anchor: Anchor = "session",
    obi_source: ObiSource = "auto",
    profile: Annotated[bool, Query(description="Include the volume profile's levels ([price, volume] pairs).")] = False,
) -> dict[str, Any]:
    """Price OHLC, volume, VWAP, buy / sell volume, CVD change, OBI min / max / mean and the volume profile."""
    flow, request = await _request(
        state,
        contract_id,
        ",".join(KINDS),
        "1m",
        start_time,
        end_time,
        session,
        date,
        levels,
        trades,
        anchor,
        obi_source,
        check_grid=False,
    )
    return await state.bars_summary(flow, request, profile_levels=profile)


async def _request(
    state: ServiceState,
    contract_id: int,
    kinds: str,
    resolution: str,
    start_time: str | None,
    end_time: str | None,
    session: str,
    date: str | None,
    levels: int | None,
    trades: str,
    anchor: str,
    obi_source: str,
    check_grid: bool = True,
) -> tuple[OrderFlow, BarsRequest]:
    """Validate the parameters (each failure names the field and value) and resolve the time window."""
    contract = state.streaming.require_contract(contract_id)
    parsed_kinds = parse_kinds(kinds)
    parsed_resolution = parse_bar_resolution(resolution)
    check_session_type(session, "session")
    parsed_levels = parse_levels(levels)
    trade_type = parse_trades(trades)
    flow = await state.order_flow(contract)
    start, end = await resolve_window(state, flow, start_time, end_time, session, date)
    check_bar_budget(state.settings.api, start, end, parsed_resolution)
    request = BarsRequest(
        contract_id=contract.con_id,
        start_ns=start,
        end_ns=end,
        resolution=parsed_resolution,
        kinds=parsed_kinds,
        session=session,
        levels=parsed_levels,
        trades=trade_type,
        anchor=anchor,
        obi_source=obi_source,
    )
    flow.sessions.require_session_type(session, "session")
    if check_grid and request.resolution != "1d":
        flow.grid(request)  # refuses too many bars before anything is read
    return flow, request


def _describe(request: BarsRequest) -> dict[str, Any]:
    return {
        "contract_id": request.contract_id,
        "kinds": list(request.kinds),
        "resolution": request.resolution,
        "start_time": iso_ns(request.start_ns),
        "end_time": iso_ns(request.end_ns),
        "session": request.session,
        "anchor": request.anchor,
        "trades": request.trades.value,
        "levels": request.levels if request.levels is not None else DEFAULT_LEVELS,
    }
