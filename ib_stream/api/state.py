"""How a route reaches the service façade: the `State` dependency (`state: State` in a route's signature)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ib_stream.api.service import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The façade of the app serving `request` (built by its lifespan)."""
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]

__all__ = ["ServiceState", "State", "get_state"]
