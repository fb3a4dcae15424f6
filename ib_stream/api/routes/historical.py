"""Routes: `GET /v2/historical/{contract_id}` — ticks or bars of a range as JSON, CSV, Arrow IPC or Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import StreamingResponse

from ib_stream.analytics.grid import RESOLUTIONS, parse_resolution
from ib_stream.api.formats import MEDIA_TYPES, ResultFormat, frame_to_table, streaming_response
from ib_stream.api.params import ContractIdPath, check_bar_budget, parse_tick_types
from ib_stream.api.state import ServiceState, State
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import TickType
from ib_stream.errors import QueryError, ValidationError
from ib_stream.orderflow.historical import check_bars_of
from ib_stream.times import iso_basic, iso_ns, iso_us, parse_http_time

router = APIRouter(tags=["historical"])
DAY_NS = 86_400 * NS_PER_SECOND

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The ticks or bars. JSON: a document with `data` rows; other formats: the rows as a file, "
        "with `X-Total-Count` and `X-Truncated` headers.",
        "content": {MEDIA_TYPES[f]: {} for f in ("csv", "arrow", "parquet")},
    },
    400: {"description": "The query cannot be answered as asked (end not after start, range too long, too many bars)"},
    404: {"description": "Unknown contract"},
    422: {"description": "A parameter is invalid (tick type, time without offset, resolution, limit)"},
}


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """A validated historical request."""

    contract_id: int
    tick_types: tuple[TickType, ...]
    start_ns: int
    end_ns: int
    resolution: str
    limit: int


@router.get("/v2/historical/{contract_id}", summary="Ticks or bars of a time range", responses=_RESPONSES)
async def historical(
    state: State,
    contract_id: ContractIdPath,
    tick_types: Annotated[
        str,
        Query(
            description="Comma list of bid_ask, last, all_last, mid_point, depth (or BidAsk, Last, AllLast, MidPoint).",
            examples=["bid_ask,last"],
        ),
    ],
    start_time: Annotated[
        str,
        Query(description="Range start, ISO-8601 with Z or an offset (inclusive).", examples=["2025-01-10T14:30:00Z"]),
    ],
    end_time: Annotated[
        str | None, Query(description="Range end, ISO-8601 with Z or an offset (exclusive); default now.")
    ] = None,
    resolution: Annotated[
        str, Query(description="`tick` for raw ticks or a bar size.", json_schema_extra={"enum": list(RESOLUTIONS)})
    ] = "tick",
    fmt: Annotated[ResultFormat, Query(alias="format", description="Output format.")] = "json",
    limit: Annotated[
        int | None, Query(ge=1, description="Return at most this many rows (default and maximum: api.max_limit).")
    ] = None,
) -> StreamingResponse:
    """Return the ticks (or bars) of a contract in [start_time, end_time), streamed in the asked format."""
    request = parse_range_request(state, contract_id, tick_types, start_time, end_time, resolution, limit)
    ticks = request.resolution == "tick"
    frame = await state.query_range(
        request.contract_id,
        request.tick_types,
        request.start_ns,
        request.end_ns,
        request.resolution,
        limit=request.limit if ticks else None,  # bars are bounded by api.max_bars already
    )
    table = await state.run(frame_to_table, frame, request.limit)
    returned = table.num_rows
    if ticks:  # only the first `limit` ticks were read: the catalog counts the rest
        whole = len(frame) < request.limit
        total = (
            returned
            if whole
            else await state.count_ticks(request.contract_id, request.tick_types, request.start_ns, request.end_ns)
        )
    else:
        total = len(frame)
    truncated = total > returned
    header = {
        "contract_id": request.contract_id,
        "tick_types": [t.value for t in request.tick_types],
        "start_time": iso_ns(request.start_ns),
        "end_time": iso_ns(request.end_ns),
        "resolution": request.resolution,
        "format": "json",
        "count": returned,
        "total_count": total,
        "truncated": truncated,
        "limit": request.limit,
    }
    headers = {"X-Total-Count": str(total), "X-Result-Count": str(returned), "X-Truncated": str(truncated).lower()}
    filename = (
        f"{request.contract_id}_{'-'.join(t.value for t in request.tick_types)}_{request.resolution}_"
        f"{iso_basic(request.start_ns)}"
    )
    return streaming_response(fmt, table, json_header=header, filename=filename, headers=headers)


def parse_range_request(
    state: ServiceState,
    contract_id: int,
    tick_types: str | None,
    start_time: str | None,
    end_time: str | None,
    resolution: str | None,
    limit: int | None,
) -> RangeRequest:
    """Validate the parameters of a range request; every failure names the field and its value."""
    state.streaming.require_contract(contract_id)
    types = parse_tick_types(tick_types)
    if start_time is None:
        raise ValidationError("start_time", "", "is required (ISO-8601 with Z or an offset)")
    start = parse_http_time(start_time, "start_time")
    end = state.clock.now_ns() if end_time is None else parse_http_time(end_time, "end_time")
    if end <= start:
        raise QueryError(
            f"end_time {iso_us(end)} is not after start_time {iso_us(start)}",
            details={"field": "end_time", "value": iso_us(end), "start_time": iso_us(start)},
        )
    resolved = parse_resolution(resolution or "tick")
    max_limit = state.settings.api.max_limit
    if limit is not None and not 1 <= limit <= max_limit:
        raise ValidationError("limit", limit, f"must be between 1 and {max_limit} (api.max_limit)")
    max_days = state.settings.api.max_range_days
    if resolved == "tick" and end - start > max_days * DAY_NS:
        days = (end - start) / DAY_NS
        raise QueryError(
            f"range start_time {iso_us(start)} .. end_time {iso_us(end)} spans {days:.1f} days; tick-level queries "
            f"may span at most {max_days:g} days (api.max_range_days): narrow the range or ask for bars "
            "(resolution=1m, ...)",
            details={
                "field": "end_time",
                "value": iso_us(end),
                "start_time": iso_us(start),
                "range_days": round(days, 3),
                "max_range_days": max_days,
            },
        )
    if resolved != "tick":
        for tick_type in types:  # the same rules as the bar engine, checked before any file is read
            check_bars_of(tick_type, resolved)
        check_bar_budget(state.settings.api, start, end, resolved)
    return RangeRequest(contract_id, types, start, end, resolved, limit or max_limit)
