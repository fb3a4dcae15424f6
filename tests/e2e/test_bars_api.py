"""End to end: `GET /v2/bars/{contract_id}` and `/summary` through a real server — every format equals the
library (`OrderFlow`), the bars add up to the published trades, session windows, and bad input gives 4xx.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import ib_stream.api.app as app_module
from ib_stream.analytics.request import BarsRequest
from ib_stream.api.routes import bars as bars_routes
from ib_stream.calendars import MarketSessions
from ib_stream.clock import NS_PER_SECOND
from ib_stream.orderflow.service import OrderFlow
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

N = 900  # trades and quotes, one every 200 ms for 3 minutes from 14:00 UTC (09:00 New York, pre-market)
MS = 1_000_000
START = "2025-01-10T14:00:00Z"
END = "2025-01-10T14:10:00Z"
START_NS, END_NS = T0_NS, T0_NS + 600 * NS_PER_SECOND
TRADES = [trade(T0_NS + i * 200 * MS, i, side=(1, -1, None)[i % 3]) for i in range(N)]  # what the service is sent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A service with the bars routes (registered here if app.py does not yet) and AAPL trades and quotes."""
    with pytest.MonkeyPatch.context() as patch:
        if bars_routes not in app_module.ROUTERS:
            patch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS, bars_routes))
        live, stop = start_server(service_settings(tmp_path_factory.mktemp("bars") / "storage"))
    live.publish(AAPL, "last", TRADES)
    live.publish(AAPL, "bid_ask", [quote(T0_NS + i * 200 * MS - 1, i) for i in range(N)])
    yield live
    stop()


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def library(server: LiveServer, **options: Any) -> pa.Table:
    contract = server.state.streaming.require_contract(AAPL)
    request = BarsRequest(AAPL, START_NS, END_NS, **options)
    return OrderFlow(server.store.engine, contract).bars(request).table


def get(http: httpx.Client, path: str = "", contract_id: int = AAPL, **params: Any) -> httpx.Response:
    return http.get(f"/v2/bars/{contract_id}{path}", params=params)


def plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def test_json_bars_equal_the_library_and_add_up_to_the_trades(server: LiveServer, http: httpx.Client) -> None:
    response = get(http, kinds="ohlc,cvd,obi", resolution="1m", start_time=START, end_time=END)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = library(server, resolution="1m").to_pandas()
    assert {k: body[k] for k in ("contract_id", "kinds", "resolution", "count", "obi_source", "anchor")} == {
        "contract_id": AAPL,
        "kinds": ["ohlc", "cvd", "obi"],
        "resolution": "1m",
        "count": 10,
        "obi_source": "quotes",
        "anchor": "session",
    }
    methods = body["side_methods"]
    assert methods["recorded"] == N - N // 3 and methods["recorded"] + methods["quote"] + methods["tick"] == N
    rows = body["data"]
    assert [r["ts"] for r in rows] == expected["timestamp"].astype("int64").tolist()
    assert list(rows[0]) == ["timestamp", "ts", *expected.columns[1:]]
    for column in expected.columns[1:]:
        assert [r[column] for r in rows] == [plain(v) for v in expected[column]], column
    # Independently of the service: volume and recorded-side volume per minute from the published trades.
    trades = pd.DataFrame(TRADES)
    minute = (trades["ts"] - START_NS) // (60 * NS_PER_SECOND)
    volume = trades.groupby(minute)["size"].sum().reindex(range(10), fill_value=0.0)
    assert [r["volume"] for r in rows] == volume.tolist() and [r["empty"] for r in rows] == [False] * 3 + [True] * 7
    recorded_buys = trades[trades["side"] == 1].groupby(minute)["size"].sum()
    assert all(r["buy_volume"] >= recorded_buys.get(i, 0.0) for i, r in enumerate(rows))
    assert [r["delta"] for r in rows] == [r["buy_volume"] - r["sell_volume"] for r in rows]


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "csv"])
def test_binary_and_csv_formats_equal_the_library(server: LiveServer, http: httpx.Client, fmt: str) -> None:
    expected = library(server, resolution="30s", kinds=("ohlc", "cvd"))
    response = get(http, kinds="cvd,ohlc", resolution="30s", start_time=START, end_time=END, format=fmt)
    assert response.status_code == 200 and response.headers["x-total-count"] == "20"
    if fmt == "arrow":
        got = pa.ipc.open_stream(response.content).read_all()
    elif fmt == "parquet":
        got = pq.read_table(io.BytesIO(response.content))
    else:
        options = pa_csv.ConvertOptions(column_types=expected.schema)
        got = pa_csv.read_csv(io.BytesIO(response.content), convert_options=options)
    assert got.schema.remove_metadata() == expected.schema
    pd.testing.assert_frame_equal(got.to_pandas(), expected.to_pandas(), check_exact=True)


def test_summary_equals_the_library(server: LiveServer, http: httpx.Client) -> None:
    response = get(http, "/summary", start_time=START, end_time=END, profile="true")
    assert response.status_code == 200, response.text
    body = response.json()
    contract = server.state.streaming.require_contract(AAPL)
    expected = OrderFlow(server.store.engine, contract).summary(
        BarsRequest(AAPL, START_NS, END_NS), profile_levels=True
    )
    assert body == expected
    trades = pd.DataFrame(TRADES)
    assert body["volume"] == trades["size"].sum() and body["trade_count"] == N
    assert body["vwap"] == pytest.approx((trades["price"] * trades["size"]).sum() / trades["size"].sum())
    assert sum(v for _, v in body["profile"]["levels"]) == trades["size"].sum()
    assert -1 <= body["obi"]["min"] <= body["obi"]["mean"] <= body["obi"]["max"] <= 1


def test_a_session_window_without_start_time(server: LiveServer, http: httpx.Client) -> None:
    session = MarketSessions("XNAS").on("2025-01-10", "extended")
    response = get(http, kinds="ohlc", resolution="1h", session="extended", date="2025-01-10")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["start_time"] == pd.Timestamp(session.start_ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
    assert body["count"] == 16  # 04:00-20:00 New York
    assert sum(r["trade_count"] for r in body["data"]) == N
    daily = get(http, kinds="ohlc", resolution="1d", session="extended", date="2025-01-10").json()
    assert [r["ts"] for r in daily["data"]] == [session.start_ns] and daily["data"][0]["trade_count"] == N


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"kinds": "ohlc,depth"}, 422, "kinds"),
        ({"resolution": "tick"}, 422, "resolution"),
        ({"resolution": "7m"}, 422, "resolution"),
        ({"levels": "0"}, 422, "levels"),
        ({"levels": "many"}, 422, "levels"),
        ({"start_time": "2025-01-10T14:00:00"}, 422, "start_time"),
        ({"end_time": "2025-01-10T13:00:00Z"}, 400, "end_time"),
        ({"session": "lunch"}, 422, "session"),
        ({"anchor": "week"}, 422, "anchor"),
        ({"trades": "bid_ask"}, 422, "trades"),
        ({"obi_source": "tape"}, 422, "obi_source"),
        ({"date": "2025-01-10"}, 422, "date"),
        ({"resolution": "1s", "end_time": "2060-01-01T00:00:00Z"}, 400, "resolution"),
    ],
)
def test_bad_input_is_a_clear_4xx(http: httpx.Client, params: dict[str, str], status: int, field: str) -> None:
    response = get(http, **{"start_time": START, "end_time": END, **params})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["details"].get("field") == field or field in error["message"], error


def test_unknown_contract_and_unavailable_session_types(http: httpx.Client) -> None:
    missing = get(http, contract_id=12345, start_time=START, end_time=END)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "CONTRACT_NOT_FOUND"
    assert get(http, "/summary", contract_id=12345, start_time=START).status_code == 404
    overnight = get(http, contract_id=ES, session="overnight", start_time=START, end_time=END)
    assert overnight.status_code == 422 and overnight.json()["error"]["details"]["field"] == "session"
    holiday = get(http, date="2025-01-01")
    assert holiday.status_code == 404 and "2025-01-01" in holiday.json()["error"]["message"]
