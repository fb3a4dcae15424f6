"""End-to-end harness: the real app served by uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from ib_stream.api.app import create_app
from ib_stream.api.state import ServiceState
from ib_stream.clock import Clock
from ib_stream.settings import Settings, load_settings
from ib_stream.storage import AppendResult, TickStore
from ib_stream.streaming import TickSource

REPO = Path(__file__).resolve().parents[2]
AAPL = 265598
ES = 495512563


class AheadClock:
    """The wall clock, which a test may move ahead (never back): the service then sees ticks of the coming minutes
    arrive as they happen instead of from the future (which it refuses, and which never makes live bars final)."""

    def __init__(self) -> None:
        self._offset = 0
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return time.time_ns() + self._offset

    def advance_to(self, when_ns: int) -> None:
        """Make it at least `when_ns` now."""
        with self._lock:
            self._offset = max(self._offset, when_ns - time.time_ns())


@dataclass
class LiveServer:
    """A running service: its base URL, the FastAPI app and its event loop (to publish ticks)."""

    url: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop
    settings: Settings
    clock: AheadClock | None = None

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.service
        return state

    @property
    def store(self) -> TickStore:
        """The store the service owns: the tests reach it here, the routes cannot (the façade keeps it private)."""
        return self.state._store

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(
        self, contract_id: int, tick_type: str, ticks: Sequence[dict[str, Any]], source: str = "test"
    ) -> AppendResult:
        """Store ticks through the StreamingApp (they reach live subscribers too)."""
        result: AppendResult = self.run(self.state.streaming.publish(contract_id, tick_type, ticks, source))
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    settings: Settings, sources: Sequence[TickSource] | None = (), clock: Clock | None = None
) -> tuple[LiveServer, Callable[[], None]]:
    """Start uvicorn with the app in a background thread; return the server and a stop function."""
    app = create_app(settings, sources=sources, run_scheduler=False, clock=clock)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        finally:
            # Let tasks that outlive the server (SSE shutdown watchers) finish, then close the loop.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    ahead = clock if isinstance(clock, AheadClock) else None
    return LiveServer(f"http://127.0.0.1:{port}", app, loops[0], settings, ahead), stop


def test_settings(data_root: Path, **overrides: Any) -> Settings:
    """Settings for a test service: its own data root, the repository's contracts, fast fsync, no alert engine."""
    storage = {"data_root": str(data_root), "fsync_interval_ms": 1, **overrides.pop("storage", {})}
    # The alert engine is a live subscriber of its own: tests that count subscribers turn it on themselves.
    overrides.setdefault("alerts", {"enabled": False})
    return load_settings(
        REPO / "config" / "ib-stream.toml",
        storage=storage,
        contracts_file=str(REPO / "config" / "contracts.toml"),
        **overrides,
    )


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A service with no live source (tests publish ticks themselves), on a wall clock they may move ahead."""
    server, stop = start_server(test_settings(tmp_path / "storage"), clock=AheadClock())
    yield server
    stop()
