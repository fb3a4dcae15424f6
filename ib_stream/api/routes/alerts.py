"""Routes: the alert history (`GET /v2/alerts?contract_id=&since=&limit=`), newest first, and the rules in force."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ib_stream.alerts.history import with_times
from ib_stream.api.params import MAX_CONTRACT_ID
from ib_stream.api.state import State
from ib_stream.times import iso_us, parse_http_time

router = APIRouter(tags=["alerts"])
MAX_ALERTS = 10_000


@router.get("/v2/alerts")
async def alerts(
    state: State,
    contract_id: int | None = Query(
        None, ge=1, le=MAX_CONTRACT_ID, description="Only this contract's alerts (default: every contract)."
    ),
    since: str | None = Query(None, description="Only alerts whose condition became true at or after this time."),
    limit: int = Query(100, ge=1, le=MAX_ALERTS, description="At most this many alerts (the newest)."),
) -> dict[str, Any]:
    """Fired alerts, newest first: rule, contract, bar, direction, value, threshold and message."""
    since_ns = parse_http_time(since, "since") if since is not None else None
    engine = state.alerts
    found = await engine.query(contract_id, since_ns, limit) if engine is not None else []
    return {
        "enabled": engine is not None,
        "contract_id": contract_id,
        "since": iso_us(since_ns) if since_ns is not None else None,
        "count": len(found),
        "alerts": [with_times(row) for row in found],
    }


@router.get("/v2/alerts/rules")
async def alert_rules(state: State) -> dict[str, Any]:
    """The alert rules in force (empty when the alert engine is not running)."""
    engine = state.alerts
    if engine is None:
        return {"enabled": False, "resolution": None, "rules": []}
    config = engine.config
    return {"enabled": True, "resolution": config.resolution, "rules": [r.model_dump() for r in config.rules]}
