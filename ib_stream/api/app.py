"""App factory and lifespan: the lifespan owns the store, the streaming app, the sources and the
scheduler, and on shutdown flushes and fsyncs everything before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ib_stream import __version__
from ib_stream.alerts.engine import AlertEngine, stop_task
from ib_stream.api import guards, shutdown
from ib_stream.api.allocator import limit_arenas, trim_periodically
from ib_stream.api.errors import install_error_handlers
from ib_stream.api.responses import OrjsonResponse
from ib_stream.api.routes import (
    alerts as alerts_routes,
)
from ib_stream.api.routes import (
    backfill,
    bars,
    buffer,
    contracts,
    dashboard,
    depth,
    footprint,
    heatmap,
    historical,
    ingest,
    live,
    live_bars,
    replay,
    sessions,
    storage,
    system,
    ws,
)
from ib_stream.api.service import ServiceState
from ib_stream.calendars import MarketSessions
from ib_stream.clock import Clock, SystemClock
from ib_stream.contracts import load_contracts
from ib_stream.domain import Contract
from ib_stream.jobs import build_scheduler
from ib_stream.settings import Settings, load_settings
from ib_stream.sinks.json_sink import JsonSink
from ib_stream.sources.sim import SimSource
from ib_stream.store.downtime import last_tick_times, record_downtime
from ib_stream.store.gaps import BackfillState
from ib_stream.store.provenance import Provenance
from ib_stream.store.service_file import withdraw_service
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import StreamingApp, TickSource
from ib_stream.times import FutureSkew

log = logging.getLogger(__name__)
ROUTERS = (
    system,
    historical,
    bars,
    footprint,
    heatmap,
    depth,
    contracts,
    sessions,
    live,
    buffer,
    storage,
    ws,
    ingest,
    replay,
    backfill,
    live_bars,
    alerts_routes,
    dashboard,
)


@dataclass(frozen=True, slots=True)
class SourceChoice:
    """The live sources the settings ask for, and why nothing is recorded when that is so (shown in /health)."""

    name: str
    sources: list[TickSource]
    note: str | None = None


def choose_sources(settings: Settings, contracts: list[Contract], clock: Clock, provenance: Provenance) -> SourceChoice:
    """Pick the live source from settings: IB whenever it is enabled (source auto) or asked for, reachable or not —
    it keeps retrying, and its streams are in a `broker_unreachable` gap until it answers; the replay source; else
    the simulated market — never in a data root that holds non-simulated ticks (source auto), and never into a
    contract that does (`SimSource`)."""
    kind = settings.source
    if kind == "ib" or (kind == "auto" and settings.ib.enabled):
        from ib_stream.sources.ib import IbSource

        log.info("recording from Interactive Brokers at %s ports %s", settings.ib.host, settings.ib.ports)
        return SourceChoice("ib", [IbSource(settings.ib, contracts, clock)])
    if kind == "replay":
        from ib_stream.sources.replay import ReplaySource

        return SourceChoice("replay", [ReplaySource(settings.replay, contracts)])
    root = settings.storage.data_root
    if kind == "auto" and provenance.holds_real_data:
        note = (
            f"nothing is recorded: ib.enabled is false and data root {root} holds non-simulated ticks "
            f"(contracts {provenance.describe()}), where the simulator never runs; enable IB, or run the "
            "simulator with another storage.data_root"
        )
        log.error(note)
        return SourceChoice("none", [], note)
    if kind == "auto":
        log.warning("no Interactive Brokers connection is enabled: recording the built-in simulated market")
    return SourceChoice("sim", [SimSource(contracts, settings.sim, clock, is_open=_sim_is_open)])


def _sim_is_open(contract: Contract, ts_ns: int) -> bool:
    # "extended" = pre-market + regular + after-hours for equities, the Globex session for futures.
    return MarketSessions.for_contract(contract).is_open_at(ts_ns, "extended")


def _begin_run(store: TickStore, clock: Clock, contracts: list[Contract], source: str, settings: Settings) -> None:
    """Start a service run in the gap ledger; the downtime since the previous run becomes gaps."""
    previous = store.gaps.begin_run(clock.now_ns(), source)
    backfill = source == "ib" and settings.ib.backfill_after_reconnect
    record_downtime(
        store.gaps, previous, clock.now_ns(), contracts, BackfillState.PENDING if backfill else BackfillState.OFF,
        last_ticks=last_tick_times(store, contracts), open_ended=source == "ib",  # the IB source ends it per stream
    )  # fmt: skip


async def _heartbeat(store: TickStore, clock: Clock, every_seconds: float) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await asyncio.to_thread(store.gaps.heartbeat, clock.now_ns())
        except Exception:  # a busy disk must not stop the heartbeats: the next one may succeed
            log.exception("service heartbeat could not be written")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    sources: Sequence[TickSource] | None = None,
    run_scheduler: bool = True,
) -> FastAPI:
    """Build the service. `sources=None` picks them from settings; `[]` runs with no live source."""
    settings = settings or load_settings()
    clock = clock or SystemClock()
    limit_arenas()  # memory freed after a large request goes back to the system (see allocator)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        contract_list = load_contracts(settings.contracts_file)
        # Building a calendar takes ~0.2 s: do it once, off the event loop, before serving.
        await asyncio.to_thread(lambda: [MarketSessions.for_contract(c) for c in contract_list])
        store = await TickStore(settings.storage, clock).aopen()
        skew = FutureSkew.of_seconds(settings.source_max_future_skew_seconds, "source_max_future_skew_seconds")
        streaming = StreamingApp(store, contract_list, queue_size=settings.api.subscriber_queue_size, future_skew=skew)
        recorded = [c for c in contract_list if c.record]  # the others are only served (e.g. imported data)
        if sources is None:  # importing the IB client takes a moment: off the event loop
            choice = await asyncio.to_thread(choose_sources, settings, recorded, clock, store.provenance)
        else:
            choice = SourceChoice(",".join(s.name for s in sources) or "none", list(sources))
        source_name, chosen = choice.name, choice.sources
        await asyncio.to_thread(_begin_run, store, clock, recorded, source_name, settings)
        heartbeat = asyncio.create_task(_heartbeat(store, clock, settings.storage.heartbeat_seconds), name="heartbeat")
        trimmer = asyncio.create_task(trim_periodically(), name="memory-trim")
        state = ServiceState(settings, clock, store, streaming, contract_list, source_name)
        state.source_note = choice.note
        app.state.service = state
        scheduler = build_scheduler(store, settings.storage) if run_scheduler else None
        consumers: list[asyncio.Task[None]] = []
        engine: AlertEngine | None = None
        try:
            await streaming.start(chosen)
            if settings.alerts.enabled:
                engine = await asyncio.to_thread(AlertEngine.open, settings.alerts, settings.storage.data_root)
                state.alerts = engine
                consumers.append(asyncio.create_task(engine.run(streaming), name="alerts"))
            if settings.json_sink.enabled:
                sink = JsonSink.from_settings(settings.json_sink, settings.storage.data_root)
                sink.contract(streaming)  # an unknown json_sink.contract_id is a ConfigError at start-up
                consumers.append(asyncio.create_task(sink.run(streaming), name="json-sink"))
            if scheduler is not None:
                scheduler.start()
            state.ready = True
            shutdown.install()  # running queries stop as soon as uvicorn starts shutting down
            # Long-lived start-up objects (calendars, schemas, modules) leave the GC's generations, so
            # full collections stay short: measured ~100 ms pauses of the event loop without this.
            gc.collect()
            gc.freeze()
            log.info(
                "ib-stream %s ready: source=%s, data root %s", __version__, source_name, settings.storage.data_root
            )
            yield
        finally:
            state.ready = False
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            for task in consumers:  # before the sources stop: the sink writes its last state
                await stop_task(task)
            await streaming.stop()
            if engine is not None:
                await asyncio.to_thread(engine.close)
            for background in (heartbeat, trimmer):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await asyncio.to_thread(store.gaps.end_run, clock.now_ns())
            # `ib-stream serve` announced its URL there; it holds the data root lock, so the file is its own. Removed
            # here because uvicorn ends a SIGTERMed process by re-raising the signal, before serve's cleanup runs.
            withdraw_service(settings.storage)  # only if it still names this process
            await store.aclose()  # flushes and fsyncs the buffer, releases the data root
            log.info("ib-stream stopped; everything acknowledged is on disk")

    # Swagger UI and ReDoc load their scripts and styles from the service itself (fastapi-offline ships them),
    # so /docs and /redoc work on a machine without internet access.
    app = FastAPIOffline(
        title="ib-stream",
        version=__version__,
        description="Interactive Brokers market data: tiered tick store, range queries, sessions and live streams.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_error_handlers(app)
    guards.install(app, settings)  # token before body, bounded body, the client's departure noticed
    for module in ROUTERS:
        app.include_router(module.router)
    return app
