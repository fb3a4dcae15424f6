"""End to end: `GET /v2/footprint/{contract_id}` and `GET /v2/heatmap/{contract_id}` on a real server — the footprint
adds up to `/v2/bars` bar by bar, its long-form formats equal its JSON, the heatmap's column where the book stands
still equals `/v2/depth`, the snapshot is used mid-way, and hostile parameters give 4xx, never 500."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from ib_stream.store.layout import HOUR_NS
from ib_stream.store.snapshots import SnapshotWriter
from ib_stream.times import iso_ns
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings
from tests.e2e.test_depth_api import ib_rows

MS = 1_000_000
N = 1800  # trades and quotes, one every 200 ms for 6 minutes from 14:00 UTC
START, END = "2025-01-10T14:00:00Z", "2025-01-10T14:10:00Z"
DEPTH_START = T0_NS - 2 * HOUR_NS  # three hours of depth from 12:00 UTC


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, list[dict[str, Any]]]]:
    live, stop = start_server(service_settings(tmp_path_factory.mktemp("dashboard") / "storage"))
    live.publish(AAPL, "bid_ask", [quote(T0_NS + i * 200 * MS - 1, i) for i in range(N)])
    live.publish(AAPL, "last", [trade(T0_NS + i * 200 * MS, i, side=(1, None, None)[i % 3]) for i in range(N)])
    depth = ib_rows(DEPTH_START, 6000)
    for i in range(0, len(depth), 500):
        live.publish(AAPL, "depth", depth[i : i + 500])
    assert SnapshotWriter.for_engine(live.store.engine).update().written >= 2
    yield live, depth
    stop()


@pytest.fixture(scope="module")
def http(server: tuple[LiveServer, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, timeout=60) as client:
        yield client


def test_the_footprint_adds_up_to_the_bars(http: httpx.Client) -> None:
    response = http.get(f"/v2/footprint/{AAPL}", params={"start_time": START, "end_time": END})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("contract_id", "resolution", "price_step", "imbalance_ratio")} == {
        "contract_id": AAPL, "resolution": "1m", "price_step": 0.01, "imbalance_ratio": 3.0,
    }  # fmt: skip
    assert body["start_time"].startswith("2025-01-10T14:00:00") and body["end_time"].startswith("2025-01-10T14:10:00")
    bars = http.get(f"/v2/bars/{AAPL}", params={"start_time": START, "end_time": END, "kinds": "ohlc,cvd"}).json()
    traded = [b for b in bars["data"] if not b["empty"]]
    assert body["count"] == len(body["data"]) == len(traded) == 6  # only bars with trades
    for bar, want in zip(body["data"], traded, strict=True):
        assert (bar["timestamp"], bar["ts"]) == (want["timestamp"], want["ts"])
        for name in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "delta", "trade_count"):
            assert bar[name] == pytest.approx(want[name]), name
        levels = bar["levels"]
        assert sum(lv["buy"] for lv in levels) == pytest.approx(want["buy_volume"])
        assert sum(lv["sell"] for lv in levels) == pytest.approx(want["sell_volume"])
        assert [lv["price"] for lv in levels] == sorted(lv["price"] for lv in levels)
        assert bar["poc"] in [lv["price"] for lv in levels]
        assert set(levels[0]) == {
            "price",
            "buy",
            "sell",
            "unknown",
            "delta",
            "trades",
            "buy_imbalance",
            "sell_imbalance",
        }


def test_the_long_form_formats_hold_one_row_per_bar_and_level(http: httpx.Client) -> None:
    params = {"start_time": START, "end_time": END, "price_step": 0.02, "imbalance_ratio": 2}
    body = http.get(f"/v2/footprint/{AAPL}", params=params).json()
    cells = [(bar["ts"], lv["price"], lv["buy"], lv["sell"]) for bar in body["data"] for lv in bar["levels"]]
    response = http.get(f"/v2/footprint/{AAPL}", params={**params, "format": "parquet"})
    assert response.status_code == 200 and response.headers["X-Total-Count"] == str(body["count"])
    table = pq.read_table(io.BytesIO(response.content)).to_pandas()
    rows = list(zip(table["timestamp"].astype("int64"), table["price"], table["buy"], table["sell"], strict=True))
    assert rows == cells
    assert {"bar_delta", "poc", "buy_imbalance", "sell_imbalance"} <= set(table.columns)
    csv = http.get(f"/v2/footprint/{AAPL}", params={**params, "format": "csv"})
    assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == len(cells) + 1


def test_the_heatmap_column_equals_the_book(
    server: tuple[LiveServer, list[dict[str, Any]]], http: httpx.Client
) -> None:
    _, depth = server
    # From 13:10 UTC, 40 minutes in 4000 columns of 0.6 s (a column of a second or more is whole seconds).
    start, end = DEPTH_START + HOUR_NS + 600 * 10**9, DEPTH_START + HOUR_NS + 3000 * 10**9
    params = {"start_time": iso_ns(start), "end_time": iso_ns(end), "columns": 4000, "rows": 1000}
    response = http.get(f"/v2/heatmap/{AAPL}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["snapshot_used"] == iso_ns(DEPTH_START + HOUR_NS)  # the 13:00 snapshot, not a replay from 12:00
    assert body["columns"] == len(body["times"]) <= 4000 and body["rows"] == len(body["prices"]) <= 1000
    assert len(body["bids"]) == len(body["asks"]) == body["rows"] and len(body["bids"][0]) == body["columns"]
    assert body["prices"] == sorted(body["prices"]) and body["max_size"] > 0
    changes = sorted({t["ts"] for t in depth})
    checked = 0
    for col, at in enumerate(body["times"][:400]):
        col_start = start + col * body["column_ns"]
        col_end = col_start + body["column_ns"]
        if any(col_start < t < col_end for t in changes) or col_start in changes:
            continue  # the book changes inside the column: a mean of several books
        book = http.get(f"/v2/depth/{AAPL}", params={"at": at, "levels": 1000}).json()
        for name in ("bids", "asks"):
            want: dict[float, float] = {}
            for price, size in book[name]:
                want[price] = want.get(price, 0.0) + size
            shown = {p: row[col] for p, row in zip(body["prices"], body[name], strict=True) if row[col]}
            assert shown == pytest.approx(want), (at, name)
        checked += 1
    assert checked >= 20


def test_a_heatmap_without_depth_is_404(http: httpx.Client) -> None:
    response = http.get(
        f"/v2/heatmap/{AAPL}", params={"start_time": "2001-01-01T00:00:00Z", "end_time": "2001-01-02T00:00:00Z"}
    )
    assert response.status_code == 404 and response.json()["error"]["details"]["reason"] == "no_depth"
    assert http.get("/v2/heatmap/999999").json()["error"]["code"] == "CONTRACT_NOT_FOUND"
    assert http.get("/v2/footprint/999999").status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("footprint", {"price_step": 0}, "price_step"),
        ("footprint", {"price_step": -0.01}, "price_step"),
        ("footprint", {"price_step": "nan"}, "price_step"),
        ("footprint", {"price_step": "inf"}, "price_step"),
        ("footprint", {"price_step": 1e-300}, "price_step"),
        ("footprint", {"imbalance_ratio": 1}, "imbalance_ratio"),
        ("footprint", {"imbalance_ratio": "nan"}, "imbalance_ratio"),
        ("footprint", {"resolution": "tick"}, "resolution"),
        ("footprint", {"trades": "bid_ask"}, "trades"),
        ("footprint", {"start_time": "2025-01-10T14:00:00"}, "start_time"),
        ("footprint", {"resolution": "1s", "start_time": "2000-01-01T00:00:00Z"}, "resolution"),
        ("heatmap", {"columns": 0}, "columns"),
        ("heatmap", {"columns": 10**9}, "columns"),
        ("heatmap", {"rows": 1001}, "rows"),
        ("heatmap", {"price_low": "nan"}, "price_low"),
        ("heatmap", {"price_high": "-inf"}, "price_high"),
        ("heatmap", {"price_low": 231, "price_high": 229}, "price_high"),
        ("heatmap", {"price_low": -1e300, "price_high": 1e300}, "price_high"),
        ("heatmap", {"levels": 0}, "levels"),
        ("heatmap", {"start_time": "2025-01-01T00:00:00Z", "end_time": "2025-12-31T00:00:00Z"}, "start_time"),
    ],
)
def test_hostile_parameters_are_4xx_naming_the_field(
    http: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    window = {} if "start_time" in params else {"start_time": iso_ns(DEPTH_START + HOUR_NS), "end_time": END}
    response = http.get(f"/v2/{path}/{AAPL}", params={**window, **params})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["details"]["field"] == field, response.text
