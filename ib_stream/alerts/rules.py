"""Alert rules on live bars: the evaluators that turn closed bars into alerts (settings in `alerts.config`).

Rules are evaluated once per contract and bar, when the bar closes (a later bar started). Each
rule tracks *episodes*: it fires when its condition becomes true and stays silent until the
condition has reset, so one episode gives exactly one alert.

* ``obi_imbalance`` — |OBI close| ≥ `threshold` on `bars` consecutive closed bars, all leaning the
  same way (bid-heavy > 0, ask-heavy < 0). Resets when a bar falls below the threshold or leans the
  other way.
* ``cvd_change`` — the CVD change over the last `bars` closed bars (the sum of their per-bar delta,
  so a session reset in the window does not count as a change) reaches ±`threshold`. Resets when
  the change is back inside the threshold (or flips to the other side, which is a new episode).
* ``vwap_cross`` — the bar close moves from one side of the session VWAP to the other, by more than
  `band` (price units). The side is unknown again at each session start.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ib_stream.analytics.grid import BAR_SIZES
from ib_stream.live_settings import AlertsConfig, CvdChangeRule, ObiImbalanceRule, VwapCrossRule


@dataclass(slots=True)
class Alert:
    """One fired alert: which rule, which contract, which bar, which way and the numbers behind it."""

    contract_id: int
    rule: str
    kind: str
    bar_ts: int  # start of the bar that completed the condition (UTC ns)
    ts: int  # when the condition became true: the end of that bar (UTC ns)
    direction: str  # bid|ask (obi_imbalance), up|down (cvd_change, vwap_cross)
    value: float
    threshold: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    fired_ns: int = 0  # wall time the engine fired it
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(row: dict[str, Any], name: str) -> float:
    """A numeric field of a bar row as a float (NaN when missing or null)."""
    value = row.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


class RuleState:
    """One rule's episode state for one contract; `on_bar(row)` returns an alert when an episode starts."""

    def __init__(self, rule: ObiImbalanceRule | CvdChangeRule | VwapCrossRule, contract_id: int, bar_ns: int) -> None:
        self.rule = rule
        self.contract_id = contract_id
        self.bar_ns = bar_ns
        self.run = 0  # obi: consecutive imbalanced bars
        self.direction = 0  # the direction of the episode under way (0 = none)
        self.fired = False
        self.deltas: list[float] = []  # cvd: the window's per-bar deltas
        self.session: int | None = None  # vwap: the session the side belongs to

    def on_bar(self, row: dict[str, Any]) -> Alert | None:
        """Feed one closed bar (a row of LiveBarBuilder) in time order."""
        rule = self.rule
        if isinstance(rule, ObiImbalanceRule):
            return self._obi(rule, row)
        if isinstance(rule, CvdChangeRule):
            return self._cvd(rule, row)
        return self._vwap(rule, row)

    def _alert(
        self,
        row: dict[str, Any],
        direction: str,
        value: float,
        threshold: float,
        message: str,
        details: dict[str, Any],
    ) -> Alert:
        return Alert(
            self.contract_id,
            self.rule.label,
            self.rule.kind,
            row["ts"],
            row["ts"] + self.bar_ns,
            direction,
            float(value),
            float(threshold),
            message,
            details,
        )

    def _obi(self, rule: ObiImbalanceRule, row: dict[str, Any]) -> Alert | None:
        obi = _num(row, "obi_close")
        lean = 0
        if abs(obi) >= rule.threshold:  # False for NaN
            lean = 1 if obi > 0 else -1
        if lean == 0 or lean != self.direction:  # the episode (if any) ends; maybe a new one starts
            self.run, self.fired, self.direction = 0, False, lean
        if lean == 0:
            return None
        self.run += 1
        if self.run < rule.bars or self.fired:
            return None
        self.fired = True
        side = "bid" if lean > 0 else "ask"
        return self._alert(
            row,
            side,
            obi,
            rule.threshold,
            f"OBI {obi:+.3f}: {side}-heavy book for {rule.bars} bars (|OBI| >= {rule.threshold:g})",
            {"bars": rule.bars},
        )

    def _cvd(self, rule: CvdChangeRule, row: dict[str, Any]) -> Alert | None:
        delta = _num(row, "delta")
        self.deltas.append(delta if math.isfinite(delta) else 0.0)
        if len(self.deltas) > rule.bars:
            del self.deltas[0]
        change = math.fsum(self.deltas)
        way = 1 if change >= rule.threshold else -1 if change <= -rule.threshold else 0
        if way != self.direction:
            self.direction, self.fired = way, False
        if way == 0 or self.fired:
            return None
        self.fired = True
        word = "up" if way > 0 else "down"
        return self._alert(
            row,
            word,
            change,
            rule.threshold,
            f"CVD {word} {change:+g} over {len(self.deltas)} bars (threshold {rule.threshold:g})",
            {"bars": len(self.deltas)},
        )

    def _vwap(self, rule: VwapCrossRule, row: dict[str, Any]) -> Alert | None:
        close, vwap, session = _num(row, "close"), _num(row, "session_vwap"), row.get("session")
        if session != self.session:  # a new session: its VWAP starts over, the side is unknown
            self.session, self.direction = session, 0
        if row.get("empty") or not (math.isfinite(close) and math.isfinite(vwap)):
            return None
        side = 1 if close > vwap + rule.band else -1 if close < vwap - rule.band else 0
        if side == 0:
            return None  # inside the band: keep the side it was on
        previous, self.direction = self.direction, side
        if previous in (0, side):
            return None
        word = "up" if side > 0 else "down"
        return self._alert(
            row,
            word,
            close,
            vwap,
            f"price {close:g} crossed {'above' if side > 0 else 'below'} the session VWAP {vwap:g}",
            {"vwap": vwap, "band": rule.band},
        )


class RuleSet:
    """Every rule's state for one contract."""

    def __init__(self, config: AlertsConfig, contract_id: int) -> None:
        bar_ns = BAR_SIZES[config.resolution]
        self.states = [RuleState(r, contract_id, bar_ns) for r in config.rules if r.applies_to(contract_id)]
        self.last_ts: int | None = None

    def on_bars(self, rows: list[dict[str, Any]]) -> list[Alert]:
        """Evaluate the final rows not seen yet (bar upserts from LiveBarBuilder), in time order."""
        alerts: list[Alert] = []
        for row in rows:
            if not row["final"] or (self.last_ts is not None and row["ts"] <= self.last_ts):
                continue  # forming bars wait for their close; an amended closed bar was already judged
            self.last_ts = row["ts"]
            for state in self.states:
                alert = state.on_bar(row)
                if alert is not None:
                    alerts.append(alert)
        return alerts
