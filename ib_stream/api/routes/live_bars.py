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
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Query, WebSocket
from sse_starlette import EventSourceResponse

from ib_stream.alerts.engine import AlertEngine, AlertListener
from ib_stream.analytics.request import DEFAULT_LEVELS, OBI_SOURCES, parse_kinds, parse_levels, parse_trades
from ib_stream.api.protocol import (
    complete_message,
    encode,
    envelope,
    error_from_exception,
    info_message,
    iso_us,
    new_stream_id,
    now_iso,
)
from ib_stream.api.sse import (
    SSE_RESPONSES,
    HeartbeatQuery,
    LimitQuery,
    Shutdown,
    TimeoutQuery,
    check_limit,
    event_stream_guarded,
    frame,
    heartbeat_seconds,
)
from ib_stream.api.state import ServiceState, State
from ib_stream.clock import NS_PER_SECOND
from ib_stream.errors import IbStreamError, SlowConsumerError, ValidationError
from ib_stream.live.feed import LiveBarFeed
from ib_stream.streaming import LiveItem

router = APIRouter(tags=["live"])
MAX_HISTORY_BARS: Final = 5000
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


async def bar_messages(
    state: ServiceState, request: BarStreamRequest, feed: LiveBarFeed, stream_id: str, shutdown: Shutdown | None
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """The messages of one live bar stream, in batches; the last is always `complete` or `error`."""
    engine: AlertEngine | None = state.alerts
    listener: AlertListener | None = engine.listen(request.contract_id) if engine and request.alerts else None
    started = time.monotonic()
    total = 0
    got: asyncio.Future[list[LiveItem] | None] | None = None

    def bars(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal total
        stamp = now_iso()
        out = []
        for row in rows:
            if request.limit is not None and total >= request.limit:
                break
            out.append(envelope("bar", stream_id, bar_data(request.contract_id, request.resolution, row, request.kinds), stamp))  # fmt: skip
            total += 1
        if request.limit is not None and total >= request.limit:
            out.append(complete_message(stream_id, "limit_reached", total, started))
        return out

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
        first = bars(await feed.open())
        if first and first[-1]["type"] == "complete":  # the limit was reached by the bars already held
            yield first
            return
        yield [*first, info_message(stream_id, "live_start", contract_id=request.contract_id, after_ts=feed.anchor_ns)]
        assert feed.sub is not None
        deadline = started + request.timeout if request.timeout is not None else None
        # The pending get stays pending across alerts: cancelling it could lose items it already took.
        while True:
            if got is None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    yield [complete_message(stream_id, "timeout", total, started)]
                    return
                got = asyncio.ensure_future(shutdown.get(feed.sub, wait) if shutdown else feed.sub.get(wait))
            out: list[dict[str, Any]] = []
            if listener is not None:
                alert_wait = asyncio.ensure_future(listener.wait())
                waiters: set[asyncio.Future[Any]] = {got, alert_wait}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                alert_wait.cancel()
                stamp = now_iso()
                out += [envelope("alert", stream_id, {**a.to_dict(), "timestamp": iso_us(a.ts)}, stamp) for a in listener.drain()]  # fmt: skip
            else:
                await asyncio.wait({got})
            if not got.done():
                if out:
                    yield out
                continue
            done, got = got, None
            try:
                items = done.result()
            except SlowConsumerError as e:
                yield [*out, error_from_exception(stream_id, e)]
                return
            if items is None or (not items and feed.sub.closed):
                yield [*out, complete_message(stream_id, "server_shutdown", total, started)]
                return
            out += bars(await feed.update(items))
            if out:
                yield out
            if out and out[-1]["type"] == "complete":
                return
    finally:
        if got is not None:
            got.cancel()
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

    async def chunks() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(bar_messages(state, request, feed, stream_id, shutdown)) as messages:
            async for batch in messages:
                yield b"".join(frame(m) for m in batch)

    return event_stream_guarded(chunks(), stream_id, heartbeat_seconds(heartbeat, state.settings), shutdown)


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
        await websocket.send_text(encode(error_from_exception(stream_id, e)).decode())
        await websocket.close(code=1008)
        return

    async def pump() -> None:
        async with contextlib.aclosing(bar_messages(state, request, feed, stream_id, None)) as messages:
            try:
                async for batch in messages:
                    for message in batch:
                        await websocket.send_text(encode(message).decode())
            except (IbStreamError, OSError) as e:  # e.g. the store could not be read: the last message says so
                if isinstance(e, IbStreamError):
                    await websocket.send_text(encode(error_from_exception(stream_id, e)).decode())

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(until_disconnect())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done and tasks[0].exception() is None:
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close()
