"""Heatmap rollups (per-second resting sums of depth) over a real store: the heatmap served from them equals the
pure walk of every depth update (position rows and price levels, windows aligned to hours or not, a quiet hour,
a last partial second), a `levels` cut or a start off the whole second falls back to the walk, and late depth —
inside a rolled-up hour or before it — is never served stale."""

from __future__ import annotations

import numpy as np
import pytest

from ib_stream.analytics.heatmap import SECOND_NS
from ib_stream.clock import ManualClock
from ib_stream.orderflow.dashboard import HeatmapResult, liquidity_heatmap
from ib_stream.storage import TickStore
from ib_stream.store.heatmap_rollups import update_heatmap_rollups
from tests.conftest import CONTRACT, T0_NS
from tests.unit.test_depth_rollups import AAPL, HOUR, MINUTE, depth_day

S = SECOND_NS
WINDOWS = [  # (start, end, columns, rows)
    (T0_NS, T0_NS + 4 * HOUR, 300, 60),  # whole hours, the quiet 16:00 hour inside
    (T0_NS + 17 * MINUTE + 5 * S, T0_NS + 3 * HOUR + 50 * MINUTE + 300_000_000, 700, 200),  # mid-hour, partial second
    (T0_NS + 59 * MINUTE, T0_NS + HOUR + MINUTE, 100, 1000),  # across one boundary, 1.2 s → 2 s columns
]


def _heatmaps(
    store: TickStore, start: int, end: int, columns: int, rows: int, **kw: object
) -> tuple[HeatmapResult, HeatmapResult]:
    rolled = liquidity_heatmap(store.engine, AAPL, start, end, columns, rows, **kw)  # type: ignore[arg-type]
    walked = liquidity_heatmap(store.engine, AAPL, start, end, columns, rows, use_rollups=False, **kw)  # type: ignore[arg-type]
    return rolled, walked


def _assert_same(rolled: HeatmapResult, walked: HeatmapResult) -> None:
    assert walked.rollups_used == 0
    assert (rolled.map.column_ns, rolled.map.columns, rolled.map.axis) == (
        walked.map.column_ns,
        walked.map.columns,
        walked.map.axis,
    )
    assert walked.map.max_size > 0
    for name in ("bids", "asks"):
        np.testing.assert_allclose(getattr(rolled.map, name), getattr(walked.map, name), rtol=1e-9, atol=1e-6)
        np.testing.assert_array_equal(np.round(getattr(rolled.map, name), 2), np.round(getattr(walked.map, name), 2))


def _compare(store: TickStore, windows: list[tuple[int, int, int, int]] = WINDOWS) -> list[int]:
    used = []
    for start, end, columns, rows in windows:
        rolled, walked = _heatmaps(store, start, end, columns, rows)
        _assert_same(rolled, walked)
        assert rolled.map.column_ns % S == 0
        used.append(rolled.rollups_used)
    return used


@pytest.mark.parametrize("by_price", [False, True])
def test_the_rolled_up_heatmap_is_the_walk_and_late_depth_is_never_served_stale(
    store: TickStore, clock: ManualClock, by_price: bool
) -> None:
    store.append_batch_sync(CONTRACT, "depth", depth_day(by_price, 23), source="test")
    clock.set(T0_NS + 6 * HOUR)
    store.run_archival()
    store.run_snapshots()
    assert _compare(store) == [0, 0, 0]  # nothing rolled up yet: the walk
    assert update_heatmap_rollups(store.engine) == 3  # 14:00, 15:00 and 17:00: the quiet 16:00 hour has none
    assert update_heatmap_rollups(store.engine) == 0  # idempotent
    assert _compare(store) == [3, 3, 2]
    start, end, columns, rows = WINDOWS[1]
    for kw in ({"levels": 3}, {}):  # a `levels` cut, a start off the whole second: the walk
        lo = start if kw else start + 1
        rolled, walked = _heatmaps(store, lo, end, columns, rows, **kw)
        assert rolled.rollups_used == 0 and rolled.deltas_replayed == walked.deltas_replayed
        _assert_same(rolled, walked)

    # A late depth tick inside the rolled-up 15:00 hour: bypassed while hot, then stale until rebuilt.
    late = {"ts": T0_NS + HOUR + 30 * MINUTE + 123, "side": "bid", "position": 0, "operation": "insert",
            "price": 99.5, "size": 5000.0, "market_maker": "", "by_price": by_price}  # fmt: skip
    store.append_batch_sync(CONTRACT, "depth", [late], source="test")
    assert _compare(store) == [1, 1, 1]  # only 14:00: 15:00 is hot, 17:00's opening book changed (watermark)
    clock.set(T0_NS + 7 * HOUR)
    store.run_archival()
    assert _compare(store) == [1, 1, 1]  # archived: 15:00's files changed, 17:00's watermark too: both stale
    store.run_snapshots()
    assert store.run_rollups() >= 2  # the store's rollups job rewrites 15:00 and 17:00
    assert update_heatmap_rollups(store.engine) == 0
    assert _compare(store) == [3, 3, 2]


def test_a_window_inside_one_rolled_up_hour_and_its_last_partial_second(store: TickStore, clock: ManualClock) -> None:
    """A window that ends mid-second reads the whole seconds from the rollup and walks only its last fraction (from
    the book at its start: `book_at`)."""
    store.append_batch_sync(CONTRACT, "depth", depth_day(False, 5), source="test")
    clock.set(T0_NS + 6 * HOUR)
    store.run_archival()
    store.run_snapshots()
    assert update_heatmap_rollups(store.engine) == 3
    start, end = T0_NS + 10 * MINUTE, T0_NS + 40 * MINUTE + 700_000_000
    rolled, walked = _heatmaps(store, start, end, 1800, 100)
    assert rolled.rollups_used == 1 and rolled.map.column_ns == 2 * S  # 1.0004 s rounded up to whole seconds
    _assert_same(rolled, walked)
