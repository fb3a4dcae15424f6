"""IB error and message codes as one table: what the IB source does for each code, never scattered ifs.

`classify(code, message)` returns the immutable `ErrorRule(action, severity, description)` for
an `EWrapper.error(reqId, errorCode, errorString)` callback. The IB source dispatches on
`rule.action` and logs with `format_error`. Actions on a request (reqId >= 0) apply to that
request; the source knows its kind, so for example SUBSCRIPTION_REFUSED / SUBSCRIPTION_LOST on
a tick-by-tick request means "fall back to reqMktData", and on reqMktData "report it".

Codes and meanings follow https://interactivebrokers.github.io/tws-api/message_codes.html.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Action(StrEnum):
    """What the IB source does when it sees a code."""

    MARK_GAP = "mark_gap"  # connectivity lost: open a gap on every live stream
    RESUBSCRIBE = "resubscribe"  # connectivity restored: close the gap, cancel and request every subscription again
    FARM_DOWN = "farm_down"  # a data farm is broken (the description says which)
    FARM_OK = "farm_ok"  # a data farm is connected (or idle and available on demand)
    SUBSCRIPTION_LOST = "subscription_lost"  # a running subscription stopped: fall back / resubscribe later
    SUBSCRIPTION_REFUSED = "subscription_refused"  # a request was refused: fall back, or report it
    DELAYED_DATA = "delayed_data"  # IB serves delayed data instead: record it, and say so
    CONTRACT_UNKNOWN = "contract_unknown"  # the conId resolves to nothing: report, do not retry
    HISTORICAL_ERROR = "historical_error"  # a reqHistoricalTicks request failed
    HISTORICAL_NO_DATA = "historical_no_data"  # a reqHistoricalTicks span has no ticks (not an error)
    PACING = "pacing"  # IB pacing violated: wait, then retry the request
    DEPTH_RESET = "depth_reset"  # empty the depth book before applying new rows (317)
    DISCONNECTED = "disconnected"  # the API connection is gone: reconnect with backoff
    LOG = "log"  # nothing to do but log with context


class Severity(StrEnum):
    """How loudly to log a code."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        """The `logging` level of this severity."""
        return _LEVELS[self]


_LEVELS: Final = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.ERROR: logging.ERROR}


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """What one IB code means and what to do about it."""

    action: Action
    severity: Severity
    description: str


def _rule(action: Action, severity: Severity, description: str) -> ErrorRule:
    return ErrorRule(action, severity, description)


A, S = Action, Severity
RULES: Final = MappingProxyType(
    {
        # Connectivity between TWS/Gateway and IB's servers.
        1100: _rule(A.MARK_GAP, S.ERROR, "connectivity between TWS and IB lost: no data until restored"),
        1101: _rule(A.RESUBSCRIBE, S.WARNING, "connectivity restored, data lost: resubscribe everything"),
        1102: _rule(
            A.RESUBSCRIBE,
            S.WARNING,
            "connectivity restored, data maintained: IB keeps the subscriptions, but they have been seen"
            " silent after it, so resubscribe anyway (cheap, idempotent) and backfill the gap",
        ),
        2110: _rule(A.MARK_GAP, S.ERROR, "connectivity between TWS and server broken; restored automatically"),
        # Data farms: market data (live ticks), HMDS (historical ticks), sec-def (contract details).
        2103: _rule(A.FARM_DOWN, S.WARNING, "market data farm connection broken: live ticks stop"),
        2105: _rule(A.FARM_DOWN, S.WARNING, "HMDS data farm connection broken: historical requests fail"),
        2157: _rule(A.FARM_DOWN, S.WARNING, "sec-def data farm connection broken: contract details fail"),
        2104: _rule(A.FARM_OK, S.INFO, "market data farm connection OK"),
        2106: _rule(A.FARM_OK, S.INFO, "HMDS data farm connection OK"),
        2158: _rule(A.FARM_OK, S.INFO, "sec-def data farm connection OK"),
        2107: _rule(A.FARM_OK, S.INFO, "HMDS data farm connection inactive, available on demand"),
        2108: _rule(A.FARM_OK, S.INFO, "market data farm connection inactive, available on demand"),
        2119: _rule(A.LOG, S.INFO, "market data farm is connecting"),
        # Subscriptions.
        10189: _rule(
            A.SUBSCRIPTION_LOST,
            S.WARNING,
            "tick-by-tick data failed or stopped (competing session, or not allowed): fall back to reqMktData",
        ),
        10197: _rule(A.SUBSCRIPTION_LOST, S.WARNING, "no market data during a competing live session"),
        10190: _rule(
            A.SUBSCRIPTION_REFUSED,
            S.WARNING,
            "maximum number of tick-by-tick subscriptions reached: fall back to reqMktData",
        ),
        101: _rule(A.SUBSCRIPTION_REFUSED, S.ERROR, "maximum number of market data tickers reached"),
        309: _rule(A.SUBSCRIPTION_REFUSED, S.ERROR, "maximum number of market depth requests reached"),
        354: _rule(A.SUBSCRIPTION_REFUSED, S.ERROR, "requested market data is not subscribed (no permission)"),
        10168: _rule(A.SUBSCRIPTION_REFUSED, S.ERROR, "market data not subscribed and delayed data not enabled"),
        10167: _rule(A.DELAYED_DATA, S.WARNING, "market data not subscribed: delayed data is displayed"),
        10090: _rule(A.LOG, S.WARNING, "part of the requested market data is not subscribed"),
        200: _rule(A.CONTRACT_UNKNOWN, S.ERROR, "no security definition found for the request"),
        317: _rule(A.DEPTH_RESET, S.INFO, "market depth data reset: empty the book before new rows"),
        # Historical data (HMDS).
        162: _rule(A.HISTORICAL_ERROR, S.ERROR, "historical market data service error"),
        165: _rule(A.LOG, S.INFO, "historical market data service query message"),
        366: _rule(A.LOG, S.INFO, "no historical data query found for the ticker id (already finished)"),
        100: _rule(A.PACING, S.WARNING, "maximum message rate per second exceeded"),
        # The API connection itself.
        502: _rule(A.DISCONNECTED, S.ERROR, "could not connect to TWS / IB Gateway"),
        504: _rule(A.DISCONNECTED, S.ERROR, "not connected"),
        507: _rule(A.DISCONNECTED, S.ERROR, "bad message length: the client dropped the connection"),
        326: _rule(A.DISCONNECTED, S.ERROR, "client id already in use: TWS refused the connection"),
        1300: _rule(A.DISCONNECTED, S.ERROR, "TWS socket port reset: this connection is dropped, reconnect"),
    }
)
del A, S

_PACING = ErrorRule(Action.PACING, Severity.WARNING, "historical data pacing violation: wait, then retry")
_NO_DATA = ErrorRule(Action.HISTORICAL_NO_DATA, Severity.INFO, "the historical query returned no data")
_UNKNOWN_WARNING = ErrorRule(Action.LOG, Severity.WARNING, "IB warning not in the table")
_UNKNOWN_ERROR = ErrorRule(Action.LOG, Severity.ERROR, "IB error not in the table")


def classify(code: int, message: str = "") -> ErrorRule:
    """Return the rule for an IB error callback; unknown codes are logged (2100-2199 as warnings)."""
    if code == 162:
        text = message.lower()
        if "pacing" in text:
            return _PACING
        if "returned no data" in text:
            return _NO_DATA
    rule = RULES.get(code)
    if rule is not None:
        return rule
    return _UNKNOWN_WARNING if 2100 <= code < 2200 else _UNKNOWN_ERROR


def format_error(code: int, message: str, req_id: int = -1, context: str = "") -> str:
    """Return one log line: the code, its rule, the request and what it was for, and IB's text."""
    rule = classify(code, message)
    where = "connection" if req_id < 0 else f"request {req_id}"
    if context:
        where = f"{where} ({context})"
    return f"IB {code} [{rule.action}] on {where}: {message} -- {rule.description}"
