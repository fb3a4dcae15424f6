"""Every request has a bounded cost, on a real uvicorn server: the token before the body, the body limited while
it streams in, error bodies that never echo the input, bars refused past api.max_bars before any read, work
stopped at api.query_timeout_seconds and as soon as the client goes away, tick queries that read only the
ticks they return (with an exact total from the catalog), and no 5xx from odd input."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ib_stream.budget import RequestCancelled, check
from ib_stream.store.query import QueryEngine
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, LiveServer, start_server, test_settings

TOKEN = "bounded-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
S = 10**9
HOUR = 3600 * S


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / S))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = test_settings(
        tmp_path_factory.mktemp("bounded") / "storage",
        api={"token": TOKEN, "max_body_mb": 1, "max_bars": 5000, "query_timeout_seconds": 1.5},
    )
    live, stop = start_server(settings)
    yield live
    stop()


def raw_post(server: LiveServer, headers: dict[str, str], body_chunks: Iterator[bytes]) -> tuple[int, dict[str, Any]]:
    """POST /v2/ticks over a plain socket, chunked, stopping to send as soon as an answer arrives."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /v2/ticks HTTP/1.1\r\nHost: x\r\n{head}Content-Type: application/json\r\n\r\n".encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    head_text, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_text.split()[1])
    if b"transfer-encoding: chunked" in head_text.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, orjson.loads(body.split(b"\r\n")[0] if body.startswith(b"{") is False else body)


def chunked(total_bytes: int, sent: list[int]) -> Iterator[bytes]:
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    while sent[0] < total_bytes:
        sent[0] += len(piece)
        yield frame


def test_a_write_without_the_token_is_refused_before_its_body_is_read(server: LiveServer) -> None:
    sent = [0]
    headers = {"Transfer-Encoding": "chunked"}
    status, body = raw_post(server, headers, chunked(200 * 1024 * 1024, sent))
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    assert sent[0] < 20 * 1024 * 1024, f"{sent[0]} bytes went out before the refusal"
    wrong = httpx.post(f"{server.url}/v2/ticks", content=b"{}", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["details"] == {"field": "Authorization"}


def test_a_body_past_the_limit_is_refused_while_it_streams_in(server: LiveServer) -> None:
    declared = httpx.post(
        f"{server.url}/v2/ticks", content=b"x" * (1024 * 1024 + 1), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert declared.status_code == 413
    error = declared.json()["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and error["details"]["setting"] == "api.max_body_mb"
    sent = [0]
    status, body = raw_post(server, {**AUTH, "Transfer-Encoding": "chunked"}, chunked(100 * 1024 * 1024, sent))
    assert status == 413 and "api.max_body_mb" in body["error"]["message"]
    assert sent[0] < 20 * 1024 * 1024
    at_limit = {"contract_id": AAPL, "tick_type": "last", "ticks": [trade(T0_NS + i, i) for i in range(3000)]}
    ok = httpx.post(f"{server.url}/v2/ticks", json=at_limit, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["count"] == 3000


def test_an_error_never_echoes_more_than_an_excerpt_of_the_input(server: LiveServer) -> None:
    huge = "9" * 600_000
    answer = httpx.post(
        f"{server.url}/v2/ticks", json={"contract_id": huge, "tick_type": "last", "ticks": [{}]}, headers=AUTH
    )
    assert answer.status_code == 422
    assert len(answer.content) < 4000 and "600000 characters" in answer.text
    long_type = httpx.get(f"{server.url}/v2/historical/{AAPL}", params={"tick_types": "z" * 5000, "start_time": "x"})
    assert long_type.status_code in (400, 422) and len(long_type.content) < 2000


@pytest.mark.parametrize(
    ("where", "on_error", "stored"),
    [("source", "skip", 0), ("key", "reject", 0), ("tick_field", "reject", 0), ("tick_field", "skip", 1)],
)
def test_a_lone_surrogate_in_a_batch_never_is_a_500(server: LiveServer, where: str, on_error: str, stored: int) -> None:
    """Not UTF-8 text: the batch is refused whole (422), or with on_error=skip, that tick is left out and named."""
    hour = T0_NS + (7 + len(where) + len(on_error)) * HOUR  # a quiet hour per case
    tick = trade(hour, 1)
    batch: dict[str, Any] = {"contract_id": AAPL, "tick_type": "last", "ticks": [tick], "on_error": on_error}
    if where == "source":
        batch["source"] = "bad\ud800"
    elif where == "tick_field":
        batch["ticks"] = [trade(hour + 1, 2), {**tick, "exchange": "X\udfff"}]
    else:
        batch["ticks"] = [{**tick, "\ud800": 1}]
    answer = httpx.post(
        f"{server.url}/v2/ticks",
        content=_json_with_surrogates(batch),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert answer.status_code == (200 if stored else 422), answer.text
    if stored:
        assert answer.json()["count"] == 1 and answer.json()["rejected"][0]["index"] == 1
    else:
        assert answer.json()["error"]["code"] in ("INVALID_INPUT", "INVALID_TICK")
    assert server.store.engine.count(_stream(), hour, hour + HOUR) == stored


def _json_with_surrogates(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()  # \ud800 stays an escape in the JSON text, as a hostile client sends it


def _stream() -> Any:
    from ib_stream.domain import StreamKey, TickType

    return StreamKey(AAPL, TickType.LAST)


def test_an_overflowing_contract_id_is_a_422(server: LiveServer) -> None:
    for path in ("/v2/alerts", f"/v2/historical/{2**63}", f"/v2/bars/{2**64}"):
        params = {"contract_id": str(2**63)} if path == "/v2/alerts" else {"start_time": "2024-01-01T00:00:00Z"}
        answer = httpx.get(f"{server.url}{path}", params=params)
        assert answer.status_code == 422, (path, answer.text)


def test_bars_past_max_bars_are_refused_before_any_read(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real = QueryEngine.read_stream
    monkeypatch.setattr(QueryEngine, "read_stream", lambda *a, **k: reads.append(1) or real(*a, **k))
    for path, params in (
        (f"/v2/bars/{AAPL}", {"resolution": "1s", "start_time": iso(T0_NS), "end_time": iso(T0_NS + 2 * HOUR)}),
        (f"/v2/historical/{AAPL}", {"tick_types": "last", "resolution": "1m", "start_time": "2000-01-01T00:00:00Z"}),
        (
            f"/v2/bars/{AAPL}",
            {"resolution": "1d", "start_time": "1990-01-01T00:00:00Z", "end_time": "2199-01-01T00:00:00Z"},
        ),
    ):
        answer = httpx.get(f"{server.url}{path}", params=params, timeout=10)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["details"]["field"] == "resolution" and error["details"]["max_bars"] == 5000
        assert "api.max_bars" in error["message"]
    assert reads == []
    within = {"resolution": "1s", "start_time": iso(T0_NS), "end_time": iso(T0_NS + 4000 * S)}
    assert httpx.get(f"{server.url}/v2/bars/{AAPL}", params=within, timeout=30).status_code == 200


def slow_read(record: dict[str, Any]) -> Any:
    """A read that takes a long time in small steps, checking its budget between them (as file reads do)."""

    def read(*args: Any, **kwargs: Any) -> Any:
        record["started"] = time.monotonic()
        try:
            for _ in range(600):
                check()
                time.sleep(0.01)
        except BaseException as e:
            record["stopped"] = time.monotonic()
            record["why"] = type(e).__name__
            raise
        record["finished"] = time.monotonic()
        raise AssertionError("the read ran to its end")

    return read


def test_work_past_the_deadline_stops_with_a_503_naming_the_setting(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    record: dict[str, Any] = {}
    monkeypatch.setattr(QueryEngine, "read_stream", slow_read(record))
    params = {"tick_types": "bid_ask", "start_time": iso(T0_NS - 50 * HOUR), "end_time": iso(T0_NS - 49 * HOUR)}
    answer = httpx.get(f"{server.url}/v2/historical/{AAPL}", params=params, timeout=30)
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "QUERY_TIMEOUT" and error["details"]["setting"] == "api.query_timeout_seconds"
    assert record["why"] == "QueryTimeoutError" and record["stopped"] - record["started"] < 3


def test_work_stops_when_the_client_goes_away(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    record: dict[str, Any] = {}
    monkeypatch.setattr(QueryEngine, "read_stream", slow_read(record))
    params = {"tick_types": "bid_ask", "start_time": iso(T0_NS - 48 * HOUR), "end_time": iso(T0_NS - 47 * HOUR)}
    left = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{server.url}/v2/historical/{AAPL}", params=params, timeout=0.3)
    left = time.monotonic()
    deadline = left + 5
    while "stopped" not in record and time.monotonic() < deadline:
        time.sleep(0.01)
    assert record.get("why") == RequestCancelled.__name__, record
    assert record["stopped"] - left < 0.5  # stopped at the next check, long before the 1.5 s deadline


def test_a_limited_tick_query_returns_the_first_ticks_and_counts_them_all_exactly(server: LiveServer) -> None:
    base = T0_NS + 30 * HOUR
    quotes = [quote(base + i * 2 * S, i) for i in range(5 * 1800)]  # five hours, one quote every 2 s
    for i in range(0, len(quotes), 1000):
        server.publish(AAPL, "bid_ask", quotes[i : i + 1000])
    params = {"tick_types": "bid_ask", "start_time": iso(base), "end_time": iso(base + 5 * HOUR), "limit": 10}
    answer = httpx.get(f"{server.url}/v2/historical/{AAPL}", params=params, timeout=30)
    body = answer.json()
    assert answer.status_code == 200 and body["count"] == 10 and body["truncated"] is True
    assert body["total_count"] == 5 * 1800 == int(answer.headers["X-Total-Count"])
    assert [row["bid_price"] for row in body["data"]] == [q["bid_price"] for q in quotes[:10]]
    everything = httpx.get(f"{server.url}/v2/historical/{AAPL}", params={**params, "limit": 20_000}, timeout=30).json()
    assert everything["count"] == everything["total_count"] == 9000 and everything["truncated"] is False


def test_the_guard_leaves_reads_and_streams_alone(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.head(f"{server.url}/health").status_code in (200, 405)
    done = threading.Event()

    def stream() -> None:
        with httpx.stream("GET", f"{server.url}/v2/stream/{AAPL}/last", params={"limit": 1}, timeout=10) as r:
            for _ in r.iter_lines():
                break
        done.set()

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    server.publish(AAPL, "last", [trade(T0_NS + 90 * HOUR, 1)])
    t.join(10)
    assert done.is_set()


def test_limits_are_documented() -> None:
    text = (Path(__file__).parents[2] / "docs" / "reference" / "configuration.md").read_text()
    for setting in ("max_bars", "query_timeout_seconds", "max_body_mb", "max_range_days", "max_limit"):
        assert f"`{setting}`" in text


def test_stopping_the_service_stops_running_queries_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live, stop = start_server(test_settings(tmp_path / "storage", api={"query_timeout_seconds": 600}))
    record: dict[str, Any] = {}
    monkeypatch.setattr(QueryEngine, "read_stream", slow_read(record))
    answers: list[httpx.Response | Exception] = []

    def query() -> None:
        params = {"tick_types": "bid_ask", "start_time": iso(T0_NS), "end_time": iso(T0_NS + HOUR)}
        try:
            answers.append(httpx.get(f"{live.url}/v2/historical/{AAPL}", params=params, timeout=30))
        except httpx.HTTPError as e:
            answers.append(e)

    asker = threading.Thread(target=query)
    asker.start()
    while "started" not in record:
        time.sleep(0.01)
    began = time.monotonic()
    stop()  # what SIGTERM does: uvicorn shuts down (its graceful wait is 10 s by default)
    stopped = time.monotonic() - began
    asker.join(10)
    assert record.get("why") == "ServiceStopping", record
    assert record["stopped"] - began < 1 and stopped < 5
    (answer,) = answers
    assert isinstance(answer, httpx.Response) and answer.status_code == 503
    assert answer.json()["error"]["code"] == "SERVICE_STOPPING"
