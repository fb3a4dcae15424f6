"""What the routes share: the service state held by the app and the dependency accessors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from ib_stream.clock import Clock
from ib_stream.domain import Contract
from ib_stream.orderflow.query import StorageQuery
from ib_stream.settings import Settings
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import StreamingApp


@dataclass
class ServiceState:
    """Everything the lifespan owns."""

    settings: Settings
    clock: Clock
    store: TickStore
    streaming: StreamingApp
    contracts: list[Contract]
    source_name: str
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    query: StorageQuery = field(init=False)

    def __post_init__(self) -> None:
        self.query = StorageQuery(self.store.engine, config=self.settings.storage, executor=self.store.executor)


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]
