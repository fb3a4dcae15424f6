"""Alerts: each rule's episodes on hand-made bars, and a replayed range with known imbalance, CVD and
VWAP episodes through the real pipeline (store → StreamingApp → live bars → rules → SQLite history),
checked against expectations computed here in plain Python; each episode fires exactly once."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pydantic
import pytest

from ib_stream.alerts.engine import AlertEngine
from ib_stream.alerts.history import AlertHistory
from ib_stream.alerts.rules import Alert, RuleSet
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, StreamKey, TickType
from ib_stream.live.feed import builder_for
from ib_stream.live_settings import AlertsConfig, CvdChangeRule, ObiImbalanceRule, VwapCrossRule
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from tests.conftest import CONTRACT, T0_NS

MINUTE = 60 * NS_PER_SECOND
START = T0_NS + 3600 * NS_PER_SECOND  # 15:00 UTC: inside the XNAS regular session of 2025-01-10
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST))
BID_HEAVY = {5, 6, 7, 8, 9, 11}  # 5..9: an episode of 5 bars; 11: one bar only (no alert)
ASK_HEAVY = {13, 14, 15, 16, 17}
BUYING = {2, 3, 4}  # each: 3 buys of 10 more than the balanced flow → delta +30
SELLING = {14, 15, 16}  # delta −30
MINUTES = 21  # bars 0..20; bar 20 only closes bar 19
CONFIG = AlertsConfig(
    rules=(
        ObiImbalanceRule(threshold=0.6, bars=3),
        CvdChangeRule(threshold=50, bars=3),
        VwapCrossRule(band=0.0),
    )
)


def price(minute: int) -> float:
    return 100.0 if minute < 8 else 101.0 if minute < 12 else 99.0 if minute < 18 else 102.0


def ticks() -> tuple[list[list[dict]], list[list[dict]]]:
    """Per minute: 6 quotes (sizes set the OBI) and the trades (recorded sides set the CVD)."""
    quotes, trades = [], []
    for m in range(MINUTES):
        sizes = (900.0, 100.0) if m in BID_HEAVY else (100.0, 900.0) if m in ASK_HEAVY else (500.0, 500.0)
        base = START + m * MINUTE
        quotes.append([{"ts": base + k * 10 * NS_PER_SECOND, "bid_price": 99.99, "ask_price": 100.01,
                        "bid_size": sizes[0], "ask_size": sizes[1]} for k in range(6)])  # fmt: skip
        minute = [{"ts": base + 5 * NS_PER_SECOND, "price": price(m), "size": 5.0, "side": 1},
                  {"ts": base + 6 * NS_PER_SECOND, "price": price(m), "size": 5.0, "side": -1}]  # fmt: skip
        if m in BUYING | SELLING:
            side = 1 if m in BUYING else -1
            minute += [{"ts": base + (20 + k) * NS_PER_SECOND, "price": price(m), "size": 10.0, "side": side}
                       for k in range(3)]  # fmt: skip
        trades.append(minute if m < MINUTES - 1 else [])
    return quotes, trades


def expected_alerts() -> list[tuple[str, int, str]]:
    """(kind, bar minute, direction) computed directly from the construction (not from the code under test)."""
    found = [("obi_imbalance", 7, "bid"), ("obi_imbalance", 15, "ask"), ("cvd_change", 3, "up")]
    found.append(("cvd_change", 15, "down"))
    # Session VWAP after each bar (the session began before the first trade), and the side of each close.
    notional = volume = 0.0
    side, previous = 0, 0
    _, trades = ticks()
    for m in range(MINUTES - 1):
        for t in trades[m]:
            notional += t["price"] * t["size"]
            volume += t["size"]
        vwap = notional / volume
        now = 1 if price(m) > vwap else -1 if price(m) < vwap else 0
        if now != 0:
            previous, side = side, now
            if previous not in (0, side):
                found.append(("vwap_cross", m, "up" if side > 0 else "down"))
    return sorted(found, key=lambda a: (a[1], a[0]))


def summary(alerts: list[Alert] | list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    rows = [a if isinstance(a, dict) else a.to_dict() for a in alerts]
    out = [(r["kind"], (r["bar_ts"] - START) // MINUTE, r["direction"]) for r in rows]
    for r in rows:
        assert r["ts"] == r["bar_ts"] + MINUTE  # the condition became true when its bar closed
    return sorted(out, key=lambda a: (a[1], a[0]))


def test_the_expectation_holds_two_vwap_crosses() -> None:
    crosses = [a for a in expected_alerts() if a[0] == "vwap_cross"]
    assert crosses == [("vwap_cross", 12, "down"), ("vwap_cross", 18, "up")]


def test_replayed_episodes_fire_exactly_once_each_through_the_builder() -> None:
    builder = builder_for(AAPL, "1m")
    rules = RuleSet(CONFIG, CONTRACT)
    quotes, trades = ticks()
    fired: list[Alert] = []
    for m in range(MINUTES):  # quotes of a minute arrive before its trades, as separate fan-out batches
        fired += rules.on_bars(builder.update([(StreamKey(CONTRACT, TickType.BID_ASK), q) for q in quotes[m]]))
        fired += rules.on_bars(builder.update([(StreamKey(CONTRACT, TickType.LAST), t) for t in trades[m]]))
    assert summary(fired) == expected_alerts()
    obi = next(a for a in fired if a.kind == "obi_imbalance")
    assert obi.value == pytest.approx((900 - 100) / 1000) and obi.threshold == 0.6
    cvd = next(a for a in fired if a.kind == "cvd_change")
    assert cvd.value == pytest.approx(60.0)  # bars 2 and 3: +30 each; bar 1 balanced


async def test_the_engine_fires_stores_and_pushes_each_episode_once(
    store: TickStore, clock: ManualClock, tmp_path: Path
) -> None:
    app = StreamingApp(store, [AAPL])
    await app.start([])
    engine = AlertEngine.open(CONFIG, tmp_path)
    listener = engine.listen(CONTRACT)
    task = asyncio.create_task(engine.run(app))
    try:
        await _until(lambda: app.subscriber_count == 1)
        quotes, trades = ticks()
        for m in range(MINUTES):
            clock.set(START + (m + 1) * MINUTE)  # the minute's ticks arrive as it ends (live bars follow the clock)
            await app.publish(CONTRACT, TickType.BID_ASK, quotes[m], "test")
            if trades[m]:
                await app.publish(CONTRACT, TickType.LAST, trades[m], "test")
        expected = expected_alerts()
        await _until(lambda: engine.fired >= len(expected))
        await asyncio.sleep(0.2)  # nothing more comes
        stored = await engine.query(CONTRACT, None, 100)
        assert summary(stored) == expected
        assert summary(listener.drain()) == expected
        assert engine.fired == len(expected)
        since = await engine.query(CONTRACT, START + 10 * MINUTE, 100)
        assert summary(since) == [a for a in expected if a[1] >= 9]  # ts = bar end >= 10 min
        assert await engine.query(CONTRACT + 1, None, 100) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await app.stop()
        engine.close()
    # The history survives a restart.
    again = AlertEngine.open(CONFIG, tmp_path)
    try:
        assert summary(await again.query(None, None, 100)) == expected
    finally:
        again.close()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---- each rule on hand-made bars ----------------------------------------------------------------------
def rows(**columns: list[Any]) -> list[dict[str, Any]]:
    n = len(next(iter(columns.values())))
    base = {"final": True, "empty": False, "session": 1, "delta": 0.0, "obi_close": 0.0, "close": 1.0}
    return [{**base, "ts": START + i * MINUTE, **{k: v[i] for k, v in columns.items()}} for i in range(n)]


def fire(rule: Any, bars: list[dict[str, Any]]) -> list[int]:
    """The bar indexes at which the rule fired."""
    rules = RuleSet(AlertsConfig(rules=(rule,)), CONTRACT)
    return [(a.bar_ts - START) // MINUTE for a in rules.on_bars(bars)]


def test_obi_needs_n_consecutive_bars_leaning_the_same_way_and_rearms_after_a_reset() -> None:
    rule = ObiImbalanceRule(threshold=0.5, bars=2)
    values = [0.6, 0.7, 0.9, 0.4, 0.6, -0.6, -0.6, -0.7, math.nan, 0.5, 0.5]
    # fires at 1 (0.6, 0.7), not again at 2; 3 resets; 4 alone; 5 flips (new run), fires at 6; 8 (NaN) resets; 10.
    assert fire(rule, rows(obi_close=values)) == [1, 6, 10]


def test_cvd_change_is_measured_over_the_window_of_bar_deltas() -> None:
    rule = CvdChangeRule(threshold=10, bars=2)
    deltas = [6, 6, -2, 6, 6, 6, -20, -3, 0, 0]
    # window sums: 6, 12*, 4, 4, 12*, 12, -14*, -23, -3, 0 (a 3-bar window would give 6, 12*, 10, 10, 10, ...)
    assert fire(rule, rows(delta=[float(d) for d in deltas])) == [1, 4, 6]


def test_vwap_cross_with_a_band_and_a_new_session() -> None:
    rule = VwapCrossRule(band=0.5)
    closes = [10.0, 11.0, 9.8, 9.4, 10.2, 10.6, 9.0]
    sessions = [1, 1, 1, 1, 1, 1, 2]
    vwap = [10.0] * 7
    # 0: inside the band (no side); 1: above; 2: inside (still above); 3: below → cross; 4: inside; 5: above
    # → cross; 6: a new session starts with no side, so below is not a cross.
    assert fire(rule, rows(close=closes, session_vwap=vwap, session=sessions)) == [3, 5]


def test_forming_bars_wait_and_an_amended_closed_bar_is_not_judged_twice() -> None:
    rules = RuleSet(AlertsConfig(rules=(ObiImbalanceRule(threshold=0.5, bars=1),)), CONTRACT)
    bar = rows(obi_close=[0.9])[0]
    assert rules.on_bars([{**bar, "final": False}]) == []
    assert len(rules.on_bars([bar])) == 1
    assert rules.on_bars([bar]) == []


def test_rules_can_be_limited_to_contracts() -> None:
    config = AlertsConfig(rules=(ObiImbalanceRule(contract_ids=(7,)), VwapCrossRule()))
    assert [s.rule.kind for s in RuleSet(config, 7).states] == ["obi_imbalance", "vwap_cross"]
    assert [s.rule.kind for s in RuleSet(config, 8).states] == ["vwap_cross"]


def test_config_reads_rules_from_json_and_names_bad_values() -> None:
    config = AlertsConfig.model_validate_json('{"rules": [{"kind": "cvd_change", "threshold": 500, "bars": 10}]}')
    assert config.rules == (CvdChangeRule(threshold=500, bars=10),)
    with pytest.raises(pydantic.ValidationError, match="kind"):
        AlertsConfig.model_validate({"rules": [{"kind": "moon_phase"}]})
    with pytest.raises(pydantic.ValidationError, match="threshold"):
        AlertsConfig.model_validate({"rules": [{"kind": "obi_imbalance", "threshold": 1.5}]})
    with pytest.raises(pydantic.ValidationError, match="resolution"):
        AlertsConfig(resolution="1d")


def test_history_keeps_the_newest_alerts_up_to_its_limit(tmp_path: Path) -> None:
    history = AlertHistory(tmp_path / "alerts.db", limit=10)
    made = [Alert(CONTRACT, "r", "obi_imbalance", i, i + 1, "bid", 0.9, 0.6, f"m{i}", {"i": i}) for i in range(25)]
    for i in range(0, 25, 5):
        history.add(made[i : i + 5])
    got = history.query(limit=100)
    assert [a["ts"] for a in got] == [i + 1 for i in range(24, 14, -1)]
    assert got[0]["details"] == {"i": 24} and made[-1].id == got[0]["id"]
    assert [a["ts"] for a in history.query(since_ns=23, limit=100)] == [25, 24, 23]
    history.close()


def test_the_howto_page_config_and_example_match_the_code() -> None:
    import json
    import re
    import tomllib

    from ib_stream.live_settings import JsonSinkConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "howto" / "json-sink-and-alerts.md").read_text()
    parsed = [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, re.S)]
    sink = JsonSinkConfig.model_validate(next(p["json_sink"] for p in parsed if "json_sink" in p))
    assert sink.enabled and sink.contract_id == 495512563 and sink.window == 1000
    config = AlertsConfig.model_validate(next(p["alerts"] for p in parsed if "alerts" in p))
    assert [r.kind for r in config.rules] == ["obi_imbalance", "cvd_change", "vwap_cross"]
    env = re.search(r"IB_STREAM_ALERTS__RULES='(.*?)'", text)
    assert env is not None and AlertsConfig.model_validate({"rules": json.loads(env[1])}).rules == (
        VwapCrossRule(band=0.25),
    )
    assert AlertsConfig().rules == (ObiImbalanceRule(threshold=0.6, bars=3), VwapCrossRule(band=0.0))
    # The worked example: one bid alert at the 4th bar, one ask alert at the 10th.
    values = [0.1, 0.7, 0.8, 0.75, 0.9, 0.2, 0.65, -0.7, -0.8, -0.7]
    assert "0.1, 0.7, 0.8, 0.75, 0.9, 0.2, 0.65, −0.7, −0.8, −0.7" in text
    assert fire(ObiImbalanceRule(threshold=0.6, bars=3), rows(obi_close=values)) == [3, 9]
