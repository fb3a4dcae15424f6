"""The fake TWS's scripted market against the real ibapi 9.81 EClient: history and live at once, the log of what
was sent, a history answer arriving with a live tick in the same write, and one lost in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.fake_tws import AAPL, ES, FakeTWS
from tests.support.fake_tws_messages import LastTick
from tests.support.fake_tws_scenarios import ScriptedMarket
from tests.support.ib_client import RecordingClient, ib_contract

T = 1704205800  # 2024-01-02 14:30:00 UTC
Connect = Callable[..., RecordingClient]


@pytest.fixture
def tws() -> Iterator[FakeTWS]:
    with FakeTWS([AAPL, ES]) as server:
        yield server
    assert server.protocol_errors == []


@pytest.fixture
def connect(tws: FakeTWS) -> Iterator[Connect]:
    clients: list[RecordingClient] = []

    def _connect(client_id: int = 7) -> RecordingClient:
        clients.append(RecordingClient().start(tws.port, client_id))
        clients[-1].wait_for("nextValidId")
        return clients[-1]

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture
def app(connect: Connect) -> RecordingClient:
    return connect()


def test_a_scripted_market_trades_into_history_and_live_and_logs_what_it_sent(
    tws: FakeTWS, app: RecordingClient
) -> None:
    clock = [T + 0.5]
    market = ScriptedMarket(tws, [(265598, "MidPoint"), (265598, "Last")], lambda: clock[0], seed=1)
    market.trade(265598, "MidPoint")  # nobody subscribed: history only
    app.reqTickByTickData(5, ib_contract(265598), "MidPoint", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData", "MidPoint")
    sent = market.trade(265598, "MidPoint")
    assert app.wait_for("tickByTickMidPoint", 5) == [("tickByTickMidPoint", 5, T, sent.mid_point)]
    assert [(s.con_id, s.kind, s.tick, s.req_id) for s in tws.sent] == [(265598, "MidPoint", sent, 5)]
    assert tws.historical_ticks(265598, "MIDPOINT") == market.ticks[(265598, "MidPoint")]
    assert len(market.ticks[(265598, "MidPoint")]) == 2 and market.ticks[(265598, "Last")] == []
    with pytest.raises(ValueError, match="share IB history"):
        ScriptedMarket(tws, [(265598, "Last"), (265598, "AllLast")], lambda: clock[0])


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_history_answer_can_come_with_a_live_tick_in_the_same_write(
    tws: FakeTWS, app: RecordingClient, order: str
) -> None:
    market = ScriptedMarket(tws, [(265598, "MidPoint")], lambda: T + 3.2, seed=2)
    market.piggyback("before" if order == "before" else "after")
    app.reqTickByTickData(5, ib_contract(265598), "MidPoint", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData", "MidPoint")
    app.reqHistoricalTicks(6, ib_contract(265598), "20240102 14:30:00 UTC", "", 100, "MIDPOINT", 0, True, [])
    ((_, _, rows, done),) = app.wait_for("historicalTicks", 6)
    (live,) = app.wait_for("tickByTickMidPoint", 5)
    assert rows == [(T + 3, live[3], 0)] and done  # the live tick is in the answer's history too
    names = [e[0] for e in app.events if e[0] in ("historicalTicks", "tickByTickMidPoint")]
    expected = ["tickByTickMidPoint", "historicalTicks"]
    assert names == (expected if order == "before" else expected[::-1])
    assert len(tws.sent) == 1


def test_a_delayed_history_answer_is_lost_when_the_connection_drops(tws: FakeTWS, connect: Connect) -> None:
    tws.add_historical_ticks(265598, "TRADES", [LastTick(T, 1.0, 1)])
    tws.history_delay = 0.3
    first = connect()
    first.reqHistoricalTicks(6, ib_contract(265598), "20240102 14:30:00 UTC", "", 100, "TRADES", 0, True, [])
    tws.wait_for_request("reqHistoricalTicks")
    tws.drop_connections()
    first.wait_for("connectionClosed")
    time.sleep(0.4)
    assert first.events_of("historicalTicksLast") == []
    tws.history_delay = 0.0
    second = connect(client_id=8)
    second.reqHistoricalTicks(7, ib_contract(265598), "20240102 14:30:00 UTC", "", 100, "TRADES", 0, True, [])
    assert second.wait_for("historicalTicksLast", 7)[0][2][0][:3] == (T, 1.0, 1)
