"""Routes: liveness (`/health`), readiness (`/ready`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ib_stream import __version__
from ib_stream.api.metrics import CONTENT_TYPE
from ib_stream.api.responses import OrjsonResponse
from ib_stream.api.state import ServiceState, State
from ib_stream.live.messages import now_iso

router = APIRouter(tags=["system"])


@router.get("/health", summary="Liveness: the process answers")
async def health(state: State) -> dict[str, Any]:
    """Return 200 while the process serves HTTP (it says nothing about the store; see /ready). `recording` says
    whether the live source records: `status` is `degraded` while IB is enabled but not connected, or when the
    simulator was not run because the data root holds real data."""
    sources = state.streaming.source_status()
    recording = recording_status(state, sources)
    return {
        "status": "ok" if recording["ok"] else "degraded",
        "version": __version__,
        "source": state.source_name,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "time": now_iso(),
        "recording": recording,
        "sources": sources,
    }


def recording_status(state: ServiceState, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the live source records: `{ok, state, detail}`, state one of recording, idle (no live source),
    broker_unreachable (IB enabled, not connected: it keeps retrying, its streams are in the gap ledger, nothing is
    simulated) or not_recording (the simulator is refused a data root holding real data)."""
    if state.source_note is not None:
        return {"ok": False, "state": "not_recording", "detail": state.source_note}
    ib = sources.get("ib")
    if ib is not None and not ib.get("connected"):
        ports = ", ".join(map(str, state.settings.ib.ports))
        detail = (
            f"Interactive Brokers is not connected (host {state.settings.ib.host}, ports {ports}): retrying; "
            "its streams are in a broker_unreachable or disconnect gap until it answers; nothing is simulated"
        )
        return {"ok": False, "state": "broker_unreachable", "detail": detail}
    if not state.streaming.sources:
        return {"ok": True, "state": "idle", "detail": "no live source runs (ticks arrive through POST /v2/ticks)"}
    left_alone = (sources.get("sim") or {}).get("not_simulated") or {}
    if left_alone:
        held = ", ".join(str(con_id) for con_id in sorted(left_alone))
        detail = f"recording from {state.source_name}; not simulated (they hold non-simulated ticks): {held}"
        return {"ok": True, "state": "recording", "detail": detail}
    return {"ok": True, "state": "recording", "detail": f"recording from {state.source_name}"}


@router.get(
    "/ready",
    summary="Readiness: the store is open and writable and the streaming app runs",
    responses={
        503: {
            "description": "Not ready: starting, stopping, or the store refuses appends (a full disk, an I/O error: "
            "`checks.store.detail` says which and since when; it recovers by itself)"
        }
    },
)
async def ready(state: State) -> OrjsonResponse:
    """Return 200 when the store is open and accepts appends, the streaming app started and start-up finished."""
    checks = readiness_checks(state)
    ok = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks, "time": now_iso()}
    return OrjsonResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(state: State) -> Response:
    """Return every metric in the Prometheus text format (see docs/reference/api.md for the list)."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def readiness_checks(state: ServiceState) -> dict[str, dict[str, Any]]:
    """Each readiness condition with whether it holds and why not."""
    store_ok, store_detail = state.store_status()
    streaming_ok = _streaming_started(state)
    return {
        "startup": {"ok": state.ready, "detail": "start-up finished" if state.ready else "starting or stopping"},
        "store": {"ok": store_ok, "detail": store_detail},
        "streaming": {
            "ok": streaming_ok,
            "detail": f"{state.streaming.subscriber_count} live subscribers" if streaming_ok else "not started",
        },
    }


def _streaming_started(state: ServiceState) -> bool:
    return state.streaming.started
