"""The fake TWS against the real ibapi 9.81 EClient: handshake, data, history, failure scenarios, real IB samples."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ib_stream.contracts import load_contracts
from tests.support import ib_samples
from tests.support.fake_tws import FakeTWS
from tests.support.fake_tws_messages import (
    AAPL,
    ERROR_TEXT,
    ES,
    BidAskTick,
    FakeContract,
    LastTick,
    MidPointTick,
    fake_contract,
    tick_by_tick,
)
from tests.support.ib_client import RecordingClient, ib_contract

T = 1704205800  # 2024-01-02 14:30:00 UTC
Connect = Callable[..., RecordingClient]


CONTRACTS = (AAPL, ES, ib_samples.EURUSD, ib_samples.HK_STOCK, ib_samples.HIST_CONTRACT)


@pytest.fixture
def make_tws() -> Iterator[Callable[..., FakeTWS]]:
    """Start fake TWS servers (options as FakeTWS keywords); stop them after the test and check the protocol."""
    servers: list[FakeTWS] = []

    def _make(**options: Any) -> FakeTWS:
        servers.append(FakeTWS(CONTRACTS, **options).start())
        return servers[-1]

    yield _make
    for server in servers:
        server.stop()
    assert [e for server in servers for e in server.protocol_errors] == []


@pytest.fixture
def tws(make_tws: Callable[..., FakeTWS]) -> FakeTWS:
    return make_tws(accounts=("DU111111", "DU222222"))


@pytest.fixture
def connect(tws: FakeTWS) -> Iterator[Connect]:
    clients: list[RecordingClient] = []

    def _connect(client_id: int = 7, server: FakeTWS | None = None) -> RecordingClient:
        client = RecordingClient().start((server or tws).port, client_id)
        clients.append(client)
        client.wait_for("nextValidId")
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture
def app(connect: Connect) -> RecordingClient:
    return connect()


def test_handshake_answers_version_next_valid_id_and_accounts(tws: FakeTWS, app: RecordingClient) -> None:
    app.wait_for("error", where=lambda e: e[2] == 2158)
    assert app.serverVersion() == 157
    assert app.twsConnectionTime().endswith(b"UTC")
    assert [e[0] for e in app.events[:3]] == ["connectAck", "nextValidId", "managedAccounts"]
    assert app.events_of("nextValidId") == [("nextValidId", 1)]
    assert app.events_of("managedAccounts") == [("managedAccounts", "DU111111,DU222222")]
    assert [e[1:3] for e in app.events_of("error")] == [(-1, 2104), (-1, 2106), (-1, 2158)]
    handshake = tws.requests_of("handshake")[0]
    assert (handshake["minVersion"], handshake["maxVersion"]) == (100, 157)
    assert tws.wait_for_request("startApi")["clientId"] == 7
    assert tws.wait_connected().client_id == 7
    app.reqCurrentTime()
    assert app.wait_for("currentTime")[0][1] == pytest.approx(time.time(), abs=5)


@pytest.mark.parametrize("server_version", [151, 157])
def test_non_ascii_text_survives_either_string_decoding(
    server_version: int, make_tws: Callable[..., FakeTWS], connect: Connect
) -> None:
    """From sv 153 ibapi decodes error text and longName with 'unicode-escape', before that as UTF-8."""
    server = make_tws(server_version=server_version)
    server.add_contract(FakeContract(116545, "GLE", exchange="SBF", currency="EUR", long_name="Société Générale"))
    app = connect(server=server)
    app.reqContractDetails(14, ib_contract(116545))
    server.send_error(2104, message="Verbindung zur Marktdatenfarm ist OK: eufarm \\ ä")
    assert app.wait_for("contractDetails", 14)[0][2].longName == "Société Générale"
    assert app.wait_for("error", -1, where=lambda e: "eufarm" in e[3])[0][3].endswith("eufarm \\ ä")


@pytest.mark.parametrize("server_version", [151, 157])
def test_contract_details_known_by_con_id_or_symbol_and_unknown(
    server_version: int, make_tws: Callable[..., FakeTWS], connect: Connect
) -> None:
    server = make_tws(server_version=server_version)
    app = connect(server=server)
    assert app.serverVersion() == server_version
    app.reqContractDetails(11, ib_contract(265598))
    app.reqContractDetails(12, ib_contract(0, "CME", symbol="ES", secType="FUT", currency="USD"))
    app.reqContractDetails(13, ib_contract(999))
    app.wait_for("contractDetailsEnd", count=2)
    app.wait_for("error", 13)
    (_, _, aapl), (_, _, es) = app.events_of("contractDetails")
    c = aapl.contract
    assert (c.conId, c.symbol, c.secType, c.exchange, c.primaryExchange, c.currency) == (
        265598, "AAPL", "STK", "SMART", "NASDAQ", "USD",
    )  # fmt: skip
    assert (aapl.minTick, aapl.longName, aapl.timeZoneId) == (0.01, "APPLE INC", "US/Eastern")
    assert aapl.marketRuleIds == "26,26"
    assert [(t.tag, t.value) for t in aapl.secIdList] == [("ISIN", "US0378331005")]
    assert aapl.stockType == ("COMMON" if server_version >= 152 else "")
    assert (es.contract.conId, es.contract.lastTradeDateOrContractMonth) == (495512563, "20261218")
    assert es.lastTradeTime == "08:30"
    assert (es.contract.multiplier, es.minTick, es.contract.localSymbol) == ("50", 0.25, "ESZ6")
    assert app.events_of("contractDetailsEnd") == [("contractDetailsEnd", 11), ("contractDetailsEnd", 12)]
    assert app.events_of("error", 13) == [("error", 13, 200, "No security definition has been found for the request")]
    assert [r.con_id for r in server.requests_of("reqContractDetails")] == [265598, 0, 999]


def test_tick_by_tick_every_kind_arrives_with_exact_values(tws: FakeTWS, app: RecordingClient) -> None:
    for req_id, kind in [(31, "BidAsk"), (32, "Last"), (33, "AllLast"), (34, "MidPoint")]:
        app.reqTickByTickData(req_id, ib_contract(265598), kind, 0, False)
        assert tws.wait_subscribed(265598, "reqTickByTickData", kind).req_id == req_id
    tws.emit_tick_by_tick(
        265598, "BidAsk", time=T, bid=185.5, ask=185.52, bid_size=300, ask_size=200, bid_past_low=True
    )
    tws.emit_tick_by_tick(265598, "Last", time=T + 1, price=185.51, size=100, exchange="ISLAND", unreported=True)
    tws.emit_tick_by_tick(
        265598, "AllLast", time=T + 2, price=185.49, size=7, special_conditions="  T", past_limit=True
    )
    tws.emit_tick_by_tick(265598, "MidPoint", time=T + 3, mid_point=185.51)
    assert app.wait_for("tickByTickBidAsk") == [("tickByTickBidAsk", 31, T, 185.5, 185.52, 300, 200, (True, False))]
    assert app.wait_for("tickByTickAllLast", count=2) == [
        ("tickByTickAllLast", 32, 1, T + 1, 185.51, 100, (False, True), "ISLAND", ""),
        ("tickByTickAllLast", 33, 2, T + 2, 185.49, 7, (True, False), "", "  T"),
    ]
    assert app.wait_for("tickByTickMidPoint") == [("tickByTickMidPoint", 34, T + 3, 185.51)]
    request = tws.requests_of("reqTickByTickData", tickType="BidAsk")[0]
    assert (request.req_id, request.con_id, request["exchange"], request["numberOfTicks"]) == (31, 265598, "SMART", 0)

    app.cancelTickByTickData(31)
    tws.wait_for_request("cancelTickByTickData", reqId=31)
    tws.wait_until(lambda: not tws.subscriptions(265598, "reqTickByTickData", "BidAsk"), 5, "BidAsk cancelled")
    with pytest.raises(LookupError, match="no active reqTickByTickData BidAsk"):
        tws.emit_tick_by_tick(265598, "BidAsk", time=T, bid=1.0, ask=1.1, bid_size=1, ask_size=1)


def test_fractional_sizes_are_refused_before_they_can_kill_the_client(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqTickByTickData(31, ib_contract(265598), "Last", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData", "Last")
    with pytest.raises(ValueError, match="whole number"):
        tws.emit_tick_by_tick(265598, "Last", time=T, price=1.0, size=0.5)


def test_mkt_data_sends_tick_req_params_then_prices_and_sizes(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqMktData(21, ib_contract(265598), "", False, False, [])
    assert tws.wait_subscribed(265598, "reqMktData").req_id == 21
    tws.emit_mkt_data(265598, 1, price=185.5, size=300, attrib_mask=1)
    tws.emit_mkt_data(265598, 4, price=185.51, size=100)
    tws.emit_mkt_data(265598, 8, size=123456)
    tws.emit_mkt_data(265598, 48, text="185.51;100;1704205800123;1000;185.4;false")
    app.wait_for("tickString")
    assert app.events_of("tickReqParams") == [("tickReqParams", 21, 0.01, "9c0001", 3)]
    assert app.events_of("tickPrice") == [
        ("tickPrice", 21, 1, 185.5, (True, False, False)),
        ("tickPrice", 21, 4, 185.51, (False, False, False)),
    ]
    assert app.events_of("tickSize") == [
        ("tickSize", 21, 0, 300),
        ("tickSize", 21, 5, 100),
        ("tickSize", 21, 8, 123456),
    ]
    app.cancelMktData(21)
    tws.wait_until(lambda: not tws.subscriptions(265598, "reqMktData"), 5, "reqMktData cancelled")
    assert tws.requests_of("cancelMktData")[0].req_id == 21


def test_depth_plain_and_l2_updates(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqMktDepth(41, ib_contract(265598, "ISLAND"), 5, True, [])
    sub = tws.wait_subscribed(265598, "reqMktDepth")
    assert (sub.req_id, sub.is_smart_depth) == (41, True)
    tws.emit_depth(265598, 0, 0, 1, 185.5, 300)
    tws.emit_depth(265598, 0, 0, 1, 185.49, 500, market_maker="NSDQ")
    assert app.wait_for("updateMktDepth") == [("updateMktDepth", 41, 0, 0, 1, 185.5, 300)]
    assert app.wait_for("updateMktDepthL2") == [("updateMktDepthL2", 41, 0, "NSDQ", 0, 1, 185.49, 500, True)]
    assert tws.emit_error(265598, "reqMktDepth", 317) == [41]
    assert app.wait_for("error", 41)[0][2] == 317
    request = tws.requests_of("reqMktDepth")[0]
    assert (request["numRows"], request["isSmartDepth"], request["exchange"]) == (5, True, "ISLAND")
    app.cancelMktDepth(41, True)
    assert tws.wait_for_request("cancelMktDepth")["isSmartDepth"] is True


def _quotes(n: int) -> list[BidAskTick]:
    return [BidAskTick(T + i, 100 + i / 100, 100.02 + i / 100, 10 + i, 20 + i, ask_past_high=i == 0) for i in range(n)]


def test_historical_bid_ask_capped_at_1000_from_start_or_before_end(tws: FakeTWS, app: RecordingClient) -> None:
    tws.add_historical_ticks(265598, "BID_ASK", _quotes(1500))
    app.reqHistoricalTicks(61, ib_contract(265598), "20240102 14:30:00 UTC", "", 5000, "BID_ASK", 0, True, [])
    ((_, _, rows, done),) = app.wait_for("historicalTicksBidAsk", 61)
    assert done is True
    assert len(rows) == 1000
    assert rows[0] == (T, 100.0, 100.02, 10, 20, False, True)  # 97's mask: bit0 askPastHigh
    assert [r[0] for r in rows] == list(range(T, T + 1000))
    app.reqHistoricalTicks(62, ib_contract(265598), "", "20240102-14:31:39", 10, "BID_ASK", 0, True, [])
    ((_, _, rows, done),) = app.wait_for("historicalTicksBidAsk", 62)
    assert [r[0] for r in rows] == list(range(T + 90, T + 100))
    app.reqHistoricalTicks(63, ib_contract(265598), "20240102 09:30:00 US/Eastern", "", 3, "BID_ASK", 0, True, [])
    assert [r[0] for r in app.wait_for("historicalTicksBidAsk", 63)[0][2]] == [T, T + 1, T + 2]
    request = tws.requests_of("reqHistoricalTicks", reqId=61)[0]
    assert (request["whatToShow"], request["numberOfTicks"], request["startDateTime"]) == (
        "BID_ASK", 5000, "20240102 14:30:00 UTC",
    )  # fmt: skip


def test_historical_trades_and_midpoint_and_split_done_flag(make_tws: Callable[..., FakeTWS], connect: Connect) -> None:
    server = make_tws(historical_chunk=2)
    server.add_historical_ticks(
        265598, "TRADES", [LastTick(T + i, 50 + i, 5, "ARCA", "I", unreported=True) for i in range(5)]
    )
    server.add_historical_ticks(265598, "MIDPOINT", [MidPointTick(T, 50.5), MidPointTick(T + 1, 50.75)])
    app = connect(server=server)
    app.reqHistoricalTicks(71, ib_contract(265598), "", "20240102 14:30:03 UTC", 100, "TRADES", 1, False, [])
    app.reqHistoricalTicks(72, ib_contract(265598), "20240102 14:30:00 UTC", "", 100, "MIDPOINT", 1, False, [])
    app.reqHistoricalTicks(73, ib_contract(265598), "20250101 00:00:00 UTC", "", 100, "MIDPOINT", 1, False, [])
    trades = app.wait_for("historicalTicksLast", 71, count=2)
    mids = app.wait_for("historicalTicks", 72)
    empty = app.wait_for("historicalTicks", 73)
    assert [(len(rows), done) for _, _, rows, done in trades] == [(2, False), (2, True)]
    assert trades[0][2][0] == (T, 50.0, 5, "ARCA", "I", False, True)
    assert [r[0] for _, _, rows, _ in trades for r in rows] == [T, T + 1, T + 2, T + 3]
    assert mids == [("historicalTicks", 72, [(T, 50.5, 0), (T + 1, 50.75, 0)], True)]
    assert empty == [("historicalTicks", 73, [], True)]


def test_historical_request_errors(tws: FakeTWS, app: RecordingClient) -> None:
    tws.add_historical_ticks(265598, "BID_ASK", _quotes(3))
    both = ("20240102 14:30:00 UTC", "20240102 14:31:00 UTC")
    app.reqHistoricalTicks(81, ib_contract(265598), *both, 10, "BID_ASK", 0, True, [])
    app.reqHistoricalTicks(82, ib_contract(265598), both[0], "", 10, "BID_AND_ASK", 0, True, [])
    app.reqHistoricalTicks(83, ib_contract(424242), both[0], "", 10, "BID_ASK", 0, True, [])
    assert "exactly one" in app.wait_for("error", 81)[0][3]
    assert "whatToShow" in app.wait_for("error", 82)[0][3]
    assert app.wait_for("error", 83)[0][2] == 200
    assert app.events_of("historicalTicksBidAsk") == []


def test_disconnect_mid_stream_then_reconnect(tws: FakeTWS, connect: Connect) -> None:
    app = connect()
    app.reqTickByTickData(31, ib_contract(265598), "BidAsk", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData")
    tws.emit_tick_by_tick(265598, "BidAsk", time=T, bid=1.0, ask=1.1, bid_size=1, ask_size=1)
    app.wait_for("tickByTickBidAsk")
    assert tws.drop_connections() == 1
    tws.wait_disconnected()
    app.wait_for("connectionClosed")
    assert not app.isConnected()
    assert tws.subscriptions() == []
    again = connect(client_id=8)
    assert tws.wait_connected(count=2).client_id == 8
    again.reqTickByTickData(35, ib_contract(265598), "BidAsk", 0, False)
    assert tws.wait_subscribed(265598, "reqTickByTickData").connection == 2
    tws.emit_tick_by_tick(265598, "BidAsk", time=T + 9, bid=2.0, ask=2.1, bid_size=2, ask_size=2)
    assert again.wait_for("tickByTickBidAsk")[0][1:3] == (35, T + 9)
    assert len(app.events_of("tickByTickBidAsk")) == 1
    assert [r.connection for r in tws.requests_of("reqTickByTickData")] == [1, 2]


def test_connectivity_lost_then_restored_keeps_the_socket(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqTickByTickData(31, ib_contract(265598), "MidPoint", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData")
    tws.connectivity_lost()
    assert app.wait_for("error", -1, where=lambda e: e[2] == 1100)[0][3].startswith("Connectivity between IB")
    assert tws.emit_tick_by_tick(265598, "MidPoint", time=T, mid_point=1.0) == 0
    tws.connectivity_restored()
    app.wait_for("error", -1, where=lambda e: e[2] == 1102)
    tws.emit_tick_by_tick(265598, "MidPoint", time=T + 1, mid_point=2.0)
    assert app.wait_for("tickByTickMidPoint") == [("tickByTickMidPoint", 31, T + 1, 2.0)]
    tws.connectivity_lost()
    tws.connectivity_restored(data_lost=True)
    app.wait_for("error", -1, where=lambda e: e[2] == 1101)
    assert tws.subscriptions() == []
    assert app.isConnected() and app.events_of("connectionClosed") == []
    assert tws.dropped_messages == 1 and len(tws.clients) == 1


def test_stall_keeps_the_connection_but_withholds_data(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqTickByTickData(31, ib_contract(265598), "Last", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData")
    tws.stall()
    assert tws.emit_tick_by_tick(265598, "Last", time=T, price=1.0, size=1) == 0
    app.reqCurrentTime()
    app.wait_for("currentTime")  # the session still answers
    assert app.events_of("tickByTickAllLast") == []
    tws.resume()
    tws.emit_tick_by_tick(265598, "Last", time=T + 1, price=2.0, size=2)
    assert [e[3] for e in app.wait_for("tickByTickAllLast")] == [T + 1]


def test_competing_session_10189_and_refused_subscriptions(tws: FakeTWS, app: RecordingClient) -> None:
    app.reqTickByTickData(31, ib_contract(265598), "BidAsk", 0, False)
    app.reqTickByTickData(32, ib_contract(495512563), "Last", 0, False)
    tws.wait_subscribed(495512563, "reqTickByTickData")
    tws.wait_subscribed(265598, "reqTickByTickData")
    assert tws.competing_session(265598) == [31]
    assert app.wait_for("error", 31)[0][2:] == (10189, ERROR_TEXT[10189])
    assert [s.req_id for s in tws.subscriptions()] == [32]
    tws.refuse("reqTickByTickData", 10189, con_id=265598)
    tws.refuse("reqMktData", 354)
    app.reqTickByTickData(33, ib_contract(265598), "BidAsk", 0, False)
    app.reqMktData(21, ib_contract(495512563), "", False, False, [])
    app.reqTickByTickData(34, ib_contract(777), "BidAsk", 0, False)
    assert app.wait_for("error", 33)[0][2] == 10189
    assert app.wait_for("error", 21)[0][2:] == (354, "Requested market data is not subscribed.")
    assert app.wait_for("error", 34)[0][2] == 200
    assert app.events_of("tickReqParams") == [] and [s.req_id for s in tws.subscriptions()] == [32]
    app.reqMktData(22, ib_contract(495512563), "", False, False, [])  # the refusal was for one request
    assert tws.wait_subscribed(495512563, "reqMktData").req_id == 22


def test_tick_by_tick_limit_answers_10190(make_tws: Callable[..., FakeTWS], connect: Connect) -> None:
    server = make_tws(tick_by_tick_limit=1)
    app = connect(server=server)
    app.reqTickByTickData(31, ib_contract(265598), "BidAsk", 0, False)
    app.reqTickByTickData(32, ib_contract(265598), "Last", 0, False)
    assert app.wait_for("error", 32)[0][2:] == (10190, "Max number of tick-by-tick requests has been reached.")
    assert [s.req_id for s in server.subscriptions()] == [31]


def test_pacing_violation_162_scripted_and_automatic(make_tws: Callable[..., FakeTWS], connect: Connect) -> None:
    server = make_tws(historical_pacing=(2, 60.0))  # a third request within 60 s is paced out
    server.add_historical_ticks(265598, "TRADES", [LastTick(T, 1.0, 1)])
    app = connect(server=server)
    server.pacing_violation()  # scripted: the next request only
    for req_id in (91, 92, 93, 94):
        app.reqHistoricalTicks(req_id, ib_contract(265598), "", "20240102 15:00:00 UTC", 10, "TRADES", 0, True, [])
        app.wait_for("error" if req_id in (91, 94) else "historicalTicksLast", req_id)
    assert [e[1:3] for e in app.events_of("error") if e[1] > 0] == [(91, 162), (94, 162)]
    assert "pacing violation" in app.events_of("error", 91)[0][3]
    assert [e[1] for e in app.events_of("historicalTicksLast")] == [92, 93]


def test_offline_refuses_connections_and_online_accepts_them_again(tws: FakeTWS) -> None:
    port = tws.port
    tws.go_offline()
    refused = RecordingClient().start(port)
    assert refused.wait_for("error")[0][1:3] == (-1, 502)
    assert not refused.isConnected()
    tws.go_online()
    assert tws.port == port
    tws.set_accept_mode("close")
    closed = RecordingClient().start(port)
    assert not closed.isConnected()
    tws.wait_until(lambda: tws.rejected_connections == 1, 5, "rejected connection")
    tws.set_accept_mode("normal")
    ok = RecordingClient().start(port)
    try:
        ok.wait_for("nextValidId")
    finally:
        ok.close()


def test_a_burst_of_exactly_8192_bytes_is_not_lost(tws: FakeTWS, app: RecordingClient) -> None:
    """The ibapi reader drops a buffer ending on a full 4096-byte recv; the server's nudge rescues it."""
    app.reqTickByTickData(31, ib_contract(265598), "Last", 0, False)
    tws.wait_subscribed(265598, "reqTickByTickData")
    base = len(tick_by_tick(31, "Last", LastTick(T, 1.0, 1, special_conditions="")))
    tick = LastTick(T, 1.0, 1, special_conditions="x" * (4096 - base))
    assert len(tick_by_tick(31, "Last", tick)) == 4096
    tws.emit_ticks(265598, "Last", [tick, tick])
    assert len(app.wait_for("tickByTickAllLast", count=2, timeout=4)) == 2


def test_eurusd_depth_sample_replays_into_the_recorded_final_book(tws: FakeTWS, app: RecordingClient) -> None:
    updates = ib_samples.eurusd_depth_updates()
    app.reqMktDepth(51, ib_contract(12087792, "IDEALPRO"), 5, False, [])
    tws.wait_subscribed(12087792, "reqMktDepth")
    assert tws.emit_depth_updates(12087792, updates) == 271
    book = ib_samples.DepthBook(rows=5)
    for _, _, position, operation, side, price, size in app.wait_for("updateMktDepth", 51, count=271):
        book.apply(position, operation, side, price, size)
    assert book.snapshot() == ib_samples.eurusd_final_book()


def test_mkt_data_samples_replay_tick_for_tick(tws: FakeTWS, app: RecordingClient) -> None:
    size_type = {1: 0, 2: 3, 4: 5}
    for con_id, req_id, ticks in [
        (12087792, 21, ib_samples.eurusd_mktdata_ticks()),
        (ib_samples.HK_STOCK.con_id, 22, ib_samples.hk_mktdata_ticks()),
    ]:
        app.reqMktData(req_id, ib_contract(con_id), "", False, False, [])
        tws.wait_subscribed(con_id, "reqMktData")
        tws.emit_mkt_data_ticks(con_id, ticks)
        prices = [(t.tick_type, t.price) for t in ticks if t.price is not None]
        sizes = [
            (size_type.get(t.tick_type, t.tick_type), t.size)
            for t in ticks
            if t.tick_type in size_type or t.price is None
        ]
        assert [e[2:4] for e in app.wait_for("tickPrice", req_id, count=len(prices))] == prices
        assert [e[2:4] for e in app.wait_for("tickSize", req_id, count=len(sizes))] == sizes
    assert len(app.events_of("tickSize", 22)) == 14027


def test_historical_samples_page_through_1003_real_quotes(tws: FakeTWS, app: RecordingClient) -> None:
    quotes, trades = ib_samples.hist_bid_ask_ticks(), ib_samples.hist_trade_ticks()
    con_id = ib_samples.HIST_CONTRACT.con_id
    tws.add_historical_ticks(con_id, "BID_ASK", quotes)
    tws.add_historical_ticks(con_id, "TRADES", trades)
    app.reqHistoricalTicks(101, ib_contract(con_id), "20220301-23:10:03", "", 1000, "BID_ASK", 0, True, [])
    first = app.wait_for("historicalTicksBidAsk", 101)[0][2]
    expected = [(q.time, q.bid, q.ask, q.bid_size, q.ask_size, q.bid_past_low, q.ask_past_high) for q in quotes]
    assert first == expected[:1000]
    app.reqHistoricalTicks(102, ib_contract(con_id), "", "20220302-02:06:02", 1000, "BID_ASK", 0, True, [])
    assert app.wait_for("historicalTicksBidAsk", 102)[0][2] == expected[-1000:]
    app.reqHistoricalTicks(103, ib_contract(con_id), "", "20220302 06:07:20 UTC", 1000, "TRADES", 0, True, [])
    rows = app.wait_for("historicalTicksLast", 103)[0][2]
    assert rows == [(t.time, t.price, t.size, "", "", False, False) for t in trades]


def test_silent_server_leaves_connect_blocked_until_it_closes(tws: FakeTWS) -> None:
    tws.set_accept_mode("silent")
    client = RecordingClient()
    with pytest.raises(TimeoutError, match="did not return"):
        client.start(tws.port, timeout=0.5)
    assert tws.wait_for_request("handshake")["maxVersion"] == 157
    assert tws.live_clients == []
    tws.stop()  # closing the socket is what releases connect(): it returns unconnected, with no callback
    assert client.connecting is not None
    client.connecting.join(5)
    assert not client.connecting.is_alive() and not client.isConnected()
    assert client.events == []


def test_fake_contracts_from_the_contracts_file() -> None:
    contracts = {
        c.con_id: fake_contract(c)
        for c in load_contracts(Path(__file__).resolve().parents[2] / "config" / "contracts.toml")
    }
    assert (contracts[265598].symbol, contracts[265598].primary_exchange) == ("AAPL", "NASDAQ")
    es = contracts[495512563]
    assert (es.sec_type, es.exchange, es.local_symbol, es.multiplier, es.min_tick) == ("FUT", "CME", "ESZ6", "50", 0.25)


def test_depth_book_inserts_shift_rows_down_and_deletes_shift_them_up() -> None:
    book = ib_samples.DepthBook(rows=2)
    book.apply(0, 0, 1, 10.0, 1)
    book.apply(0, 0, 1, 10.5, 2)  # insert at the top: 10.0 moves to row 1
    book.apply(0, 0, 1, 11.0, 3)  # a third row falls off a 2-row book
    assert book.snapshot() == {(1, 0): (11.0, 3), (1, 1): (10.5, 2)}
    book.apply(0, 2, 1, 0.0, 0)
    book.apply(0, 1, 0, 12.0, 4)
    assert book.snapshot() == {(1, 0): (10.5, 2), (0, 0): (12.0, 4)}
