"""Domain types: tick-type names and the tick validator that guards the store's input."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ib_stream.domain import TickType, TickValidator, field_names
from ib_stream.errors import TickValidationError, ValidationError
from tests.conftest import T0_NS, quote, trade

RECV_NS = T0_NS + 5


def canonical(tick_type: TickType, raw: Any, source: str = "test") -> dict[str, Any]:
    return TickValidator(tick_type).canonical(raw, seq=7, recv_ts=RECV_NS, source=source)


def rejection(tick_type: TickType, raw: Any, index: int = 0) -> TickValidationError:
    with pytest.raises(TickValidationError) as caught:
        TickValidator(tick_type).canonical(raw, seq=1, recv_ts=RECV_NS, source="test", index=index)
    return caught.value


def depth(**over: Any) -> dict[str, Any]:
    tick = {"ts": T0_NS, "side": "bid", "position": 0, "operation": "insert", "price": 100.0, "size": 5.0}
    tick.update(over)
    return tick


# ---- TickType.parse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bid_ask", TickType.BID_ASK),
        ("last", TickType.LAST),
        ("all_last", TickType.ALL_LAST),
        ("mid_point", TickType.MID_POINT),
        ("depth", TickType.DEPTH),
        ("BidAsk", TickType.BID_ASK),
        ("Last", TickType.LAST),
        ("AllLast", TickType.ALL_LAST),
        ("MidPoint", TickType.MID_POINT),
    ],
)
def test_parse_accepts_snake_case_and_ib_pascal_case(name: str, expected: TickType) -> None:
    assert TickType.parse(name) is expected


@pytest.mark.parametrize("name", ["bidask", "BIDASK", "trades", "", "Bid_Ask"])
def test_parse_rejects_unknown_names_naming_the_value(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TickType.parse(name)
    assert caught.value.field == "tick_type"
    assert caught.value.value == name
    assert f"tick_type {name} " in caught.value.message


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValidationError):
        TickType.parse(3)  # type: ignore[arg-type]


def test_parse_list_keeps_order_and_drops_duplicates() -> None:
    assert TickType.parse_list("Last,bid_ask,last") == (TickType.LAST, TickType.BID_ASK)
    assert TickType.parse_list(["MidPoint"]) == (TickType.MID_POINT,)


def test_parse_list_names_the_bad_item() -> None:
    with pytest.raises(ValidationError) as caught:
        TickType.parse_list("last,bogus")
    assert caught.value.field == "tick_types"
    assert "bogus" in caught.value.message


# ---- TickValidator: accepted ticks ---------------------------------------------------------------


def test_quote_is_canonical_in_storage_order() -> None:
    record = canonical(TickType.BID_ASK, quote(T0_NS))
    assert list(record) == list(field_names(TickType.BID_ASK))
    assert record["seq"] == 7
    assert record["ts"] == T0_NS
    assert record["recv_ts"] == RECV_NS
    assert record["source"] == "test"


def test_optional_fields_take_their_defaults() -> None:
    assert canonical(TickType.BID_ASK, quote(T0_NS))["bid_past_low"] is False
    record = canonical(TickType.LAST, {"ts": T0_NS, "price": 1.5, "size": 2.0})
    assert record["exchange"] == ""
    assert record["conditions"] == ""
    assert record["past_limit"] is False
    assert record["unreported"] is False
    assert record["side"] is None
    assert canonical(TickType.DEPTH, depth())["market_maker"] == ""


def test_producer_may_give_source_and_recv_ts() -> None:
    record = canonical(TickType.LAST, trade(T0_NS, source="ib_tbt", recv_ts=T0_NS + 99))
    assert record["source"] == "ib_tbt"
    assert record["recv_ts"] == T0_NS + 99


def test_integers_are_accepted_as_prices_and_become_floats() -> None:
    record = canonical(TickType.LAST, trade(T0_NS, price=101, size=3))
    assert record["price"] == 101.0
    assert type(record["price"]) is float
    assert type(record["size"]) is float


@pytest.mark.parametrize("side", [1, -1, None])
def test_trade_side_accepts_buy_sell_and_unknown(side: int | None) -> None:
    assert canonical(TickType.LAST, trade(T0_NS, side=side))["side"] == side


@pytest.mark.parametrize(("name", "value"), [("side", "ask"), ("operation", "delete"), ("position", 4)])
def test_depth_fields(name: str, value: Any) -> None:
    assert canonical(TickType.DEPTH, depth(**{name: value}))[name] == value


# ---- TickValidator: rejected ticks ---------------------------------------------------------------


@pytest.mark.parametrize("missing", ["bid_price", "bid_size", "ask_price", "ask_size"])
def test_missing_required_field_is_rejected(missing: str) -> None:
    raw = quote(T0_NS)
    del raw[missing]
    error = rejection(TickType.BID_ASK, raw)
    assert error.field == missing
    assert "is required" in error.message


def test_missing_ts_is_rejected() -> None:
    raw = quote(T0_NS)
    del raw["ts"]
    assert rejection(TickType.BID_ASK, raw).field == "ts"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("bid_price", "100.0", "must be a number"),
        ("bid_price", [100.0], "must be a number"),
        ("ask_size", math.nan, "must be finite"),
        ("ask_price", math.inf, "must be finite"),
        ("bid_price", -math.inf, "must be finite"),
        ("bid_price", -0.01, "must not be negative"),
        ("ask_size", -1, "must not be negative"),
        ("bid_past_low", 1, "must be true or false"),
        ("bid_past_low", "false", "must be true or false"),
    ],
)
def test_bad_quote_values_are_rejected_naming_field_and_value(field: str, value: Any, reason: str) -> None:
    error = rejection(TickType.BID_ASK, quote(T0_NS, **{field: value}), index=3)
    assert error.field == field
    assert error.details["field"] == field
    assert error.details["index"] == 3
    assert error.details["tick_type"] == "bid_ask"
    assert reason in error.message
    assert error.message.startswith(f"{field} {value!r}" if not isinstance(value, str) else f"{field} {value}")


@pytest.mark.parametrize("field", ["price", "size"])
def test_bool_where_a_number_is_expected_is_rejected(field: str) -> None:
    error = rejection(TickType.LAST, trade(T0_NS, **{field: True}))
    assert error.field == field
    assert "True" in error.message


def test_bool_timestamp_is_rejected() -> None:
    assert rejection(TickType.LAST, trade(True)).field == "ts"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ts",
    [T0_NS // 1_000_000_000, T0_NS // 1_000_000, T0_NS // 1000, T0_NS * 1000],
    ids=["seconds", "milliseconds", "microseconds", "too-late"],
)
def test_timestamp_not_in_nanoseconds_is_rejected(ts: int) -> None:
    error = rejection(TickType.LAST, trade(ts))
    assert error.field == "ts"
    assert str(ts) in error.message


def test_float_timestamp_is_rejected() -> None:
    error = rejection(TickType.LAST, trade(float(T0_NS)))  # type: ignore[arg-type]
    assert error.field == "ts"
    assert "must be an integer" in error.message


def test_seq_supplied_by_the_producer_is_rejected() -> None:
    error = rejection(TickType.LAST, trade(T0_NS, seq=1))
    assert error.field == "seq"
    assert "assigned by the store" in error.message


def test_unknown_field_is_rejected_naming_it() -> None:
    error = rejection(TickType.LAST, trade(T0_NS, bid_price=1.0))
    assert error.field == "bid_price"
    assert "not a field" in error.message


def test_empty_source_is_rejected() -> None:
    assert rejection(TickType.LAST, trade(T0_NS, source="")).field == "source"


@pytest.mark.parametrize("side", [0, 2, "buy", 1.5, True])
def test_bad_trade_side_is_rejected(side: Any) -> None:
    assert rejection(TickType.LAST, trade(T0_NS, side=side)).field == "side"


@pytest.mark.parametrize(
    ("field", "value"),
    [("side", "buy"), ("operation", "upsert"), ("position", -1), ("position", 1.5), ("market_maker", 3)],
)
def test_bad_depth_values_are_rejected(field: str, value: Any) -> None:
    assert rejection(TickType.DEPTH, depth(**{field: value})).field == field


def test_non_mapping_tick_is_rejected() -> None:
    assert rejection(TickType.LAST, 42).field == "tick"


@pytest.mark.parametrize(
    ("tick_type", "raw"),
    [
        (TickType.LAST, trade(T0_NS, side=[1])),
        (TickType.DEPTH, depth(side=["bid"])),
        (TickType.DEPTH, depth(operation={"op": "insert"})),
    ],
    ids=["trade-side-list", "depth-side-list", "depth-operation-dict"],
)
def test_unhashable_enum_values_are_rejected_as_invalid_ticks(tick_type: TickType, raw: dict[str, Any]) -> None:
    assert rejection(tick_type, raw).field in ("side", "operation")


def test_depth_position_beyond_the_stored_int32_is_rejected() -> None:
    assert rejection(TickType.DEPTH, depth(position=2**40)).field == "position"


def test_recv_ts_beyond_int64_is_rejected() -> None:
    assert rejection(TickType.LAST, trade(T0_NS, recv_ts=2**63)).field == "recv_ts"
