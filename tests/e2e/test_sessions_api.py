"""End to end: /v2/sessions against a real server — counts and OHLC equal an independent pandas computation."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ib_stream.clock import ManualClock
from ib_stream.storage import MarketSessions
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as settings_for

TYPE_ORDER = ["bid_ask", "last", "all_last", "mid_point", "depth"]
SESSION_KEYS = {
    "contract_id", "symbol", "calendar", "session_type", "date", "timezone", "start", "end", "start_exchange",
    "end_exchange", "breaks", "is_open", "in_progress", "data_end", "tick_types", "tick_counts", "total_ticks",
    "summary_source", "summary",
}  # fmt: skip


def ns(text: str) -> int:
    return int(pd.Timestamp(text).tz_convert("UTC").value)


def spread(start: str, end: str, count: int, rng: np.random.Generator) -> list[int]:
    """`count` event times in [start, end) on IB's 1-second grid (some repeat), sorted."""
    seconds = rng.integers(ns(start) // 10**9, ns(end) // 10**9, count)
    return sorted(int(s) * 10**9 for s in seconds)


def make_ticks() -> dict[tuple[int, str], list[dict[str, Any]]]:
    """What the test publishes: AAPL around 2025-07-03 (an early close) and days with only quotes; ES at its break."""
    rng = np.random.default_rng(7)
    trades_times = [
        *spread("2025-07-03T12:00Z", "2025-07-03T13:30Z", 40, rng),  # pre-market
        ns("2025-07-03T13:30Z"),  # the open is inside the session
        *spread("2025-07-03T13:30Z", "2025-07-03T17:00Z", 200, rng),
        ns("2025-07-03T17:00Z"),  # the early close is not: it opens after-hours
        *spread("2025-07-03T17:00Z", "2025-07-03T21:00Z", 30, rng),  # after-hours (13:00-17:00 EDT)
        *spread("2025-07-03T21:00Z", "2025-07-04T04:00Z", 5, rng),  # no session: the evening before a holiday
    ]
    price = 230 + np.cumsum(rng.normal(0, 0.05, len(trades_times)))
    trades = [
        {"ts": t, "price": round(float(p), 2), "size": float(rng.integers(1, 500)), "exchange": "NASDAQ"}
        for t, p in zip(trades_times, price, strict=True)
    ]
    quote_times = spread("2025-07-03T13:30Z", "2025-07-03T17:00Z", 100, rng)
    quotes = [
        {"ts": t, "bid_price": 230.0 + i * 0.01, "bid_size": 100.0, "ask_price": 230.02 + i * 0.01, "ask_size": 200.0}
        for i, t in enumerate(quote_times)
    ]
    # 2025-07-01: quotes only, one of them one-sided (bid 0); 2025-07-02: mid-points only.
    quotes += [
        {"ts": t, "bid_price": 0.0 if i == 3 else 229.0 + i * 0.1, "bid_size": 1.0, "ask_price": 229.5 + i * 0.1,
         "ask_size": 1.0}
        for i, t in enumerate(spread("2025-07-01T14:00Z", "2025-07-01T19:00Z", 12, rng))
    ]  # fmt: skip
    mids = [{"ts": t, "mid_point": 230.01 + i * 0.01} for i, t in enumerate(quote_times[::2])]
    mids += [
        {"ts": t, "mid_point": 228.0 - i * 0.25}
        for i, t in enumerate(spread("2025-07-02T14:00Z", "2025-07-02T19:00Z", 9, rng))
    ]
    # ES on Tuesday 2025-07-08, Chicago time: 15:59, 16:00 and 16:30 (the break), 17:00 and 17:01 (Wednesday's session).
    es_times = ["20:59", "21:00", "21:30", "22:00", "22:01"]
    es_trades = [
        {"ts": ns(f"2025-07-08T{hhmm}Z"), "price": 6200.0 + i, "size": 1.0 + i} for i, hhmm in enumerate(es_times)
    ]
    return {(AAPL, "last"): trades, (AAPL, "bid_ask"): quotes, (AAPL, "mid_point"): mids, (ES, "last"): es_trades}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, pd.DataFrame]]:
    """One service for the module, holding the ticks of `make_ticks`; also the published ticks as a frame."""
    live, stop = start_server(settings_for(tmp_path_factory.mktemp("sessions") / "storage"))
    frames = []
    try:
        for (contract_id, tick_type), ticks in make_ticks().items():
            result = live.publish(contract_id, tick_type, ticks)
            frame = pd.DataFrame(ticks)
            frame["seq"] = range(result.first_seq, result.first_seq + len(ticks))
            frame["contract_id"], frame["tick_type"] = contract_id, tick_type
            frames.append(frame)
        yield live, pd.concat(frames, ignore_index=True)
    finally:
        stop()


@pytest.fixture(scope="module")
def client(server: tuple[LiveServer, pd.DataFrame]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def published(server: tuple[LiveServer, pd.DataFrame]) -> pd.DataFrame:
    return server[1]


def window(frame: pd.DataFrame, contract_id: int, start: str, end: str) -> pd.DataFrame:
    inside = (frame["contract_id"] == contract_id) & (frame["ts"] >= ns(start)) & (frame["ts"] < ns(end))
    return frame[inside]


def get(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---- a past session: counts and summary against pandas --------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "start", "end"),
    [
        ("regular", "2025-07-03T13:30Z", "2025-07-03T17:00Z"),
        ("pre_market", "2025-07-03T08:00Z", "2025-07-03T13:30Z"),
        ("after_hours", "2025-07-03T17:00Z", "2025-07-03T21:00Z"),
        ("extended", "2025-07-03T08:00Z", "2025-07-03T21:00Z"),
        ("overnight", "2025-07-03T00:00Z", "2025-07-03T08:00Z"),
    ],
)
def test_session_of_a_date_matches_pandas(
    client: httpx.Client, published: pd.DataFrame, session: str, start: str, end: str
) -> None:
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-03", session=session)
    assert set(body) >= SESSION_KEYS
    assert (body["contract_id"], body["symbol"], body["calendar"]) == (AAPL, "AAPL", "XNAS")
    assert (body["session_type"], body["date"], body["timezone"]) == (session, "2025-07-03", "America/New_York")
    assert (ns(body["start"]), ns(body["end"])) == (ns(start), ns(end))
    assert body["start"].endswith("Z") and body["end"].endswith("Z")
    assert ns(body["start_exchange"]) == ns(start) and body["start_exchange"].endswith("-04:00")
    assert ns(body["end_exchange"]) == ns(end) and body["end_exchange"].endswith("-04:00")
    assert body["is_open"] is False and body["in_progress"] is False and body["data_end"] == body["end"]
    assert body["tick_types"] == ["bid_ask", "last", "mid_point", "depth"]  # the contract's configured types

    inside = window(published, AAPL, start, end)
    expected_counts = {t: int((inside["tick_type"] == t).sum()) for t in body["tick_types"]}
    assert body["tick_counts"] == expected_counts
    assert body["total_ticks"] == sum(expected_counts.values())
    trades = inside[inside["tick_type"] == "last"]
    if trades.empty:
        assert (body["summary_source"], body["summary"]) == (None, None)
        return
    assert body["summary_source"] == "last"
    summary = body["summary"]
    assert summary["open"] == trades["price"].iloc[0] and summary["close"] == trades["price"].iloc[-1]
    assert summary["high"] == trades["price"].max() and summary["low"] == trades["price"].min()
    assert summary["volume"] == trades["size"].sum() and summary["trade_count"] == len(trades)
    assert summary["vwap"] == pytest.approx((trades["price"] * trades["size"]).sum() / trades["size"].sum(), rel=1e-12)
    assert ns(summary["first_time"]) == trades["ts"].iloc[0] and ns(summary["last_time"]) == trades["ts"].iloc[-1]


def test_summary_falls_back_to_mid_points_then_quotes(client: httpx.Client, published: pd.DataFrame) -> None:
    mids = window(published, AAPL, "2025-07-02T13:30Z", "2025-07-02T20:00Z")
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-02")
    assert body["summary_source"] == "mid_point"
    assert body["tick_counts"]["mid_point"] == len(mids) > 0
    values = mids["mid_point"]
    expected = (values.iloc[0], values.max(), values.min(), values.iloc[-1])
    assert tuple(body["summary"][k] for k in ("open", "high", "low", "close")) == expected
    assert body["summary"]["volume"] is None and body["summary"]["trade_count"] is None

    quotes = window(published, AAPL, "2025-07-01T13:30Z", "2025-07-01T20:00Z")
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-01")
    assert body["summary_source"] == "bid_ask" and body["tick_counts"]["bid_ask"] == len(quotes)
    two_sided = quotes[(quotes["bid_price"] > 0) & (quotes["ask_price"] > 0)]
    mid = (two_sided["bid_price"] + two_sided["ask_price"]) / 2
    assert body["summary"]["tick_count"] == len(two_sided) == len(quotes) - 1
    assert body["summary"]["open"] == pytest.approx(mid.iloc[0]) and body["summary"]["close"] == pytest.approx(
        mid.iloc[-1]
    )
    assert body["summary"]["low"] == pytest.approx(mid.min()) and body["summary"]["high"] == pytest.approx(mid.max())

    empty = get(client, f"/v2/sessions/{AAPL}/2025-06-30")
    assert (empty["summary_source"], empty["summary"], empty["total_ticks"]) == (None, None, 0)


def test_tick_types_parameter(client: httpx.Client, published: pd.DataFrame) -> None:
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-03", tick_types="MidPoint,bid_ask")
    inside = window(published, AAPL, "2025-07-03T13:30Z", "2025-07-03T17:00Z")
    assert body["tick_types"] == ["mid_point", "bid_ask"]
    assert body["tick_counts"] == {t: int((inside["tick_type"] == t).sum()) for t in ("mid_point", "bid_ask")}
    assert body["summary_source"] == "mid_point"  # trades were not asked for


def test_futures_session_and_daily_break(client: httpx.Client, published: pd.DataFrame) -> None:
    tuesday = get(client, f"/v2/sessions/{ES}/2025-07-08", tick_types="last")
    assert (tuesday["calendar"], tuesday["timezone"]) == ("CMES", "America/Chicago")
    assert (
        tuesday["start_exchange"] == "2025-07-07T17:00:00-05:00"
        and tuesday["end_exchange"] == "2025-07-08T16:00:00-05:00"
    )
    assert tuesday["tick_counts"] == {"last": 1} and tuesday["summary"]["close"] == 6200.0  # 15:59 CT
    wednesday = get(client, f"/v2/sessions/{ES}/2025-07-09", tick_types="last", session="extended")
    assert wednesday["tick_counts"] == {"last": 2}  # 17:00 and 17:01 CT; 16:00 and 16:30 CT are in the break
    expected = window(published, ES, "2025-07-08T22:00Z", "2025-07-09T21:00Z")
    assert (
        wednesday["summary"]["open"] == expected["price"].iloc[0]
        and wednesday["summary"]["volume"] == expected["size"].sum()
    )


# ---- include=ticks -------------------------------------------------------------------------------------------


def expected_ticks(published: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    inside = window(published, AAPL, start, end).copy()
    inside["order"] = inside["tick_type"].map(TYPE_ORDER.index)
    return inside.sort_values(["ts", "order", "seq"], kind="stable", ignore_index=True)


def test_session_with_order_flow_bars(client: httpx.Client, published: pd.DataFrame) -> None:
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-03", bars="ohlc,cvd", resolution="15m")
    bars = body["bars"]
    assert (bars["kinds"], bars["resolution"], bars["count"]) == (["ohlc", "cvd"], "15m", len(bars["data"]))
    # 09:30-13:00 New York on the early close: 14 quarter hours, every one a row (empty ones flagged).
    assert bars["count"] == 14 and ns(bars["data"][0]["timestamp"]) == ns(body["start"])
    inside = window(published, AAPL, body["start"], body["end"])
    trades = inside[inside["tick_type"] == "last"]
    trades = trades.set_index(pd.to_datetime(trades["ts"], utc=True))
    expected = trades["price"].resample("15min").ohlc().join(trades["size"].resample("15min").sum())
    full = [row for row in bars["data"] if not row["empty"]]
    assert [(r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in full] == [
        tuple(row) for row in expected.dropna().itertuples(index=False)
    ]
    # The same bars as /v2/bars for the session window.
    direct = get(client, f"/v2/bars/{AAPL}", kinds="ohlc,cvd", resolution="15m", date="2025-07-03")
    assert direct["data"] == bars["data"]


@pytest.mark.parametrize("fmt", ["csv", "arrow", "parquet"])
def test_session_bars_as_a_table(client: httpx.Client, fmt: str) -> None:
    params = {"bars": "ohlc,cvd", "resolution": "15m"}
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-03", **params)
    response = client.get(f"/v2/sessions/{AAPL}/2025-07-03", params={**params, "format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["x-session-start"] == body["start"] and response.headers["x-session-end"] == body["end"]
    assert response.headers["x-session-date"] == "2025-07-03" and response.headers["x-total-count"] == "14"
    assert f"{AAPL}_session_2025-07-03_regular_bars_ohlc-cvd_15m" in response.headers["content-disposition"]
    if fmt == "csv":
        table = pd.read_csv(io.BytesIO(response.content))
    elif fmt == "arrow":
        table = pa.ipc.open_stream(response.content).read_all().to_pandas()
    else:
        table = pq.read_table(io.BytesIO(response.content)).to_pandas()
    expected = pd.DataFrame(body["bars"]["data"])
    assert list(table.columns) == [c for c in expected.columns if c != "ts"]  # JSON rows add `ts` (ns)
    assert pd.to_datetime(table["timestamp"], utc=True).astype("int64").tolist() == expected["ts"].tolist()
    for column in ("open", "close", "volume", "buy_volume", "sell_volume", "delta", "cvd_close", "empty"):
        assert table[column].tolist() == pytest.approx(expected[column].tolist(), nan_ok=True), column


def test_a_session_not_started_has_an_empty_bars_table(client: httpx.Client) -> None:
    response = client.get(f"/v2/sessions/{AAPL}/2030-01-02", params={"bars": "ohlc", "format": "arrow"})
    assert response.status_code == 200, response.text
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.num_rows == 0 and "open" in table.column_names and response.headers["x-total-count"] == "0"
    body = get(client, f"/v2/sessions/{AAPL}/2030-01-02", bars="ohlc")
    assert (body["bars"]["count"], body["bars"]["data"], body["bars"]["side_methods"]) == (0, [], {})


def test_include_ticks_all_and_truncated(client: httpx.Client, published: pd.DataFrame) -> None:
    expected = expected_ticks(published, "2025-07-03T13:30Z", "2025-07-03T17:00Z")
    body = get(client, f"/v2/sessions/{AAPL}/2025-07-03", include="ticks")
    assert body["truncated"] is False and body["limit"] == 10_000
    got = [(t["ts"], t["tick_type"], t["seq"]) for t in body["ticks"]]
    assert got == list(expected[["ts", "tick_type", "seq"]].itertuples(index=False, name=None))
    first_trade = next(t for t in body["ticks"] if t["tick_type"] == "last")
    row = expected[expected["tick_type"] == "last"].iloc[0]
    assert (first_trade["price"], first_trade["size"], first_trade["exchange"]) == (row["price"], row["size"], "NASDAQ")
    assert ns(first_trade["timestamp"]) == first_trade["ts"] and first_trade["timestamp"].endswith("Z")

    for limit in (1, 25, len(expected) - 1):
        cut = get(client, f"/v2/sessions/{AAPL}/2025-07-03", include="ticks", limit=limit)
        assert cut["truncated"] is True and len(cut["ticks"]) == limit
        assert [(t["ts"], t["tick_type"], t["seq"]) for t in cut["ticks"]] == got[:limit]
        assert cut["tick_counts"] == body["tick_counts"]  # counts are never truncated
    exact = get(client, f"/v2/sessions/{AAPL}/2025-07-03", include="ticks", limit=len(expected))
    assert exact["truncated"] is False and len(exact["ticks"]) == len(expected)
    assert "ticks" not in get(client, f"/v2/sessions/{AAPL}/2025-07-03")


# ---- current / previous --------------------------------------------------------------------------------------


@pytest.mark.parametrize("contract_id", [AAPL, ES])
def test_current_and_previous_agree_with_market_sessions(
    client: httpx.Client, server: tuple[LiveServer, pd.DataFrame], contract_id: int
) -> None:
    contract = server[0].state.streaming.require_contract(contract_id)
    sessions = MarketSessions.for_contract(contract)
    for session_type in ("regular", "extended"):
        before = time.time_ns()  # the live server's clock is the system clock
        current = get(client, f"/v2/sessions/{contract_id}/current", session=session_type)
        previous = get(client, f"/v2/sessions/{contract_id}/previous", session=session_type)
        after = time.time_ns()
        assert set(current) >= SESSION_KEYS and set(previous) >= SESSION_KEYS
        candidates = {
            (sessions.current(t, session_type).date.isoformat(), sessions.previous(t, session_type).date.isoformat())
            for t in (before, after)
        }
        assert (current["date"], previous["date"]) in candidates
        assert ns(previous["end"]) <= ns(current["start"])
        assert ns(current["start"]) <= after and current["session_type"] == session_type
        if current["in_progress"]:
            assert before <= ns(current["data_end"]) <= after  # a session in progress ends now
        else:
            assert current["data_end"] == current["end"] and current["is_open"] is False
        assert previous["is_open"] is False and previous["data_end"] == previous["end"]


@pytest.fixture
def frozen(server: tuple[LiveServer, pd.DataFrame]) -> Iterator[ManualClock]:
    """Swap the service clock for a manual one for one test (start_server takes no clock argument)."""
    state = server[0].state
    original, state.clock = state.clock, ManualClock(0)
    assert isinstance(state.clock, ManualClock)
    try:
        yield state.clock
    finally:
        state.clock = original


@pytest.mark.parametrize(
    ("now", "session", "current", "previous", "is_open"),
    [
        ("2025-07-03T15:00Z", "regular", "2025-07-03", "2025-07-02", True),  # in progress
        ("2025-07-03T18:00Z", "regular", "2025-07-03", "2025-07-02", False),  # after the early close
        ("2025-07-03T18:00Z", "after_hours", "2025-07-03", "2025-07-02", True),
        ("2025-07-04T16:00Z", "regular", "2025-07-03", "2025-07-02", False),  # the holiday
        ("2025-07-05T16:00Z", "extended", "2025-07-03", "2025-07-02", False),  # Saturday
        ("2025-07-07T01:00Z", "overnight", "2025-07-07", "2025-07-03", True),  # Sunday 21:00 EDT
        ("2025-07-07T14:00Z", "regular", "2025-07-07", "2025-07-03", True),
    ],
)
def test_current_and_previous_follow_the_service_clock(
    client: httpx.Client, frozen: ManualClock, now: str, session: str, current: str, previous: str, is_open: bool
) -> None:
    frozen.set(ns(now))
    body = get(client, f"/v2/sessions/{AAPL}/current", session=session)
    assert (body["date"], body["session_type"], body["is_open"]) == (current, session, is_open)
    assert get(client, f"/v2/sessions/{AAPL}/previous", session=session)["date"] == previous
    assert body["in_progress"] is is_open
    # A session in progress ends now; a finished one at its end.
    assert body["data_end"] == (now.replace("Z", ":00.000000Z") if is_open else body["end"])


def test_session_in_progress_counts_ticks_up_to_now(
    client: httpx.Client, frozen: ManualClock, published: pd.DataFrame
) -> None:
    frozen.set(ns("2025-07-03T15:00Z"))
    body = get(client, f"/v2/sessions/{AAPL}/current", include="ticks")
    inside = window(published, AAPL, "2025-07-03T13:30Z", "2025-07-03T15:00Z")
    assert body["tick_counts"] == {t: int((inside["tick_type"] == t).sum()) for t in body["tick_types"]}
    assert len(body["ticks"]) == len(inside) and max(t["ts"] for t in body["ticks"]) < ns("2025-07-03T15:00Z")
    assert body["summary"]["close"] == inside[inside["tick_type"] == "last"]["price"].iloc[-1]
    # The same date asked by date at that instant is the same answer.
    assert get(client, f"/v2/sessions/{AAPL}/2025-07-03", include="ticks") == body

    frozen.set(ns("2025-07-08T21:30Z"))  # ES in its daily break: Tuesday's session, closed
    es = get(client, f"/v2/sessions/{ES}/current", tick_types="last")
    assert (es["date"], es["is_open"], es["tick_counts"]) == ("2025-07-08", False, {"last": 1})
    frozen.set(ns("2025-07-08T22:01:30Z"))  # 17:01:30 CT: Wednesday's session, open
    es = get(client, f"/v2/sessions/{ES}/current", tick_types="last")
    assert (es["date"], es["is_open"], es["tick_counts"]) == ("2025-07-09", True, {"last": 2})
    assert es["start_exchange"] == "2025-07-08T17:00:00-05:00" and ns(es["data_end"]) == ns("2025-07-08T22:01:30Z")
    assert get(client, f"/v2/sessions/{ES}/previous", tick_types="last")["date"] == "2025-07-08"


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "field", "value"),
    [
        ("/v2/sessions/999/current", {}, 404, "contract_id", 999),
        ("/v2/sessions/999/2025-07-03", {}, 404, "contract_id", 999),
        (f"/v2/sessions/{AAPL}/2025-07-04", {}, 404, "date", "2025-07-04"),
        (f"/v2/sessions/{AAPL}/2025-07-05", {}, 404, "date", "2025-07-05"),
        (f"/v2/sessions/{ES}/2025-12-25", {}, 404, "date", "2025-12-25"),
        (f"/v2/sessions/{AAPL}/2025-02-30", {}, 422, "date", "2025-02-30"),
        (f"/v2/sessions/{AAPL}/July-3", {}, 422, "date", "July-3"),
        (f"/v2/sessions/{AAPL}/currentx", {}, 422, "date", "currentx"),
        (f"/v2/sessions/{AAPL}/1985-01-02", {}, 422, "date", "1985-01-02"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"session": "lunch"}, 422, "session", "lunch"),
        (f"/v2/sessions/{AAPL}/current", {"session": "Regular"}, 422, "session", "Regular"),
        (f"/v2/sessions/{ES}/current", {"session": "overnight"}, 422, "session", "overnight"),
        (f"/v2/sessions/{ES}/2025-07-08", {"session": "pre_market"}, 422, "session", "pre_market"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"include": "ticks", "limit": 0}, 422, "limit", 0),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"include": "ticks", "limit": 1_000_001}, 422, "limit", 1_000_001),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"limit": "ten"}, 422, "limit", "ten"),
        (f"/v2/sessions/{AAPL}/previous", {"include": "bars"}, 422, "include", "bars"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"bars": "ohlc,volume"}, 422, "bars", "ohlc,volume"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"format": "csv"}, 422, "format", "csv"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"bars": "ohlc", "format": "xlsx"}, 422, "format", "xlsx"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"bars": "ohlc", "resolution": "tick"}, 422, "resolution", "tick"),
        (f"/v2/sessions/{AAPL}/2025-07-03", {"tick_types": "trades"}, 422, "tick_types", "trades"),
        ("/v2/sessions/AAPL/current", {}, 422, "contract_id", "AAPL"),
        ("/v2/sessions/569672385446665781248/previous", {}, 422, "contract_id", "569672385446665781248"),
        ("/v2/sessions/0/2025-07-03", {}, 422, "contract_id", "0"),
    ],
)
def test_bad_input(
    client: httpx.Client, path: str, params: dict[str, Any], status: int, field: str, value: Any
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    expected = (
        {"contract_id": "CONTRACT_NOT_FOUND", "date": "NOT_FOUND"}.get(field) if status == 404 else "INVALID_INPUT"
    )
    assert error["code"] == expected
    assert error["details"]["field"] == field and str(error["details"]["value"]) == str(value)
    assert str(value) in error["message"]
