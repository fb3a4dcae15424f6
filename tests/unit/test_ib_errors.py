"""The IB error-code table: each code the IB source must handle maps to its action."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from ib_stream.sources.ib_errors import RULES, Action, ErrorRule, Severity, classify, format_error

EXPECTED = {
    1100: Action.MARK_GAP,
    1101: Action.RESUBSCRIBE,
    1102: Action.RESUBSCRIBE,
    2110: Action.MARK_GAP,
    2103: Action.FARM_DOWN,
    2105: Action.FARM_DOWN,
    2157: Action.FARM_DOWN,
    2104: Action.FARM_OK,
    2106: Action.FARM_OK,
    2158: Action.FARM_OK,
    10189: Action.SUBSCRIPTION_LOST,
    10167: Action.DELAYED_DATA,
    354: Action.SUBSCRIPTION_REFUSED,
    10190: Action.SUBSCRIPTION_REFUSED,
    200: Action.CONTRACT_UNKNOWN,
    162: Action.HISTORICAL_ERROR,
    165: Action.LOG,
    366: Action.LOG,
    317: Action.DEPTH_RESET,
    502: Action.DISCONNECTED,
    504: Action.DISCONNECTED,
    1300: Action.DISCONNECTED,
}


@pytest.mark.parametrize(("code", "action"), sorted(EXPECTED.items()))
def test_each_handled_code_maps_to_its_action(code: int, action: Action) -> None:
    rule = classify(code, "some text from TWS")
    assert rule.action is action
    assert rule is RULES[code] and rule.description


@pytest.mark.parametrize(
    "message",
    [
        "Historical Market Data Service error message:Historical data request pacing violation",
        "Historical Market Data Service error message:PACING VIOLATION",
    ],
)
def test_162_with_pacing_text_is_pacing(message: str) -> None:
    assert classify(162, message).action is Action.PACING


def test_162_without_pacing_text_is_a_historical_error_or_an_empty_span() -> None:
    assert classify(162, "Historical Market Data Service error message:No market data permissions").action is (
        Action.HISTORICAL_ERROR
    )
    assert classify(
        162, "Historical Market Data Service error message:HMDS query returned no data: AAPL@SMART"
    ).action is (Action.HISTORICAL_NO_DATA)
    assert classify(354, "pacing").action is Action.SUBSCRIPTION_REFUSED  # pacing text matters only on 162


def test_unknown_codes_are_logged_warnings_in_ibs_warning_range_else_errors() -> None:
    assert 9999 not in RULES and 2150 not in RULES
    assert classify(9999, "?") == ErrorRule(Action.LOG, Severity.ERROR, "IB error not in the table")
    assert classify(2150, "?").action is Action.LOG and classify(2150, "?").severity is Severity.WARNING


def test_severities_map_to_logging_levels() -> None:
    assert classify(2104).severity.level == logging.INFO
    assert classify(10167).severity.level == logging.WARNING
    assert classify(1100).severity.level == logging.ERROR


def test_the_table_and_its_rules_are_immutable() -> None:
    with pytest.raises(TypeError):
        RULES[1100] = RULES[2104]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES[1100].action = Action.LOG  # type: ignore[misc]


def test_format_error_names_the_code_request_context_and_text() -> None:
    line = format_error(354, "Requested market data is not subscribed.", 21, "AAPL 265598 reqMktData")
    assert line.startswith("IB 354 [subscription_refused] on request 21 (AAPL 265598 reqMktData): Requested market")
    assert "no permission" in line
    assert "on connection:" in format_error(1100, "Connectivity between IB and TWS has been lost.")
