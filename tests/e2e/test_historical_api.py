"""End to end: `GET /v2/historical` in every format equals the library query; limits, bars, bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

N = 600  # ticks per stream
START = "2025-01-10T14:00:00Z"
END = "2025-01-10T14:10:00Z"
MS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One service with N trades (some with a side, odd strings) and N quotes of AAPL in 14:00..14:01 UTC."""
    live, stop = start_server(service_settings(tmp_path_factory.mktemp("historical") / "storage"))
    trades = [
        trade(T0_NS + i * 100 * MS, i, side=(1, -1, None)[i % 3], conditions=("", "I", 'a,"b"\n')[i % 3])
        for i in range(N)
    ]
    live.publish(AAPL, "last", trades)
    live.publish(AAPL, "bid_ask", [quote(T0_NS + i * 100 * MS + 7, i) for i in range(N)])
    yield live
    stop()


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def library(server: LiveServer, tick_types: list[str], start: str, end: str, resolution: str = "tick") -> pd.DataFrame:
    frame: pd.DataFrame = server.run(server.state.query.query_range(AAPL, tick_types, start, end, resolution))
    return frame


def get(http: httpx.Client, **params: Any) -> httpx.Response:
    return http.get(f"/v2/historical/{params.pop('contract_id', AAPL)}", params=params)


@pytest.mark.parametrize("tick_types", ["last", "bid_ask,last"])
def test_arrow_and_parquet_equal_the_library_query(server: LiveServer, http: httpx.Client, tick_types: str) -> None:
    expected = library(server, tick_types.split(","), START, END)
    assert len(expected) == N * len(tick_types.split(","))
    arrow = get(http, tick_types=tick_types, start_time=START, end_time=END, format="arrow")
    assert arrow.status_code == 200
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert arrow.headers["x-total-count"] == str(len(expected)) and arrow.headers["x-truncated"] == "false"
    pd.testing.assert_frame_equal(pa.ipc.open_stream(arrow.content).read_all().to_pandas(), expected)

    parquet = get(http, tick_types=tick_types, start_time=START, end_time=END, format="parquet")
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert "attachment" in parquet.headers["content-disposition"]
    pd.testing.assert_frame_equal(pq.read_table(io.BytesIO(parquet.content)).to_pandas(), expected)


@pytest.mark.parametrize("tick_types", ["last", "bid_ask,last"])
def test_csv_parses_back_exactly(server: LiveServer, http: httpx.Client, tick_types: str) -> None:
    expected = pa.Table.from_pandas(library(server, tick_types.split(","), START, END), preserve_index=False)
    expected = expected.replace_schema_metadata(None)
    response = get(http, tick_types=tick_types, start_time=START, end_time=END, format="csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    header = response.text.split("\n", 1)[0]
    assert header.replace('"', "").split(",") == expected.column_names
    # Quoted empty strings stay strings; unquoted empty cells are nulls; times are ISO-8601 ns with Z.
    options = pa_csv.ConvertOptions(
        column_types=expected.schema, strings_can_be_null=True, quoted_strings_can_be_null=False
    )
    parsed = pa_csv.read_csv(io.BytesIO(response.content), convert_options=options)
    assert parsed.equals(expected), parsed.to_pandas().compare(expected.to_pandas())


def test_json_rows_carry_every_value(server: LiveServer, http: httpx.Client) -> None:
    expected = library(server, ["bid_ask", "last"], START, END)
    body = get(http, tick_types="bid_ask,last", start_time=START, end_time=END).json()
    assert {k: body[k] for k in ("contract_id", "tick_types", "resolution", "count", "total_count", "truncated")} == {
        "contract_id": AAPL,
        "tick_types": ["bid_ask", "last"],
        "resolution": "tick",
        "count": len(expected),
        "total_count": len(expected),
        "truncated": False,
    }
    assert body["start_time"] == "2025-01-10T14:00:00.000000000Z"
    rows = body["data"]
    assert [r["ts"] for r in rows] == expected["timestamp"].astype("int64").tolist()
    assert [r["timestamp"] for r in rows] == [iso(t) for t in expected["timestamp"]]
    assert [r["recv_ts"] for r in rows] == [iso(t) for t in expected["recv_ts"]]
    for column in ("tick_type", "seq", "source", "bid_price", "ask_size", "price", "size", "conditions", "side"):
        assert [r[column] for r in rows] == [plain(v) for v in expected[column]], column
    assert list(rows[0]) == ["timestamp", "ts", *[c for c in expected.columns if c != "timestamp"]]


def test_limit_truncates_and_says_so(server: LiveServer, http: httpx.Client) -> None:
    expected = library(server, ["last"], START, END)
    body = get(http, tick_types="last", start_time=START, end_time=END, limit=25).json()
    assert (body["count"], body["total_count"], body["truncated"], body["limit"]) == (25, N, True, 25)
    assert [r["seq"] for r in body["data"]] == expected["seq"].head(25).tolist()

    arrow = get(http, tick_types="last", start_time=START, end_time=END, limit=7, format="arrow")
    assert (arrow.headers["x-truncated"], arrow.headers["x-total-count"], arrow.headers["x-result-count"]) == (
        "true",
        str(N),
        "7",
    )
    pd.testing.assert_frame_equal(pa.ipc.open_stream(arrow.content).read_all().to_pandas(), expected.head(7))

    whole = get(http, tick_types="last", start_time=START, end_time=END, limit=N, format="csv")
    assert whole.headers["x-truncated"] == "false" and len(pd.read_csv(io.StringIO(whole.text))) == N


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_bars_equal_the_library_bars(server: LiveServer, http: httpx.Client, fmt: str) -> None:
    expected = library(server, ["last"], START, END, "5s")
    assert len(expected) == 120 and expected["empty"].sum() == 108  # 12 bars hold the minute of trades
    response = get(http, tick_types="last", start_time=START, end_time=END, resolution="5s", format=fmt)
    assert response.status_code == 200
    if fmt == "arrow":
        pd.testing.assert_frame_equal(pa.ipc.open_stream(response.content).read_all().to_pandas(), expected)
        return
    body = response.json()
    assert body["resolution"] == "5s" and body["count"] == 120
    rows = body["data"]
    assert [r["ts"] for r in rows] == expected["timestamp"].astype("int64").tolist()
    for column in ("open", "high", "low", "close", "volume", "vwap", "trade_count", "empty"):
        assert [r[column] for r in rows] == [plain(v) for v in expected[column]], column


def test_empty_ranges_keep_the_columns(server: LiveServer, http: httpx.Client) -> None:
    quiet = {"start_time": "2025-01-09T00:00:00Z", "end_time": "2025-01-09T01:00:00Z", "tick_types": "last"}
    assert get(http, **quiet).json()["data"] == []
    table = pa.ipc.open_stream(get(http, **quiet, format="arrow").content).read_all()
    assert table.num_rows == 0 and table.column_names[:3] == ["timestamp", "seq", "recv_ts"]
    assert get(http, **quiet, format="csv").text.startswith('"timestamp","seq"')
    assert pq.read_table(io.BytesIO(get(http, **quiet, format="parquet").content)).num_rows == 0


def test_end_time_defaults_to_now_and_other_contracts_are_separate(server: LiveServer, http: httpx.Client) -> None:
    before = pd.Timestamp.now(tz="UTC")
    recent = get(http, tick_types="last", start_time=(before - pd.Timedelta(hours=1)).isoformat()).json()
    assert recent["count"] == 0
    assert before <= pd.Timestamp(recent["end_time"]) <= pd.Timestamp.now(tz="UTC")
    assert get(http, contract_id=ES, tick_types="last", start_time=START, end_time=END).json()["count"] == 0


def test_large_results_stream_in_record_batches(tmp_path: Any) -> None:
    live, stop = start_server(service_settings(tmp_path / "storage"))
    try:
        count = 150_000
        live.publish(AAPL, "mid_point", [{"ts": T0_NS + i * MS, "mid_point": 100.0 + i % 50} for i in range(count)])
        params = {"tick_types": "mid_point", "start_time": START, "end_time": END, "format": "arrow"}
        with (
            httpx.Client(base_url=live.url, timeout=30) as client,
            client.stream("GET", f"/v2/historical/{AAPL}", params=params) as response,
        ):
            assert response.headers["transfer-encoding"] == "chunked"
            chunks = list(response.iter_bytes())
        reader = pa.ipc.open_stream(b"".join(chunks))
        batches = list(reader)
        assert len(batches) >= 3 and sum(b.num_rows for b in batches) == count
    finally:
        stop()


BAD_INPUT = [
    ({"start_time": "2025-01-10T14:00:00"}, 422, "start_time"),  # naive
    ({"start_time": "yesterday"}, 422, "start_time"),
    ({"start_time": "3000-01-01T00:00:00Z"}, 422, "start_time"),
    ({"start_time": None}, 422, "start_time"),  # missing
    ({"end_time": "2025-01-10T13:00:00Z"}, 400, "end_time"),  # before start
    ({"end_time": "2025-01-10T14:00:00+00:00"}, 400, "end_time"),  # equal to start
    ({"tick_types": "trades"}, 422, "tick_types"),
    ({"tick_types": None}, 422, "tick_types"),
    ({"contract_id": 1}, 404, "contract_id"),
    ({"contract_id": "AAPL"}, 422, "contract_id"),
    ({"resolution": "2m"}, 422, "resolution"),
    ({"limit": 0}, 422, "limit"),
    ({"limit": 10**12}, 422, "limit"),
    ({"format": "xml"}, 422, "format"),
    ({"start_time": "2024-01-01T00:00:00Z", "end_time": "2025-01-01T00:00:00Z"}, 400, "end_time"),  # huge
    ({"tick_types": "depth", "resolution": "1m"}, 400, "resolution"),
    ({"start_time": "2000-01-01T00:00:00Z", "resolution": "1s"}, 400, "resolution"),  # too many bars
]


@pytest.mark.parametrize(("change", "status", "field"), BAD_INPUT, ids=[str(c) for c, _, _ in BAD_INPUT])
def test_bad_input_is_a_4xx_naming_the_field(
    http: httpx.Client, change: dict[str, Any], status: int, field: str
) -> None:
    params: dict[str, Any] = {"contract_id": AAPL, "tick_types": "last", "start_time": START, "end_time": END}
    params.update(change)
    response = get(http, **{k: v for k, v in params.items() if v is not None})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == field
    assert field in error["message"]
    value = change.get(field)
    if value is not None and field != "end_time":
        assert str(value) in error["message"]


def test_huge_range_message_names_the_range(http: httpx.Client) -> None:
    error = get(http, tick_types="last", start_time="2024-01-01T00:00:00Z", end_time="2025-01-01T00:00:00Z").json()
    message = error["error"]["message"]
    assert "2024-01-01T00:00:00" in message and "2025-01-01T00:00:00" in message and "366.0 days" in message
    assert error["error"]["details"]["max_range_days"] == 31
    # Bars may span longer ranges than ticks.
    assert get(http, tick_types="last", start_time="2024-01-01T00:00:00Z", end_time=END, resolution="1d").is_success


def test_pascal_case_tick_types_and_offsets_are_accepted(server: LiveServer, http: httpx.Client) -> None:
    body = get(http, tick_types="Last,BidAsk", start_time="2025-01-10T09:00:00-05:00", end_time=END).json()
    assert body["tick_types"] == ["last", "bid_ask"] and body["count"] == 2 * N
    assert body["start_time"] == "2025-01-10T14:00:00.000000000Z"


def iso(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.value % 1_000_000_000:09d}Z"


def plain(value: Any) -> Any:
    """A frame value as JSON gives it back (missing values are null)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value
