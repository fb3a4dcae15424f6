"""Event time stays sane: a tick too far ahead of the clock is refused where it is published (naming the tick,
the value, the limit and the setting), and the live bars' watermark never runs ahead of the wall clock — not
with a tick inside the allowed skew, and not after a restart over a bad tick stored before the check existed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.errors import TickValidationError
from ib_stream.live.feed import LiveBarFeed
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from ib_stream.times import FutureSkew, check_event_time, iso_ns, screen_event_times
from tests.conftest import CONTRACT, T0_NS, quote, trade

S = NS_PER_SECOND
MINUTE = 60 * S
YEAR = 365 * 86_400 * S
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST))
LIVE = FutureSkew.of_seconds(60, "source_max_future_skew_seconds")


# ---- the shared check ------------------------------------------------------------------------------------------
def test_the_check_names_the_tick_the_value_the_limit_and_the_setting() -> None:
    check_event_time(T0_NS + 60 * S, T0_NS, 60 * S)  # exactly at the limit: accepted
    with pytest.raises(TickValidationError) as caught:
        check_event_time(T0_NS + 10 * YEAR, T0_NS, 60 * S, index=7, tick_type="last", setting="imports.x")
    error = caught.value
    limit = T0_NS + 60 * S
    assert error.field == "ts" and error.value == T0_NS + 10 * YEAR
    assert error.details == {
        "field": "ts",
        "value": T0_NS + 10 * YEAR,
        "tick_type": "last",
        "index": 7,
        "limit_ns": limit,
        "limit": "2025-01-10T14:01:00.000000000Z",
        "max_future_skew_seconds": 60.0,
        "setting": "imports.x",
    }
    assert error.message == (
        f"ts {T0_NS + 10 * YEAR} ({iso_ns(T0_NS + 10 * YEAR)}) is after the limit 2025-01-10T14:01:00.000000000Z: "
        "more than 60 s ahead of the clock (imports.x)"
    )
    assert error.to_dict()["error"]["code"] == "INVALID_TICK"


def test_screening_a_batch_rejects_at_the_first_or_lists_each_with_skip() -> None:
    ticks: list[Any] = [trade(T0_NS), trade(T0_NS + YEAR), {"ts": "soon"}, trade(T0_NS + 61 * S), trade(T0_NS + S)]
    with pytest.raises(TickValidationError) as caught:
        screen_event_times(ticks, T0_NS, 60 * S, tick_type="last")
    assert caught.value.details["index"] == 1
    kept, refused = screen_event_times(ticks, T0_NS, 60 * S, tick_type="last", on_error="skip")
    assert kept == [0, 2, 4]  # a ts that is no integer is left to the tick validator
    assert [(e.details["index"], e.value) for e in refused] == [(1, T0_NS + YEAR), (3, T0_NS + 61 * S)]


# ---- where live sources publish --------------------------------------------------------------------------------
@pytest.fixture
async def app(store: TickStore) -> AsyncIterator[StreamingApp]:
    streaming = StreamingApp(store, [AAPL], future_skew=LIVE)
    await streaming.start([])
    yield streaming
    await streaming.stop()


def stored(store: TickStore, tick_type: TickType = TickType.LAST) -> list[int]:
    table = store.engine.read_stream(StreamKey(CONTRACT, tick_type), 0, 2**62)
    return table.column("ts").cast("int64").to_pylist()


async def test_a_live_source_batch_with_a_future_tick_is_refused_whole(store: TickStore, app: StreamingApp) -> None:
    with pytest.raises(TickValidationError) as caught:
        await app.publish(CONTRACT, TickType.LAST, [trade(T0_NS - S), trade(T0_NS + 2 * MINUTE)], "ib_tbt")
    assert caught.value.details["index"] == 1 and caught.value.details["setting"] == "source_max_future_skew_seconds"
    assert stored(store) == [] and app.stats.future_ticks_refused == 1
    result = await app.publish(CONTRACT, TickType.LAST, [trade(T0_NS - S), trade(T0_NS + 30 * S)], "ib_tbt")
    assert result.count == 2 and stored(store) == [T0_NS - S, T0_NS + 30 * S]  # within the skew


async def test_skip_reports_future_and_invalid_ticks_at_their_place_in_the_batch(
    store: TickStore, app: StreamingApp
) -> None:
    ticks = [trade(T0_NS, 0), trade(T0_NS + YEAR, 1), trade(T0_NS + S, 2, price=-1.0), trade(T0_NS + 2 * S, 3)]
    result = await app.publish(CONTRACT, TickType.LAST, ticks, "api", on_error="skip")
    assert result.count == 2 and (result.first_seq, result.last_seq) == (1, 2)
    assert [(e.details["index"], e.field) for e in result.rejected] == [(1, "ts"), (2, "price")]
    assert stored(store) == [T0_NS, T0_NS + 2 * S]


# ---- the live bars' watermark ----------------------------------------------------------------------------------
async def open_feed(app: StreamingApp) -> tuple[LiveBarFeed, list[dict[str, Any]]]:
    feed = LiveBarFeed.create(app, AAPL, "1m", obi_source="quotes", lateness_ns=2 * S)
    rows = await feed.open()
    return feed, rows


async def publish_and_update(app: StreamingApp, feed: LiveBarFeed, tick_type: TickType, ticks: list[dict]) -> list:
    await app.publish(CONTRACT, tick_type, ticks, "test")
    assert feed.sub is not None
    return await feed.update(await feed.sub.get(5.0))


async def test_a_tick_ahead_within_the_skew_does_not_make_bars_final_early(
    store: TickStore, clock: ManualClock, app: StreamingApp
) -> None:
    bar = T0_NS  # 14:00; the wall clock is at 14:00:30
    clock.set(bar + 30 * S)
    feed, _ = await open_feed(app)
    try:
        rows = await publish_and_update(app, feed, TickType.LAST, [trade(bar + 10 * S, 0)])
        # 45 s ahead of the clock (inside the 60 s skew): stored, but the minute 14:00 has not ended.
        rows += await publish_and_update(app, feed, TickType.BID_ASK, [quote(bar + 75 * S, 1)])
        assert stored(store, TickType.BID_ASK) == [bar + 75 * S]
        assert [r for r in rows if r["final"]] == []
        assert feed.builder.watermark <= clock.now_ns()
        # Once the clock has passed the bar's end and the lateness, the next tick makes it final, once.
        clock.set(bar + 63 * S)
        later = await publish_and_update(app, feed, TickType.LAST, [trade(bar + 63 * S, 2)])
    finally:
        feed.close()
    finals = [r for r in later if r["final"]]
    assert [(r["ts"], r["trade_count"]) for r in finals] == [(bar, 1)]


async def test_a_restart_over_a_stored_far_future_tick_does_not_bring_its_watermark_back(
    store: TickStore, clock: ManualClock, app: StreamingApp
) -> None:
    bar = T0_NS
    clock.set(bar + 20 * S)
    # Stored before event times were checked (as the tester's 2036 tick was): straight into the store.
    store.append_batch_sync(CONTRACT, TickType.LAST, [trade(bar + 5 * S, 0), trade(bar + 10 * YEAR, 1)], source="api")
    feed, first = await open_feed(app)  # the restart: the feed primes from the store
    try:
        assert [r for r in first if r["final"]] == [] and [r["ts"] for r in first] == [bar]
        assert feed.builder.watermark <= clock.now_ns() and feed.builder.ahead_ticks == 1
        rows = await publish_and_update(app, feed, TickType.LAST, [trade(bar + 20 * S, 2)])
        assert [(r["ts"], r["final"], r["trade_count"]) for r in rows] == [(bar, False, 2)]  # still forming
        clock.set(bar + 70 * S)
        rows = await publish_and_update(app, feed, TickType.LAST, [trade(bar + 70 * S, 3)])
    finally:
        feed.close()
    assert [(r["ts"], r["final"], r["trade_count"]) for r in rows] == [(bar, True, 2), (bar + MINUTE, False, 1)]
