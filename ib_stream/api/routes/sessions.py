"""Routes: trading sessions of a contract — boundaries, whether open now, tick counts and an OHLC summary.

`GET /v2/sessions/{contract_id}/current`, `/previous` and `/{date}`; `/current` and `/previous` are
declared before `/{date}` so they are never read as a date. With `bars=` the answer carries the
session's order-flow bars; `format=csv|arrow|parquet` returns those bars as the body (the formats of
`/v2/historical`), the session window in `X-Session-*` headers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import StreamingResponse

from ib_stream.analytics.request import KINDS, BarsRequest, BarsResult, parse_bar_resolution, parse_kinds
from ib_stream.api.formats import ResultFormat, json_rows, streaming_response
from ib_stream.api.params import ContractIdPath, parse_tick_types
from ib_stream.api.state import ServiceState, State
from ib_stream.calendars import SESSION_TYPES, MarketSessions, Session, check_session_type, parse_date
from ib_stream.domain import Contract, TickType
from ib_stream.errors import ValidationError
from ib_stream.orderflow.service import OrderFlow
from ib_stream.times import iso_us

router = APIRouter(prefix="/v2/sessions", tags=["sessions"])

DEFAULT_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The query parameters every session route takes."""

    session: str
    tick_types: str | None
    include_ticks: bool
    limit: int
    bars: tuple[str, ...] = ()
    resolution: str = "1m"
    fmt: str = "json"


def session_options(
    session: Annotated[
        str,
        Query(
            description="Session type: regular, extended, overnight, pre_market or after_hours.",
            json_schema_extra={"enum": list(SESSION_TYPES)},
        ),
    ] = "regular",
    tick_types: Annotated[
        str | None, Query(description="Comma list of tick types to count (default: the contract's).")
    ] = None,
    include: Annotated[str | None, Query(description="`ticks` to include the session's ticks.")] = None,
    limit: Annotated[int, Query(ge=1, description="Most ticks returned with include=ticks.")] = DEFAULT_LIMIT,
    bars: Annotated[
        str | None, Query(description="Order-flow bars of the session: comma list of ohlc, cvd, obi.")
    ] = None,
    resolution: Annotated[
        str, Query(description="Bar size of `bars` (1s … 1h, or 1d = the session as one bar).")
    ] = "1m",
    fmt: Annotated[
        ResultFormat,
        Query(
            alias="format",
            description="json: the session with its bars; csv, arrow, parquet: the bars as a table (needs `bars`), "
            "the session in X-Session-* headers.",
        ),
    ] = "json",
) -> SessionOptions:
    check_session_type(session, "session")
    wanted = [part.strip() for part in (include or "").split(",") if part.strip()]
    for part in wanted:
        if part != "ticks":
            raise ValidationError("include", include, "may only be 'ticks'")
    asked = [k.strip() for k in (bars or "").split(",") if k.strip()]
    if any(k not in KINDS for k in asked):
        raise ValidationError("bars", bars, f"may only list {', '.join(KINDS)}")
    kinds = parse_kinds(asked) if asked else ()
    parse_bar_resolution(resolution)
    if fmt != "json" and not kinds:
        raise ValidationError("format", fmt, "needs bars= (a table format returns the session's order-flow bars)")
    return SessionOptions(session, tick_types, bool(wanted), limit, kinds, resolution, fmt)


Options = Annotated[SessionOptions, Depends(session_options)]
TradingDate = Annotated[
    str, Path(pattern=r"^\d{4}-\d{2}-\d{2}$", description="Trading date, YYYY-MM-DD.", examples=["2025-07-03"])
]


Answer = dict[str, Any] | StreamingResponse


@router.get("/{contract_id}/current", summary="The session in progress, or the most recent one", response_model=None)
async def current_session(state: State, contract_id: ContractIdPath, options: Options) -> Answer:
    """The session in progress now (service clock), or on a weekend / holiday / between sessions the most recent one."""
    now = state.clock.now_ns()
    return await _answer(state, contract_id, options, lambda s: s.current(now, options.session), now)


@router.get("/{contract_id}/previous", summary="The session before the current one", response_model=None)
async def previous_session(state: State, contract_id: ContractIdPath, options: Options) -> Answer:
    """The session before `/current`."""
    now = state.clock.now_ns()
    return await _answer(state, contract_id, options, lambda s: s.previous(now, options.session), now)


@router.get("/{contract_id}/{date}", summary="The session of a trading date", response_model=None)
async def session_on(state: State, contract_id: ContractIdPath, date: TradingDate, options: Options) -> Answer:
    """The session of trading date `date` (YYYY-MM-DD); 404 when the exchange is closed that day."""
    day = parse_date(date, "date")
    now = state.clock.now_ns()
    return await _answer(state, contract_id, options, lambda s: s.on(day, options.session), now)


async def _answer(
    state: ServiceState, contract_id: int, options: SessionOptions, pick: Callable[[MarketSessions], Session], now: int
) -> Answer:
    contract = state.streaming.require_contract(contract_id)
    tick_types = parse_tick_types(options.tick_types, "tick_types", default=contract.tick_types)
    max_limit = state.settings.api.max_limit
    if not 1 <= options.limit <= max_limit:
        raise ValidationError("limit", options.limit, f"must be between 1 and {max_limit}")

    def find() -> Session:
        sessions = MarketSessions.for_contract(contract)
        sessions.require_session_type(options.session, "session")
        return pick(sessions)

    # The first use of a calendar builds it (~0.2 s): keep that off the event loop.
    session = await state.run(find)
    data_end = max(session.start_ns, min(session.end_ns, now))  # a session in progress ends now
    if options.fmt != "json":
        flow = await state.order_flow(contract)
        result = await state.run(_bars_result, flow, session, data_end, options)
        return _bars_table(contract, session, data_end, options, result)
    read = await state.session_reads(
        contract.con_id, tick_types, session.start_ns, data_end, options.include_ticks, options.limit
    )
    answer = {**_describe(contract, session, now, data_end, tick_types), **read}
    if options.bars:
        flow = await state.order_flow(contract)
        answer["bars"] = await state.run(_bars, flow, session, data_end, options)
    return answer


def _bars_result(flow: OrderFlow, session: Session, end: int, options: SessionOptions) -> BarsResult:
    """The session's order-flow bars (ib_stream.analytics), up to `end` for a session in progress; a session
    that has not started has none (the columns of a one-nanosecond request, no rows)."""
    started = end > session.start_ns
    request = BarsRequest(
        flow.contract.con_id,
        session.start_ns,
        end if started else session.start_ns + 1,
        options.resolution,
        options.bars,
        session=options.session,
    )
    result = flow.bars(request)
    return result if started else BarsResult(result.table.slice(0, 0), None, {})


def _bars_table(
    contract: Contract, session: Session, data_end: int, options: SessionOptions, result: BarsResult
) -> StreamingResponse:
    headers = {
        "X-Session-Date": session.date.isoformat(),
        "X-Session-Start": iso_us(session.start_ns),
        "X-Session-End": iso_us(session.end_ns),
        "X-Data-End": iso_us(data_end),
        "X-Total-Count": str(result.table.num_rows),
    }
    if result.obi_source is not None:
        headers["X-OBI-Source"] = result.obi_source
    filename = (
        f"{contract.con_id}_session_{session.date.isoformat()}_{options.session}_bars_"
        f"{'-'.join(options.bars)}_{options.resolution}"
    )
    return streaming_response(options.fmt, result.table, json_header={}, filename=filename, headers=headers)


def _bars(flow: OrderFlow, session: Session, end: int, options: SessionOptions) -> dict[str, Any]:
    """The session's order-flow bars as the `bars` member of the JSON answer."""
    header: dict[str, Any] = {"kinds": list(options.bars), "resolution": options.resolution}
    result = _bars_result(flow, session, end, options)
    rows = [row for batch in result.table.to_batches() for row in json_rows(batch)]
    return {
        **header,
        "obi_source": result.obi_source,
        "side_methods": result.side_methods,
        "count": len(rows),
        "data": rows,
    }


def _describe(
    contract: Contract, session: Session, now: int, data_end: int, tick_types: tuple[TickType, ...]
) -> dict[str, Any]:
    start_local, end_local = session.boundaries()
    return {
        "contract_id": contract.con_id,
        "symbol": contract.symbol,
        "calendar": session.calendar,
        "session_type": session.session_type,
        "date": session.date.isoformat(),
        "timezone": session.timezone,
        "start": iso_us(session.start_ns),
        "end": iso_us(session.end_ns),
        "start_exchange": start_local.isoformat(),
        "end_exchange": end_local.isoformat(),
        "breaks": [{"start": iso_us(a), "end": iso_us(b)} for a, b in session.breaks],
        "is_open": session.is_open(now),
        "in_progress": session.in_progress(now),
        "data_end": iso_us(data_end),
        "tick_types": [t.value for t in tick_types],
    }
