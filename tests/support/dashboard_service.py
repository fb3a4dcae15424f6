"""A service for the dashboard's browser tests and screenshots: the simulated market, started on a data root that
already holds some minutes of simulated history (the simulator continues from the stored prices)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ib_stream.clock import NS_PER_SECOND, SystemClock
from ib_stream.contracts import load_contracts
from ib_stream.settings import Settings
from ib_stream.sources.sim import SOURCE, SimMarket
from ib_stream.storage import TickStore
from tests.e2e.conftest import LiveServer, start_server, test_settings

BATCH = 5_000


def prefill_sim_history(settings: Settings, minutes: float, now_ns: int | None = None) -> int:
    """Store `minutes` of simulated ticks before now for every recorded contract; return the ticks stored."""
    now = now_ns if now_ns is not None else time.time_ns()
    start = now - int(minutes * 60 * NS_PER_SECOND)
    store = TickStore(settings.storage, SystemClock()).open()
    stored = 0
    try:
        for contract in load_contracts(settings.contracts_file):
            if not contract.record:
                continue
            ticks = SimMarket(contract, settings.sim, start).advance(now)
            for tick_type, rows in ticks.items():
                for first in range(0, len(rows), BATCH):
                    store.append_batch_sync(contract.con_id, tick_type, rows[first : first + BATCH], SOURCE)
                stored += len(rows)
    finally:
        store.close()
    return stored


def start_sim_service(
    data_root: Path, history_minutes: float = 20, **overrides: Any
) -> tuple[LiveServer, Callable[[], None]]:
    """The real service recording the simulated market into `data_root`, after `history_minutes` of history."""
    overrides.setdefault("source", "sim")
    settings = test_settings(data_root, **overrides)
    if history_minutes > 0:
        prefill_sim_history(settings, history_minutes)
    return start_server(settings, sources=None)
