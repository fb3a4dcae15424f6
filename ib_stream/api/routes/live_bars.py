"""Routes: live order-flow bars over SSE (`/v2/stream/{contract_id}/bars`) and WebSocket
(`/v2/ws/bars/{contract_id}`): the forming bar is upserted as ticks arrive (`bar` events; same `ts`
→ replace, new `ts` → append; `final: true` once a later bar started), and alerts of the contract
arrive as `alert` events.

Sequence: info `subscribed` → the `history` closed bars before the current one and the bar in
progress (computed from the store) → info `live_start` → live `bar` / `alert` events → `complete`
(limit_reached, timeout, server_shutdown) or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse

from ib_stream.alerts.engine import AlertEngine, AlertListener
from ib_stream.alerts.history import with_times
from ib_stream.alerts.rules import Alert
from ib_stream.analytics.request import DEFAULT_LEVELS, OBI_SOURCES, parse_kinds, parse_levels, parse_trades
from ib_stream.api.protocol import new_stream_id
from ib_stream.api.shutdown import Shutdown
from ib_stream.api.sse import (
    SSE_RESPONSES,
    HeartbeatQuery,
    LimitQuery,
    TimeoutQuery,
    check_limit,
    heartbeat_seconds,
    sse_stream,
)
from ib_stream.api.state import ServiceState, State
from ib_stream.api.websocket import send_json, send_stream
from ib_stream.clock import NS_PER_SECOND
from ib_stream.errors import IbStreamError, ValidationError
from ib_stream.live.feed import LiveBarFeed
from ib_stream.live.messages import envelope, error_from_exception, info_message, iso_us, now_iso
from ib_stream.live.pump import Message, pump
from ib_stream.streaming import LiveItem

router = APIRouter(tags=["live"])
MAX_HISTORY_BARS: Final = 5000
BarEvent = dict[str, Any] | Alert  # a bar row (an upsert) or an alert
KIND_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "ohlc": ("open", "high", "low", "close", "volume", "vwap", "trade_count", "buy_volume", "sell_volume",
             "unknown_volume", "session_vwap"),
    "cvd": ("delta", "cvd_open", "cvd_high", "cvd_low", "cvd_close"),
    "obi": ("obi_open", "obi_high", "obi_low", "obi_close", "obi_count"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BarStreamRequest:
    """What a live bar stream asks for, validated."""

    contract_id: int
    kinds: tuple[str, ...]
    resolution: str
    session: str
    trades: str
    obi_source: str
    levels: int
    history: int
    alerts: bool
    limit: int | None
    timeout: float | None


def bar_data(contract_id: int, resolution: str, row: dict[str, Any], kinds: Sequence[str]) -> dict[str, Any]:
    """A bar row as `bar` event data: the fields of `kinds` (NaN as null), plus ts, timestamp, final, empty."""
    data: dict[str, Any] = {
        "contract_id": contract_id,
        "resolution": resolution,
        "timestamp": iso_us(row["ts"]),
        "ts": row["ts"],
        "final": row["final"],
        "revision": row.get("revision", False),
        "empty": bool(row["empty"]),
    }
    for kind in kinds:
        for name in KIND_FIELDS[kind]:
            value = row[name]
            data[name] = None if isinstance(value, float) and math.isnan(value) else value
    return data


def _request(
    state: ServiceState,
    contract_id: int,
    kinds: str | None,
    resolution: str,
    session: str,
    trades: str,
    obi_source: str,
    levels: int,
    history: int,
    alerts: bool,
    limit: int | None,
    timeout: float | None,
) -> tuple[BarStreamRequest, LiveBarFeed]:
    contract = state.streaming.require_contract(contract_id)
    if obi_source not in OBI_SOURCES:
        raise ValidationError("obi_source", obi_source, f"is not one of {', '.join(OBI_SOURCES)}")
    if not 0 <= history <= MAX_HISTORY_BARS:
        raise ValidationError("history", history, f"must be from 0 to {MAX_HISTORY_BARS} bars")
    request = BarStreamRequest(
        contract_id,
        parse_kinds(kinds),
        resolution,
        session,
        parse_trades(trades).value,
        obi_source,
        parse_levels(levels),
        history,
        alerts,
        check_limit(limit, state.settings),
        timeout,
    )
    feed = LiveBarFeed.create(
        state.streaming,
        contract,
        resolution,
        session_type=session,
        trade_type=parse_trades(trades),
        obi_source=obi_source,
        levels=request.levels,
        history_bars=history,
        lateness_ns=int(state.settings.api.live_bar_lateness_seconds * NS_PER_SECOND),
    )
    return request, feed


class BarEvents:
    """The live part of a bar stream, as a source for `pump`: batches of the contract's alerts and the
    bar upserts the live ticks cause, in that order."""

    def __init__(self, feed: LiveBarFeed, listener: AlertListener | None) -> None:
        assert feed.sub is not None, "the feed is open"
        self.feed = feed
        self.sub = feed.sub
        self.listener = listener
        self._get: asyncio.Future[list[LiveItem]] | None = None

    @property
    def closed(self) -> bool:
        return self.sub.closed

    async def get(self, timeout: float | None = None) -> list[BarEvent]:
        """Wait up to `timeout` seconds for live ticks or an alert; [] when neither came."""
        # The pending get outlives an alert (it would time out at the same deadline): it is never
        # cancelled between taking items and returning them.
        if self._get is None:
            self._get = asyncio.ensure_future(self.sub.get(timeout))
        get = self._get
        out: list[BarEvent] = []
        if self.listener is not None:
            alert = asyncio.ensure_future(self.listener.wait())
            waiters: set[asyncio.Future[Any]] = {get, alert}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                alert.cancel()
            out += self.listener.drain()
        else:
            await asyncio.wait({get})
        if get.done() and (get.exception() is None or not out):  # a failed get waits for the alerts before it
            self._get = None
            out += await self.feed.update(get.result())
        return out

    def resize(self, max_queue: int) -> None:
        self.sub.resize(max_queue)

    def close(self) -> None:
        if self._get is not None:
            self._get.cancel()


def bar_encoder(request: BarStreamRequest, stream_id: str) -> Callable[[Sequence[BarEvent]], Iterator[Message]]:
    """The encoder of a bar stream for `pump`: `bar` messages of bar rows, `alert` messages of alerts."""

    def encode(events: Sequence[BarEvent]) -> Iterator[Message]:
        stamp = now_iso()
        for event in events:
            if isinstance(event, Alert):
                yield envelope("alert", stream_id, with_times(event.to_dict()), stamp)
            else:
                data = bar_data(request.contract_id, request.resolution, event, request.kinds)
                yield envelope("bar", stream_id, data, stamp)

    return encode


async def bar_messages(
    state: ServiceState, request: BarStreamRequest, feed: LiveBarFeed, stream_id: str, shutdown: Shutdown
) -> AsyncGenerator[list[Message], None]:
    """The messages of one live bar stream, in batches; the last is always `complete` or `error`."""
    engine: AlertEngine | None = state.alerts
    listener: AlertListener | None = engine.listen(request.contract_id) if engine and request.alerts else None
    started = time.monotonic()
    events: BarEvents | None = None
    try:
        yield [
            info_message(
                stream_id,
                "subscribed",
                contract_id=request.contract_id,
                resolution=request.resolution,
                kinds=list(request.kinds),
                session=request.session,
                trades=request.trades,
                obi_source=feed.obi_source,
                levels=request.levels,
                history=request.history,
                alerts=listener is not None,
                stream_config={"limit": request.limit, "timeout_seconds": request.timeout},
            )
        ]
        encode = bar_encoder(request, stream_id)
        held = list(encode(await feed.open()))  # the history bars and the bar in progress
        live_start = info_message(stream_id, "live_start", contract_id=request.contract_id, after_ts=feed.anchor_ns)
        events = BarEvents(feed, listener)
        live = pump(
            events, stream_id, encode, limit=request.limit, timeout=request.timeout, shutdown=shutdown.event,
            counts="bar", opening=[*held, live_start], started=started,
        )  # fmt: skip
        async with contextlib.aclosing(live):
            async for batch in live:
                yield batch
    finally:
        if events is not None:
            events.close()
        feed.close()
        if listener is not None and engine is not None:
            engine.unlisten(listener)


_KindsQuery = Query(None, description="Comma list of ohlc, cvd, obi (default: all).")
_ResolutionQuery = Query("1m", description="Bar size: 1s, 5s, 15s, 30s, 1m, 5m, 15m, 30m or 1h.")
_SessionQuery = Query("regular", description="Session whose start resets CVD and the session VWAP.")
_TradesQuery = Query("last", description="Trades the bars are built from: last or all_last.")
_ObiQuery = Query("auto", description="OBI from depth (top `levels`), quotes (top of book) or auto.")
_LevelsQuery = Query(DEFAULT_LEVELS, description="Depth levels per side for OBI from depth.")
_HistoryQuery = Query(0, description=f"Closed bars to send before the bar in progress (0..{MAX_HISTORY_BARS}).")
_AlertsQuery = Query(True, description="Also send the contract's alerts as `alert` events.")


@router.get("/v2/stream/{contract_id}/bars", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def live_bars_stream(
    state: State,
    contract_id: int,
    kinds: str | None = _KindsQuery,
    resolution: str = _ResolutionQuery,
    session: str = _SessionQuery,
    trades: str = _TradesQuery,
    obi_source: str = _ObiQuery,
    levels: int = _LevelsQuery,
    history: int = _HistoryQuery,
    alerts: bool = _AlertsQuery,
    limit: int | None = LimitQuery,
    timeout: float | None = TimeoutQuery,
    heartbeat: float | None = HeartbeatQuery,
) -> EventSourceResponse:
    """Live order-flow bars (SSE): `bar` upserts of the forming bar, final bars, and `alert` events."""
    request, feed = _request(
        state, contract_id, kinds, resolution, session, trades, obi_source, levels, history, alerts, limit, timeout
    )
    stream_id = new_stream_id(contract_id, f"bars_{resolution}")
    shutdown = Shutdown()
    messages = bar_messages(state, request, feed, stream_id, shutdown)
    return sse_stream(messages, stream_id, heartbeat_seconds(heartbeat, state.settings), shutdown)


@router.websocket("/v2/ws/bars/{contract_id}")
async def live_bars_ws(
    websocket: WebSocket,
    contract_id: int,
    kinds: str | None = None,
    resolution: str = "1m",
    session: str = "regular",
    trades: str = "last",
    obi_source: str = "auto",
    levels: int = DEFAULT_LEVELS,
    history: int = 0,
    alerts: bool = True,
    limit: int | None = None,
    timeout: float | None = None,
) -> None:
    """The same messages as the SSE stream, one JSON text message each; the server closes after the last."""
    state: ServiceState = websocket.app.state.service
    await websocket.accept()
    stream_id = new_stream_id(contract_id, f"bars_{resolution}")
    try:
        request, feed = _request(
            state, contract_id, kinds, resolution, session, trades, obi_source, levels, history, alerts, limit, timeout
        )
    except IbStreamError as e:
        await send_json(websocket, [error_from_exception(stream_id, e)])
        await websocket.close(code=1008)
        return
    shutdown = Shutdown()

    async def send(batch: list[Message]) -> None:
        await send_json(websocket, batch)

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    messages = bar_messages(state, request, feed, stream_id, shutdown)
    tasks = [
        asyncio.ensure_future(send_stream(messages, stream_id, send, shutdown)),
        asyncio.ensure_future(until_disconnect()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done and tasks[0].exception() is None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # e.g. the service closed it meanwhile
            await websocket.close()
