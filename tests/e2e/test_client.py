"""End to end: the Python client against a real service — DataFrames equal the library's, errors map back."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from ib_stream.client import AsyncClient, Client, ClientError, error_classes, error_from_response
from ib_stream.errors import (
    CorruptFileError,
    IbStreamError,
    NotFoundError,
    QueryError,
    StorageError,
    TickValidationError,
    ValidationError,
)
from tests.conftest import T0, T0_NS, quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, free_port, start_server
from tests.e2e.conftest import test_settings as service_settings

MS = 1_000_000
START, END = "2025-01-10T14:00:00Z", "2025-01-10T16:00:00Z"
OPEN_NS = T0_NS + 30 * 60 * 1_000_000_000  # 14:30 UTC = 09:30 New York, the regular open


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live, stop = start_server(service_settings(tmp_path_factory.mktemp("client") / "storage"))
    live.publish(AAPL, "last", [trade(T0_NS + i * 100 * MS, i, side=(1, None)[i % 2]) for i in range(400)])
    live.publish(AAPL, "last", [trade(OPEN_NS + i * 100 * MS, i) for i in range(100)])
    live.publish(AAPL, "bid_ask", [quote(T0_NS + i * 100 * MS + 1, i) for i in range(400)])
    yield live
    stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, timeout=30) as c:
        yield c


def library(server: LiveServer, *args: Any) -> pd.DataFrame:
    frame: pd.DataFrame = server.run(server.state.query.query_range(AAPL, *args))
    return frame


@pytest.mark.parametrize(
    ("tick_types", "resolution"), [("last", None), (["bid_ask", "last"], None), ("last", "1m"), ("BidAsk", "5m")]
)
def test_query_range_equals_the_library(server: LiveServer, client: Client, tick_types: Any, resolution: Any) -> None:
    frame = client.query_range(AAPL, tick_types, START, END, resolution)
    pd.testing.assert_frame_equal(frame, library(server, tick_types, START, END, resolution))
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame.attrs == {"total_count": len(frame), "truncated": False}


async def test_async_client_mirrors_the_sync_one(server: LiveServer, client: Client) -> None:
    async with AsyncClient(server.url, timeout=30) as aclient:
        frame = await aclient.query_range(AAPL, ["bid_ask", "last"], START, END)
        pd.testing.assert_frame_equal(frame, client.query_range(AAPL, ["bid_ask", "last"], START, END))
        assert await aclient.contracts() == client.contracts()
        assert (await aclient.coverage(AAPL, "last"))["streams"] == client.coverage(AAPL, "last")["streams"]
        assert (await aclient.health())["status"] == "ok"
        with pytest.raises(NotFoundError):
            await aclient.query_range(999, "last", START, END)
        session = await aclient.session(AAPL, date(2025, 1, 10))
        assert session == client.session(AAPL, date(2025, 1, 10))


def test_times_are_converted_like_the_library(server: LiveServer, client: Client) -> None:
    aware = client.query_range(AAPL, "last", T0, datetime(2025, 1, 10, 14, 0, 10, tzinfo=UTC))
    assert len(aware) == 100
    naive_local = T0.astimezone().replace(tzinfo=None)  # naive = local time, as in StorageQuery
    pd.testing.assert_frame_equal(client.query_range(AAPL, "last", naive_local, T0_NS + 10 * 10**9), aware)
    nanos = client.query_range(AAPL, "last", T0_NS + 1, T0_NS + 10 * 10**9)  # exact to the nanosecond
    assert len(nanos) == 99


def test_limit_and_truncation(tmp_path: Path) -> None:
    live, stop = start_server(service_settings(tmp_path / "storage", api={"max_limit": 50}))
    try:
        live.publish(AAPL, "last", [trade(T0_NS + i * MS, i) for i in range(80)])
        with Client(live.url) as small:
            with pytest.warns(UserWarning, match="first 50 of 80 rows"):
                frame = small.query_range(AAPL, "last", START, END)
            assert len(frame) == 50 and frame.attrs == {"total_count": 80, "truncated": True}
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                asked = small.query_range(AAPL, "last", START, END, limit=10)
            assert asked["seq"].tolist() == list(range(1, 11)) and asked.attrs["truncated"] is True
            with pytest.raises(ValidationError) as raised:
                small.query_range(AAPL, "last", START, END, limit=51)
            assert raised.value.field == "limit" and raised.value.http_status == 422
    finally:
        stop()


def test_errors_come_back_as_the_package_exceptions(client: Client) -> None:
    with pytest.raises(NotFoundError) as not_found:
        client.query_range(12345, "last", START, END)
    assert not_found.value.details == {"field": "contract_id", "value": 12345, "known": [AAPL, ES]}
    assert "12345" in not_found.value.message and not_found.value.http_status == 404

    with pytest.raises(ValidationError) as bad_resolution:
        client.query_range(AAPL, "last", START, END, resolution="2m")
    assert (bad_resolution.value.field, bad_resolution.value.value, bad_resolution.value.code) == (
        "resolution",
        "2m",
        "INVALID_INPUT",
    )
    with pytest.raises(QueryError) as backwards:
        client.query_range(AAPL, "last", END, START)
    assert type(backwards.value) is QueryError and backwards.value.details["field"] == "end_time"
    with pytest.raises(QueryError, match="31 days"):
        client.query_range(AAPL, "last", "2024-01-01T00:00:00Z", END)
    with pytest.raises(ValidationError, match="tick_types trades is not a tick type"):
        client.query_range(AAPL, "trades", START, END)  # caught before any request, like StorageQuery
    with pytest.raises(NotFoundError):
        client.session(AAPL, date(2025, 1, 11))  # a Saturday: no session


def test_error_codes_map_to_their_classes() -> None:
    classes = error_classes()
    assert classes["INVALID_INPUT"] is ValidationError and classes["INVALID_TICK"] is TickValidationError
    assert classes["NOT_FOUND"] is NotFoundError and classes["STORAGE_ERROR"] is StorageError
    assert classes["CORRUPT_FILE"] is CorruptFileError and classes["IB_STREAM_ERROR"] is IbStreamError


def test_unknown_codes_keep_their_code_and_unreachable_services_raise(live_server: LiveServer) -> None:
    response = httpx.post(f"{live_server.url}/v2/ticks", json={"contract_id": AAPL, "tick_type": "last", "ticks": []})
    disabled = error_from_response(response)
    assert isinstance(disabled, IbStreamError) and disabled.code == "INGEST_DISABLED"
    assert disabled.http_status == 403 and "api.token" in disabled.message
    # A code this version has no class for stays an IbStreamError that keeps the code, message and details.
    body = {"error": {"code": "SOMETHING_NEW", "message": "news", "details": {"x": 1}}}
    unknown = error_from_response(httpx.Response(418, json=body, request=response.request))
    assert type(unknown) is IbStreamError
    assert (unknown.code, unknown.message, unknown.details, unknown.http_status) == (
        "SOMETHING_NEW",
        "news",
        {"x": 1},
        418,
    )
    not_json = error_from_response(httpx.Response(502, text="<html>bad gateway</html>", request=response.request))
    assert isinstance(not_json, ClientError) and not_json.details == {"status": 502}
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as nowhere, pytest.raises(ClientError, match="reach"):
        nowhere.health()


def test_sessions_contracts_coverage_and_health(server: LiveServer, client: Client) -> None:
    session = client.session(AAPL, date(2025, 1, 10), "regular")
    assert session["start"].startswith("2025-01-10T14:30:00") and session["end"].startswith("2025-01-10T21:00:00")
    ticks = client.session_ticks(AAPL, "last", date(2025, 1, 10))
    pd.testing.assert_frame_equal(ticks, library(server, "last", session["start"], session["data_end"]))
    assert len(ticks) == 100 and ticks["timestamp"].min().value == OPEN_NS
    bars = client.session_ticks(AAPL, "last", "2025-01-10", resolution="1h")
    assert len(bars) == 7 and bars["trade_count"].sum() == 100

    contracts = {c["con_id"]: c for c in client.contracts()}
    assert contracts[AAPL]["symbol"] == "AAPL"
    assert {s["tick_type"]: s["tick_count"] for s in contracts[AAPL]["streams"]}["last"] == 500
    coverage = client.coverage(AAPL, ["last"], min_gap="5m")
    assert len(coverage["streams"][0]["intervals"]) == 2 and coverage["streams"][0]["gaps"][0]["reason"] == "no data"
    assert client.health()["status"] == "ok"
