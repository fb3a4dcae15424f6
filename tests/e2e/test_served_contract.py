"""End to end: a contract with `record = false` — trades imported with `ib-stream import` are served over
HTTP (contracts, historical, order-flow bars) while the live source records only the other contracts."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from ib_stream.cli import app as cli
from ib_stream.settings import load_settings
from tests.e2e.conftest import REPO, start_server

pytestmark = pytest.mark.timeout(120)
START_MS = 1_610_064_000_000  # 2021-01-08T00:00:00Z
BTC = 900001


def write_trades(path: Path) -> list[tuple[int, float, float, bool]]:
    """Two minutes of Binance-layout trades; buyer_maker True means the seller aggressed."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(240):
        ts = START_MS + i * 500 + int(rng.integers(0, 400))
        rows.append((ts, round(39_000 + rng.normal(0, 20), 2), round(float(rng.uniform(0.001, 2)), 6), bool(i % 3)))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp_ms_utc", "trade_id", "price", "quantity", "buyer_maker"])
        writer.writerows([ts, n, price, size, str(maker)] for n, (ts, price, size, maker) in enumerate(rows))
    return rows


def test_imported_contract_is_served_but_not_recorded(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts.toml"
    contracts.write_text(
        (REPO / "config" / "contracts.toml").read_text()
        + f'\n[[contracts]]\ncon_id = {BTC}\nsymbol = "BTCUSDT"\ncalendar = "24/7"\ntick_types = ["last"]\n'
        "record = false\n"
    )
    config = tmp_path / "ib-stream.toml"
    config.write_text(f'contracts_file = "{contracts}"\n[storage]\ndata_root = "{tmp_path / "storage"}"\n')
    rows = write_trades(tmp_path / "trades.csv")

    imported = CliRunner().invoke(
        cli, ["--config", str(config), "import", "file", str(tmp_path / "trades.csv"), "--preset", "binance-trades",
              "--contract", str(BTC)],
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output  # the import also creates the new data root

    settings = load_settings(config, source="sim", alerts={"enabled": False}, storage={"fsync_interval_ms": 1})
    server, stop = start_server(settings, sources=None)
    try:
        [source] = server.state.streaming.sources
        assert [c.con_id for c in source.contracts] == [265598, 495512563]  # type: ignore[attr-defined]
        with httpx.Client(base_url=server.url, timeout=30) as http:
            listed = {c["con_id"]: c for c in http.get("/v2/contracts").json()["contracts"]}
            assert (listed[BTC]["record"], listed[265598]["record"]) == (False, True)
            span = {"start_time": "2021-01-08T00:00:00Z", "end_time": "2021-01-08T00:02:00Z"}
            held = http.get(f"/v2/historical/{BTC}", params={"tick_types": "last", **span}).json()
            assert held["count"] == len(rows)
            bars = http.get(f"/v2/bars/{BTC}", params={"kinds": "ohlc,cvd", "resolution": "1m", **span})
            assert bars.status_code == 200, bars.text
            data = bars.json()["data"]
    finally:
        stop()

    assert bars.json()["side_methods"] == {"recorded": len(rows), "quote": 0, "tick": 0, "unknown": 0}
    assert len(data) == 2
    cvd = 0.0
    for minute, bar in enumerate(data):
        inside = [r for r in rows if START_MS + minute * 60_000 <= r[0] < START_MS + (minute + 1) * 60_000]
        buy = sum(size for _, _, size, maker in inside if not maker)
        sell = sum(size for _, _, size, maker in inside if maker)
        cvd += buy - sell
        assert bar["trade_count"] == len(inside)
        assert (bar["open"], bar["close"]) == (inside[0][1], inside[-1][1])
        assert bar["buy_volume"] == pytest.approx(buy) and bar["sell_volume"] == pytest.approx(sell)
        assert bar["delta"] == pytest.approx(buy - sell) and bar["cvd_close"] == pytest.approx(cvd)
