"""The v2 protocol's pure parts: envelope, tick-record → tick `data` mapping, errors, completion
(`ib_stream.live.messages`), stream ids, SSE framing and the /v3 message formats."""

from __future__ import annotations

import re
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ib_stream.api import protocol
from ib_stream.api.sse import frame
from ib_stream.clock import from_ns
from ib_stream.domain import MAX_TS_NS, MIN_TS_NS, Contract, StreamKey, TickType
from ib_stream.errors import (
    ContractNotFoundError,
    InvalidTickTypeError,
    NotFoundError,
    SlowConsumerError,
    ValidationError,
)
from ib_stream.live import messages
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from ib_stream.times import iso_us
from tests.conftest import T0_NS

AAPL = 265598
COMMON = {"contract_id", "tick_type", "type", "timestamp", "unix_time", "seq", "ts", "recv_ts"}


def record(seq: int = 7, ts: int = T0_NS + 123_456_789, **fields: object) -> dict[str, object]:
    return {"seq": seq, "ts": ts, "recv_ts": ts + 5_000, "source": "test", **fields}


def test_bid_ask_tick_data() -> None:
    rec = record(bid_price=100.0, bid_size=3.0, ask_price=100.02, ask_size=4.0, bid_past_low=False, ask_past_high=True)
    data = messages.tick_data(StreamKey(AAPL, TickType.BID_ASK), rec)
    assert data == {
        "contract_id": AAPL,
        "tick_type": "bid_ask",
        "type": "bid_ask",
        "timestamp": "2025-01-10T14:00:00.123456Z",
        "unix_time": T0_NS // 1_000_000_000,
        "seq": 7,
        "ts": T0_NS + 123_456_789,
        "recv_ts": T0_NS + 123_461_789,
        "bid_price": 100.0,
        "ask_price": 100.02,
        "bid_size": 3.0,
        "ask_size": 4.0,
        "bid_past_low": False,
        "ask_past_high": True,
    }


@pytest.mark.parametrize("tick_type", [TickType.LAST, TickType.ALL_LAST])
@pytest.mark.parametrize("side", [1, -1, None])
def test_trades_are_time_sales_with_side_only_when_known(tick_type: TickType, side: int | None) -> None:
    rec = record(price=230.5, size=10.0, exchange="NASDAQ", conditions="I", past_limit=False, unreported=True)
    data = messages.tick_data(StreamKey(AAPL, tick_type), {**rec, "side": side})
    assert data["type"] == "time_sales" and data["tick_type"] == tick_type.value
    expected = {"price": 230.5, "size": 10.0, "exchange": "NASDAQ", "conditions": "I"}
    assert {k: data[k] for k in expected} == expected and data["unreported"] is True
    assert data.get("side") == side and ("side" in data) == (side is not None)
    assert set(data) - COMMON == {*expected, "past_limit", "unreported"} | ({"side"} if side else set())


def test_midpoint_and_depth() -> None:
    mid = messages.tick_data(StreamKey(AAPL, TickType.MID_POINT), record(mid_point=100.015))
    assert mid["type"] == "midpoint" and mid["midpoint"] == 100.015 and set(mid) == COMMON | {"midpoint"}
    depth_fields = {"side": "ask", "position": 2, "operation": "update", "price": 100.03, "size": 5.0}
    depth = messages.tick_data(StreamKey(AAPL, TickType.DEPTH), record(**depth_fields, market_maker=""))
    assert depth["type"] == "depth" and {k: depth[k] for k in depth_fields} == depth_fields
    assert depth["market_maker"] == ""


def test_unix_time_is_whole_seconds_of_the_event_time() -> None:
    ts = 1_736_517_600_999_999_999  # 13:59:59.999999999 is still second ...599
    data = messages.tick_data(StreamKey(AAPL, TickType.MID_POINT), record(ts=ts, mid_point=1.0))
    assert data["unix_time"] == 1_736_517_600 and data["timestamp"] == "2025-01-10T14:00:00.999999Z"


@given(st.integers(min_value=MIN_TS_NS, max_value=MAX_TS_NS - 1))
def test_the_fast_iso_us_writes_what_datetime_writes(ns: int) -> None:
    assert iso_us(ns) == from_ns(ns).isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_envelope_and_messages() -> None:
    before = time.monotonic()
    msg = messages.tick_message("sid", StreamKey(AAPL, TickType.MID_POINT), record(mid_point=2.0), "2025-01-10T14:00Z")
    assert list(msg) == ["type", "stream_id", "timestamp", "data"] and msg["type"] == "tick"
    assert msg["timestamp"] == "2025-01-10T14:00Z" and msg["stream_id"] == "sid"
    info = messages.info_message("sid", "buffer_start", buffer_message_count=3)
    assert info["type"] == "info" and info["data"] == {"status": "buffer_start", "buffer_message_count": 3}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", info["timestamp"])
    done = messages.complete_message("sid", "limit_reached", 10, before)
    assert done["type"] == "complete" and set(done["data"]) == {"reason", "total_ticks", "duration_seconds"}
    assert done["data"]["reason"] == "limit_reached" and done["data"]["total_ticks"] == 10
    assert 0 <= done["data"]["duration_seconds"] < 5


def test_errors_carry_code_message_details_and_recoverable() -> None:
    slow = messages.error_from_exception("s", SlowConsumerError("too slow", details={"max_queue": 10}))
    assert slow["type"] == "error" and slow["data"] == {
        "code": "SLOW_CONSUMER",
        "message": "too slow",
        "details": {"max_queue": 10},
        "recoverable": True,
    }
    bad = messages.error_from_exception("s", ValidationError("limit", 0, "must be positive"))["data"]
    assert bad["code"] == "INVALID_INPUT" and bad["recoverable"] is False and bad["details"]["field"] == "limit"
    crash = messages.error_from_exception("s", KeyError("x"))["data"]
    assert crash == {"code": "INTERNAL_ERROR", "message": "internal server error", "details": {}, "recoverable": True}


def test_tick_type_parsing_accepts_aliases_and_names_bad_values() -> None:
    assert protocol.parse_stream_tick_types("BidAsk, last,AllLast,MidPoint,bid_ask") == (
        TickType.BID_ASK,
        TickType.LAST,
        TickType.ALL_LAST,
        TickType.MID_POINT,
    )
    assert protocol.parse_stream_tick_types(["Last", "depth"]) == (TickType.LAST, TickType.DEPTH)
    for bad, shown in [("last,Trades", "Trades"), (["x"], "x"), ("", ""), (None, ""), ([1], "[1]")]:
        with pytest.raises(InvalidTickTypeError) as caught:
            protocol.parse_stream_tick_types(bad, "tick_types")  # type: ignore[arg-type]
        assert caught.value.code == "INVALID_TICK_TYPE" and caught.value.http_status == 422
        assert caught.value.field == "tick_types" and shown in caught.value.message
    assert issubclass(InvalidTickTypeError, ValidationError)


def test_unknown_contract_is_contract_not_found(store: TickStore) -> None:
    streaming = StreamingApp(store, [Contract(AAPL, "AAPL")])
    assert streaming.require_contract(AAPL).symbol == "AAPL"
    with pytest.raises(ContractNotFoundError) as caught:
        streaming.require_contract(1)
    assert caught.value.code == "CONTRACT_NOT_FOUND" and caught.value.http_status == 404
    assert "contract_id 1" in caught.value.message and issubclass(ContractNotFoundError, NotFoundError)
    assert caught.value.details["known"] == [AAPL]


def test_stream_ids_are_unique_and_name_the_stream() -> None:
    ids = {protocol.new_stream_id(AAPL, "bid_ask") for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(rf"{AAPL}_bid_ask_\d{{13}}_\d{{4,}}", i) for i in ids)


def test_sse_frame_is_one_event_ending_with_a_blank_line() -> None:
    message = messages.info_message("s", "subscribed", note="two\nlines")
    raw = frame(message)
    assert raw.endswith(b"\n\n") and raw.count(b"\n") == 3
    event, data, blank, end = raw.split(b"\n")
    assert event == b"event: info" and blank == end == b""
    assert orjson.loads(data.removeprefix(b"data: ")) == message


def test_v3_messages_expanded_and_compact() -> None:
    quote_rec = record(
        bid_price=1.0, bid_size=2.0, ask_price=1.5, ask_size=3.0, bid_past_low=False, ask_past_high=False
    )
    expanded = protocol.v3_message(StreamKey(AAPL, TickType.BID_ASK), quote_rec, raw=False)
    assert expanded == {
        "contract_id": AAPL,
        "tick_type": "bid_ask",
        "ib_timestamp": (T0_NS + 123_456_789) // 1000,
        "ib_timestamp_iso": "2025-01-10T14:00:00.123456Z",
        "system_timestamp": (T0_NS + 123_461_789) // 1000,
        "system_timestamp_iso": "2025-01-10T14:00:00.123461Z",
        "request_id": 7,
        "bid_price": 1.0,
        "bid_size": 2.0,
        "ask_price": 1.5,
        "ask_size": 3.0,
    }
    trade_rec = record(price=9.0, size=1.0, exchange="X", conditions="", past_limit=False, unreported=False, side=1)
    compact = protocol.v3_message(StreamKey(AAPL, TickType.ALL_LAST), trade_rec, raw=True)
    ts, st = expanded["ib_timestamp"], expanded["system_timestamp"]
    assert compact == {"ts": ts, "st": st, "cid": AAPL, "tt": "all_last", "rid": 7, "p": 9.0, "s": 1.0}
    mid = protocol.v3_message(StreamKey(AAPL, TickType.MID_POINT), record(mid_point=4.25), raw=True)
    assert mid["mp"] == 4.25 and set(mid) == {"ts", "st", "cid", "tt", "rid", "mp"}


def test_protocol_description_covers_every_tick_type_and_code() -> None:
    described = protocol.protocol_description()
    assert described["version"] == protocol.PROTOCOL_VERSION
    assert set(described["tick_types"]) == {t.value for t in TickType}
    assert set(described["tick_data_fields"]) == {t.value for t in TickType}
    for cls in (ContractNotFoundError, InvalidTickTypeError, SlowConsumerError):
        assert cls.code in described["error_codes"]
