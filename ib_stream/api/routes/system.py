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
    """Return 200 while the process serves HTTP (it says nothing about the store; see /ready)."""
    return {
        "status": "ok",
        "version": __version__,
        "source": state.source_name,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "time": now_iso(),
        "sources": state.streaming.source_status(),
    }


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
