"""The dashboard at `/` in real Chromium against a real service: the simulated market with some minutes of stored
history (and a gap put in its ledger), and a second service serving an imported Binance recording. Every page
load is offline (tests/browser/conftest.py). The oracles are the service's own JSON routes, asked directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ib_stream.api.routes.dashboard import PLOTLY_PATH
from ib_stream.domain import StreamKey, TickType
from ib_stream.importers import import_file, preset
from ib_stream.settings import load_settings
from ib_stream.storage import TickStore
from ib_stream.store.gaps import GapReason
from ib_stream.times import iso_ns, iso_us
from tests.browser.conftest import PageLog, offline_page
from tests.conftest import requires_shared_data
from tests.e2e.conftest import AAPL, ES, REPO, LiveServer, start_server
from tests.support.dashboard_service import start_sim_service
from tests.support.screenshots import capture, png_size

pytestmark = pytest.mark.timeout(120)
NS = 1_000_000_000
BTC = 900001
HISTORY_MINUTES = 6


class Sim:
    """The simulated-market service and the fixed past range the tests look at (inside the stored history)."""

    def __init__(self, server: LiveServer, started_ns: int) -> None:
        self.server = server
        minute = started_ns // (60 * NS) * 60 * NS  # the range ends before the service started: it holds still
        self.start_ns = minute - 4 * 60 * NS
        self.start = iso_us(self.start_ns).replace(".000000", "")
        self.end = iso_us(minute).replace(".000000", "")
        self.gap = (minute - 3 * 60 * NS, minute - 2 * 60 * NS)

    def range_query(self, bar: str = "15s", **more: str) -> str:
        params = {"contract": str(AAPL), "start": self.start, "end": self.end, "bar": bar, **more}
        return "?" + "&".join(f"{k}={v}" for k, v in params.items())


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    started = time.time_ns()
    server, stop = start_sim_service(tmp_path_factory.mktemp("dashboard") / "storage", HISTORY_MINUTES)
    holder = Sim(server, started)
    gap_start, gap_end = holder.gap
    server.store.gaps.add(
        StreamKey(AAPL, TickType.LAST), gap_start, gap_end, GapReason.SERVICE_DOWN, "stopped for a test"
    )
    yield holder
    stop()


Opener = Callable[[LiveServer, str], tuple[Any, PageLog]]


@pytest.fixture
def open_dashboard(browser: Any) -> Iterator[Opener]:
    """Open the dashboard at a query string, on a laptop-sized page; the pages close after the test (a live page
    left open would keep the browser busy for the next tests)."""
    contexts: list[Any] = []

    def open_page(server: LiveServer, query: str = "") -> tuple[Any, PageLog]:
        page, log = offline_page(browser, server.url)
        contexts.append(page.context)
        page.set_viewport_size({"width": 1366, "height": 768})
        page.goto("/" + query)
        page.wait_for_function("window.ibDashboard && window.ibDashboard.state.loads > 0", timeout=30_000)
        return page, log

    yield open_page
    for context in contexts:
        context.close()


def trace(page: Any, uid: str, chart: str = "chart") -> dict[str, Any] | None:
    """The plotly trace `uid` as drawn (the graph div's `data`), or None."""
    found: dict[str, Any] | None = page.evaluate(
        "([chart, uid]) => (document.getElementById(chart).data || []).find((t) => t.uid === uid) || null", [chart, uid]
    )
    return found


def http_errors(log: PageLog) -> list[str]:
    """Answers with a 4xx / 5xx status (requests the page itself cancelled, e.g. on a view change, are not)."""
    return [entry for entry in log.failed if entry[:1].isdigit()]


def bars_of(server: LiveServer, contract: int, **params: Any) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/v2/bars/{contract}", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def has_route(server: LiveServer, path: str) -> bool:
    return path in httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]


def test_page_and_plotly_are_served_by_the_service(sim: Sim) -> None:
    page = httpx.get(sim.server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "plotly.min.js?v=" in page.text and "http" not in page.text.split("<body>")[0].replace("http-equiv", "")
    bundle = httpx.get(sim.server.url + PLOTLY_PATH, timeout=30)
    assert bundle.status_code == 200 and "max-age=31536000" in bundle.headers["cache-control"]
    assert b"plotly.js v" in bundle.content[:300]
    assert httpx.get(sim.server.url + "/dashboard/static/../app.js", timeout=30).status_code == 404


def test_a_plain_browser_tab_asks_for_nothing_the_service_lacks(browser: Any, sim: Sim) -> None:
    """Without the offline fixture's request routing Chromium also asks for /favicon.ico unless the page names
    its icon: no request of a plain tab may fail or answer 4xx (each is a console error in the browser)."""
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on(
        "response",
        lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    try:
        page.goto(sim.server.url + "/", wait_until="networkidle")
        page.wait_for_timeout(1500)
    finally:
        context.close()
    assert errors == []


def test_loads_clean_and_candles_equal_the_bars_route(open_dashboard: Opener, sim: Sim) -> None:
    page, log = open_dashboard(sim.server, sim.range_query("15s"))
    expected = bars_of(
        sim.server, AAPL, kinds="ohlc,cvd,obi", resolution="15s", start_time=sim.start, end_time=sim.end,
        session="regular", levels=10, obi_source="auto",
    )  # fmt: skip
    candles = trace(page, "candles")
    assert candles is not None
    assert len(candles["x"]) == expected["count"] == 16
    rows = expected["data"]
    for i in (0, 5, 11, len(rows) - 1):
        row = rows[i]
        assert candles["x"][i] == pytest.approx(row["ts"] / 1e6)
        drawn = (candles["open"][i], candles["high"][i], candles["low"][i], candles["close"][i])
        assert drawn == (row["open"], row["high"], row["low"], row["close"])
    buy, obi, cvd = trace(page, "buy_volume"), trace(page, "obi"), trace(page, "cvd")
    assert buy is not None and obi is not None and cvd is not None
    assert buy["y"] == [row["buy_volume"] for row in rows]
    assert obi["close"] == [row["obi_close"] for row in rows] and cvd["close"] == [row["cvd_close"] for row in rows]
    assert page.evaluate("window.ibDashboard.state.obiSource") == expected["obi_source"] == "depth"
    summary = httpx.get(
        f"{sim.server.url}/v2/bars/{AAPL}/summary",
        params={"start_time": sim.start, "end_time": sim.end, "profile": "true"},
        timeout=30,
    ).json()
    profile = trace(page, "profile")
    assert profile is not None and max(profile["x"]) == max(volume for _, volume in summary["profile"]["levels"])
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_controls_query_again_and_the_url_round_trips(open_dashboard: Opener, sim: Sim) -> None:
    shared = f"?contract={ES}&day=previous&session=extended&bar=5m&levels=5&obi=quotes&theme=light"
    page, log = open_dashboard(sim.server, shared)
    values = page.evaluate(
        "['contract', 'day', 'session', 'bar', 'levels', 'obi'].map((id) => document.getElementById(id).value)"
    )
    assert values == [str(ES), "previous", "extended", "5m", "5", "quotes"]
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    with page.expect_request(lambda r: f"/v2/bars/{AAPL}?" in r.url) as asked:
        page.select_option("#contract", str(AAPL))
    assert "session=extended" in asked.value.url and "resolution=5m" in asked.value.url
    with page.expect_request(lambda r: "/v2/bars/" in r.url and "session=regular" in r.url):
        page.select_option("#session", "regular")
    with page.expect_request(lambda r: "/v2/bars/" in r.url and "resolution=15s" in r.url):
        page.select_option("#bar", "15s")
    with page.expect_request(lambda r: "/v2/sessions/" in r.url and "/current" in r.url):
        page.select_option("#day", "current")
    page.wait_for_function("window.ibDashboard.state.loading === false")
    search = page.evaluate("window.location.search")
    assert f"contract={AAPL}" in search and "bar=15s" in search and "day=current" in search and "theme=light" in search
    page.reload()
    page.wait_for_function("window.ibDashboard && window.ibDashboard.state.loads > 0", timeout=30_000)
    again = page.evaluate("['contract', 'day', 'session', 'bar'].map((id) => document.getElementById(id).value)")
    assert again == [str(AAPL), "current", "regular", "15s"]
    assert log.console_errors == [] and http_errors(log) == [] and log.outside == []


def test_a_live_bar_appears_and_updates_within_two_seconds(open_dashboard: Opener, sim: Sim) -> None:
    page, log = open_dashboard(sim.server, f"?contract={AAPL}&day=recent&bar=1s")
    page.wait_for_function("window.ibDashboard.state.live && window.ibDashboard.state.live.connected", timeout=10_000)
    first = page.evaluate("document.getElementById('chart').data.find((t) => t.uid === 'candles').x.at(-1)")
    updates = page.evaluate("window.ibDashboard.state.live.bars")
    started = time.monotonic()
    page.wait_for_function(
        "(last) => document.getElementById('chart').data.find((t) => t.uid === 'candles').x.at(-1) > last",
        arg=first, timeout=2_000,
    )  # fmt: skip
    assert time.monotonic() - started < 2.0
    assert page.evaluate("window.ibDashboard.state.live.bars") > updates
    mode = page.text_content("#mode")
    assert mode is not None and mode.strip() == "live"
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_the_depth_chart_shows_the_book_of_the_depth_route(open_dashboard: Opener, sim: Sim) -> None:
    page, log = open_dashboard(sim.server, sim.range_query("15s"))
    at = page.evaluate("window.ibDashboard.state.depth.at")
    book = httpx.get(f"{sim.server.url}/v2/depth/{AAPL}", params={"at": at, "levels": 10}, timeout=30).json()
    bids, asks = trace(page, "depth-bids", "depth"), trace(page, "depth-asks", "depth")
    assert bids is not None and asks is not None and len(book["cumulative"]["asks"]) == 10
    assert list(zip(asks["x"], asks["y"], strict=True)) == [tuple(level) for level in book["cumulative"]["asks"]]
    assert list(zip(bids["x"], bids["y"], strict=True)) == [tuple(level) for level in book["cumulative"]["bids"][::-1]]
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_a_recorded_gap_shows_in_the_coverage_band(open_dashboard: Opener, sim: Sim) -> None:
    page, log = open_dashboard(sim.server, sim.range_query("15s"))
    gaps = trace(page, "coverage-gaps")
    assert gaps is not None
    drawn = [(x, text) for x, text in zip(gaps["x"], gaps["text"], strict=True) if x is not None]
    assert drawn and all("last: service_down" in text and "stopped for a test" in text for _, text in drawn)
    start, end = sim.gap
    xs = [x for x, _ in drawn]
    assert min(xs) == pytest.approx(start / 1e6) and max(xs) == pytest.approx(end / 1e6)
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_replay_advances_and_pause_stops_it(open_dashboard: Opener, sim: Sim) -> None:
    page, log = open_dashboard(sim.server, sim.range_query("5s"))
    page.select_option("#speed", "25")
    page.click("#replay-start")
    page.wait_for_function("window.ibDashboard.state.replay.ticks > 50", timeout=10_000)
    started = page.evaluate("window.ibDashboard.state.replay.startMs")
    page.wait_for_function(f"window.ibDashboard.state.replay.clockMs > {started} + 10000", timeout=10_000)
    drawn = page.evaluate("document.getElementById('chart').data.find((t) => t.uid === 'candles').x.length")
    assert 0 < drawn < 48  # the bars up to the replay clock, not the whole range
    page.click("#replay-pause")
    page.wait_for_function("window.ibDashboard.state.replay.paused")
    paused_at = page.evaluate("window.ibDashboard.state.replay.clockMs")
    time.sleep(1.0)
    assert page.evaluate("window.ibDashboard.state.replay.clockMs") == paused_at
    page.click("#replay-pause")  # resume
    page.wait_for_function(f"window.ibDashboard.state.replay.clockMs > {paused_at}", timeout=10_000)
    assert log.console_errors == [] and http_errors(log) == [] and log.outside == []


def test_footprint_cells_appear_when_zoomed_in(open_dashboard: Opener, sim: Sim) -> None:
    if not has_route(sim.server, "/v2/footprint/{contract_id}"):
        pytest.skip("GET /v2/footprint/{contract_id} is not in this build (branch issue13-api)")
    x0, x1 = iso_us(sim.start_ns + 30 * NS), iso_us(sim.start_ns + 120 * NS)  # 6 bars of 15 s
    page, log = open_dashboard(sim.server, sim.range_query("15s", x0=x0, x1=x1))
    page.wait_for_function("(document.getElementById('chart').data || []).some((t) => t.uid === 'footprint')")
    cells = trace(page, "footprint")
    assert cells is not None and len(cells["text"]) > 0
    footprint = page.evaluate("window.ibDashboard.state.footprint")
    expected = bars_of(sim.server, AAPL, kinds="ohlc", resolution="15s", start_time=sim.start, end_time=sim.end)
    by_ts = {row["ts"]: row for row in expected["data"]}
    for bar in footprint["data"]:
        row = by_ts[bar["ts"]]
        assert sum(level["buy"] for level in bar["levels"]) == pytest.approx(row["buy_volume"])
        assert sum(level["sell"] for level in bar["levels"]) == pytest.approx(row["sell_volume"])
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_the_heatmap_shows_the_book_of_the_depth_route(open_dashboard: Opener, sim: Sim) -> None:
    if not has_route(sim.server, "/v2/heatmap/{contract_id}"):
        pytest.skip("GET /v2/heatmap/{contract_id} is not in this build (branch issue13-api)")
    page, log = open_dashboard(sim.server, sim.range_query("15s"))
    heat = trace(page, "heatmap")
    drawn = page.evaluate("window.ibDashboard.state.heatmap")
    assert heat is not None and drawn["times"]
    for row, (bids, asks) in enumerate(zip(drawn["bids"], drawn["asks"], strict=True)):
        assert heat["z"][row] == [b - a for b, a in zip(bids, asks, strict=True)]  # bids up, asks down
    # Each cell is a time-weighted mean over its column: the book of the column's last instant rested in it.
    column = len(drawn["times"]) - 1
    last_instant = int(drawn["times"][column] * 1e6) + drawn["column_ns"] - 1
    book = httpx.get(
        f"{sim.server.url}/v2/depth/{AAPL}", params={"at": iso_ns(last_instant), "levels": 10}, timeout=30
    ).json()
    assert len(book["bids"]) == len(book["asks"]) == 10

    def row_of(price: float) -> int:
        return int((price - drawn["price_low"]) // drawn["price_step"])

    assert all(drawn["bids"][row_of(price)][column] > 0 for price, _ in book["bids"])
    assert all(drawn["asks"][row_of(price)][column] > 0 for price, _ in book["asks"])
    assert log.console_errors == [] and log.failed == [] and log.outside == []


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    trades = requires_shared_data("binance_btcusdt") / "spot_trades_20210108.csv.gz"
    folder = tmp_path_factory.mktemp("imported")
    contracts = folder / "contracts.toml"
    contracts.write_text(
        (REPO / "config" / "contracts.toml").read_text()
        + f'\n[[contracts]]\ncon_id = {BTC}\nsymbol = "BTCUSDT"\ncalendar = "24/7"\ntick_types = ["last"]\n'
        "record = false\n"
    )
    settings = load_settings(
        REPO / "config" / "ib-stream.toml", contracts_file=str(contracts), alerts={"enabled": False},
        storage={"data_root": str(folder / "storage"), "fsync_interval_ms": 1},
    )  # fmt: skip
    store = TickStore(settings.storage).open()
    try:
        import_file(store, trades, preset("binance-trades"), BTC)
    finally:
        store.close()
    server, stop = start_server(settings, sources=[])
    yield server
    stop()


def test_an_imported_recording_renders(open_dashboard: Opener, imported: LiveServer) -> None:
    start, end = "2021-01-08T00:00:00Z", "2021-01-08T00:01:00Z"
    page, log = open_dashboard(imported, f"?contract={BTC}&start={start}&end={end}&bar=5s")
    expected = bars_of(imported, BTC, kinds="ohlc,cvd,obi", resolution="5s", start_time=start, end_time=end)
    candles = trace(page, "candles")
    assert candles is not None and len(candles["x"]) == expected["count"] == 12
    assert candles["close"] == [row["close"] for row in expected["data"]]
    assert sum(row["trade_count"] for row in expected["data"]) == 2001
    notes = page.evaluate("Object.values(window.ibDashboard.state.notes).join(' ')")
    assert "heatmap" in notes  # a contract without depth: the panel says why it is empty, nothing is asked for
    assert log.console_errors == [] and log.failed == [] and log.outside == []


def test_the_screenshot_script_writes_both_themes(browser: Any, sim: Sim, tmp_path: Path) -> None:
    written = capture(browser, sim.server.url, tmp_path, sim.range_query("15s"), settle_seconds=0.2)
    assert [p.name for p in written] == ["dashboard-dark.png", "dashboard-light.png"]
    assert all(png_size(p) == (1366, 768) for p in written)


@pytest.fixture(scope="module")
def alerting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The simulated market with the alert engine on 1-second bars and a rule that fires on most of them."""
    alerts = {
        "enabled": True,
        "resolution": "1s",
        "lateness_seconds": 0.2,
        "rules": [{"kind": "cvd_change", "threshold": 1, "bars": 1}],
    }
    server, stop = start_sim_service(tmp_path_factory.mktemp("alerting") / "storage", 1, alerts=alerts)
    yield server
    stop()


def alert_times(server: LiveServer) -> set[int]:
    answer = httpx.get(f"{server.url}/v2/alerts", params={"contract_id": AAPL, "limit": 1000}, timeout=30).json()
    return {int(alert["bar_ts"]) // 1_000_000 for alert in answer["alerts"]}


def test_alerts_are_marked_where_they_fired_and_arrive_live(open_dashboard: Opener, alerting: LiveServer) -> None:
    deadline = time.monotonic() + 30
    while len(alert_times(alerting)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    fired = alert_times(alerting)
    assert len(fired) >= 3, "the rule should fire on the simulated market within 30 s"
    page, log = open_dashboard(alerting, f"?contract={AAPL}&day=recent&bar=1s")
    page.wait_for_function("(document.getElementById('chart').data || []).some((t) => t.uid === 'alerts')")
    markers = trace(page, "alerts")
    assert markers is not None
    drawn = {int(page.evaluate("(x) => new Date(x).getTime()", x)) for x in markers["x"]}
    assert fired <= drawn  # every alert of the history, at its bar
    # alerts fired after the page loaded come over the live stream, without a reload
    page.wait_for_function(
        "(n) => ((document.getElementById('chart').data || []).find((t) => t.uid === 'alerts') || {x: []}).x.length > n",
        arg=len(markers["x"]),
        timeout=15_000,
    )
    live = trace(page, "alerts")
    later = alert_times(alerting)  # read after the drawing: it holds every alert drawn
    assert live is not None
    assert {int(page.evaluate("(x) => new Date(x).getTime()", x)) for x in live["x"]} <= later
    assert log.console_errors == [] and http_errors(log) == [] and log.outside == []


def test_a_page_opened_without_a_day_shows_what_is_being_recorded(open_dashboard: Opener, sim: Sim) -> None:
    """The current session while it is in progress, else the last hour: never an empty chart of a closed session."""
    session = httpx.get(f"{sim.server.url}/v2/sessions/{AAPL}/current", params={"session": "regular"}, timeout=30)
    page, log = open_dashboard(sim.server, f"?contract={AAPL}&bar=15s")
    expected = "current" if session.json()["in_progress"] else "recent"
    assert page.evaluate("window.ibDashboard.state.view.day") == expected
    assert f"day={expected}" in page.url
    page.wait_for_function(
        "(document.getElementById('chart').data || []).some((t) => t.uid === 'candles' && t.x.length)"
    )
    assert log.console_errors == [] and http_errors(log) == [] and log.outside == []
    shared, _ = open_dashboard(sim.server, f"?contract={AAPL}&day=current&bar=15s")  # a link naming the day keeps it
    assert shared.evaluate("window.ibDashboard.state.view.day") == "current"
