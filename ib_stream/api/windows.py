"""The time window of a range request, shared by the routes that take a range like `/v2/bars`: [start_time,
end_time), or without start_time the session of `date` (default: the current one) of type `session` — the
parameters' types (with their OpenAPI descriptions) and their resolution."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from ib_stream.api.state import ServiceState
from ib_stream.calendars import SESSION_TYPES, check_session_type, parse_date
from ib_stream.errors import ValidationError
from ib_stream.orderflow.service import OrderFlow
from ib_stream.times import parse_http_time

WindowStart = Annotated[
    str | None, Query(description="Range start, ISO-8601 with Z or an offset (inclusive); default: the session's.")
]
WindowEnd = Annotated[str | None, Query(description="Range end (exclusive); default now, or the session's end.")]
WindowSession = Annotated[
    str,
    Query(
        description="Session type of the window without start_time.", json_schema_extra={"enum": list(SESSION_TYPES)}
    ),
]
WindowDate = Annotated[str | None, Query(description="Trading date (YYYY-MM-DD) of the session window.")]


async def resolve_window(
    state: ServiceState,
    flow: OrderFlow,
    start_time: str | None,
    end_time: str | None,
    session: str,
    date: str | None,
) -> tuple[int, int]:
    """[start, end) in UTC ns, each parameter checked (failures name the field and value), as `/v2/bars` does:
    end default now, or the session's end without start_time."""
    check_session_type(session, "session")
    start = None if start_time is None else parse_http_time(start_time, "start_time")
    end = None if end_time is None else parse_http_time(end_time, "end_time")
    if start is not None and date is not None:
        raise ValidationError("date", date, "cannot be combined with start_time (give one or the other)")
    day = None if date is None else parse_date(date, "date")
    now = state.clock.now_ns()
    if start is None:
        window_start, window_end = await state.run(flow.session_window, session, now, day)
        return window_start, window_end if end is None else end
    return start, now if end is None else end
