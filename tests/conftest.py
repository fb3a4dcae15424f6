"""Shared fixtures: a temporary data root, a frozen clock, tick factories and an open store."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock, to_ns
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The services the tests start list themselves in a state directory of the test run, not the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="ib-stream-test-state-")
T0 = datetime(2025, 1, 10, 14, 0, tzinfo=UTC)  # a Friday, 09:00 New York
T0_NS = to_ns(T0)
CONTRACT = 265598


def requires_shared_data(subdir: str) -> Path:
    """Return ../shared/data/<subdir>, or skip: the samples live outside the repository (CI has them)."""
    path = SHARED_DATA / subdir
    if not path.exists():
        pytest.skip(f"real market-data samples not found at {path} (they live beside the checkout, not in it)")
    return path


def quote(ts_ns: int, i: int = 0, **over: Any) -> dict[str, Any]:
    """A deterministic bid/ask tick."""
    tick = {
        "ts": ts_ns,
        "bid_price": 100.0 + (i % 7) * 0.01,
        "bid_size": float(100 + i % 13),
        "ask_price": 100.02 + (i % 7) * 0.01,
        "ask_size": float(200 + i % 11),
    }
    tick.update(over)
    return tick


def trade(ts_ns: int, i: int = 0, **over: Any) -> dict[str, Any]:
    """A deterministic trade tick."""
    tick = {"ts": ts_ns, "price": 100.0 + (i % 9) * 0.01, "size": float(1 + i % 17), "exchange": "NASDAQ"}
    tick.update(over)
    return tick


def seconds(n: float) -> int:
    return int(n * NS_PER_SECOND)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(
        data_root=tmp_path / "storage",
        fsync_interval_ms=1,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
    )


@pytest.fixture
def store(config: StorageConfig, clock: ManualClock) -> Iterator[TickStore]:
    opened = TickStore(config, clock).open()
    yield opened
    opened.close()
