"""`ib-stream backfill` against the real ibapi client and the fake TWS, and `ib-stream coverage`, on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ib_stream.cli import app
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.gaps import GapReason
from ib_stream.store.schema import table_to_records
from tests.conftest import T0_NS
from tests.support.fake_tws import AAPL, ES, FakeTWS, LastTick

pytestmark = pytest.mark.timeout(60)
T = T0_NS // NS_PER_SECOND
TRADES = StreamKey(265598, TickType.LAST)


def write_config(tmp_path: Path, port: int) -> Path:
    contracts = tmp_path / "contracts.toml"
    contracts.write_text(
        '[[contracts]]\ncon_id = 265598\nsymbol = "AAPL"\nexchange = "SMART"\ncalendar = "XNAS"\n'
        'tick_types = ["bid_ask", "last", "depth"]\ndepth_rows = 5\n'
    )
    config = tmp_path / "ib-stream.toml"
    config.write_text(
        f'contracts_file = "{contracts}"\n[storage]\ndata_root = "{tmp_path / "storage"}"\n'
        f"[ib]\nports = [{port}]\nconnect_timeout_seconds = 3\n"
    )
    (tmp_path / "storage").mkdir()
    return config


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--config", str(config), *args], env={"COLUMNS": "250"})


def test_backfill_fills_a_span_once_and_marks_the_gap(tmp_path: Path) -> None:
    with FakeTWS([AAPL, ES]) as tws:
        tws.add_historical_ticks(265598, "TRADES", [LastTick(T + s, 100.0 + s, 2) for s in (0, 2, 4, 11)])
        config = write_config(tmp_path, tws.port)
        storage = StorageConfig(data_root=tmp_path / "storage")
        with TickStore(storage) as store:
            store.append_batch_sync(265598, TickType.LAST, [{"ts": T0_NS, "price": 100.0, "size": 2.0}], "ib_tbt")
            gap = store.gaps.add(TRADES, T0_NS + 1, T0_NS + 9 * NS_PER_SECOND, GapReason.SERVICE_CRASH, "crash")
        span = ["--contract", "265598", "--start", "2025-01-10T14:00:00Z", "--end", "2025-01-10T14:00:10Z"]
        first = run(config, "backfill", *span, "--tick-types", "last,depth")
        assert first.exit_code == 0, first.output
        assert "last 2025-01-10T14:00:00.000000Z .. 2025-01-10T14:00:10.000000Z: 3 received, 2 stored" in first.output
        assert "1 recorded gap(s) of last marked backfilled" in first.output
        assert "depth: IB has no historical ticks for it, skipped" in first.output
        again = run(config, "backfill", *span, "--tick-types", "last")
        assert again.exit_code == 0 and "3 received, 0 stored, 3 already held" in again.output
        # The CLI connected with its own client id (the service's + 1), so both can run against one TWS.
        assert {r["clientId"] for r in tws.requests_of("startApi")} == {18}
    with TickStore(storage) as store:
        held = table_to_records(store.engine.read_stream(TRADES, 0, 2**62))
        assert sorted((t["ts"] // NS_PER_SECOND - T, t["price"], t["source"]) for t in held) == [
            (0, 100.0, "ib_tbt"),
            (2, 102.0, "ib_hist"),
            (4, 104.0, "ib_hist"),
        ]
        (marked,) = store.gaps.by_ids([gap])
        assert marked.backfill == "done" and marked.backfill_note.startswith(
            "backfilled on demand: 2025-01-10T14:00:00"
        )

    report = run(config, "coverage", "--contract", "265598")
    assert report.exit_code == 0, report.output
    assert "service_crash" in report.output and "done" in report.output
    as_json = json.loads(run(config, "coverage", "--contract", "265598", "--json").output)
    by_type = {s["tick_type"]: s for s in as_json["streams"]}
    assert by_type["last"]["tick_count"] == 3
    assert [(g["reason"], g["backfill"]) for g in by_type["last"]["recorded_gaps"]] == [("service_crash", "done")]


def test_backfill_errors_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    with FakeTWS([AAPL, ES]) as tws:
        port = tws.port
    config = write_config(tmp_path, port)  # nothing listens there any more
    no_catalog = run(config, "coverage", "--contract", "265598")
    assert no_catalog.exit_code == 2 and "no catalog" in no_catalog.output
    span = ["--start", "2025-01-10T14:00:00Z", "--end", "2025-01-10T14:00:10Z"]
    unknown = run(config, "backfill", "--contract", "42", *span)
    assert unknown.exit_code == 2 and "--contract 42 is not in the contracts file" in unknown.output
    backwards = run(config, "backfill", "--contract", "265598", "--start", span[3], "--end", span[1])
    assert backwards.exit_code == 2 and "--end" in backwards.output
    only_depth = run(config, "backfill", "--contract", "265598", *span, "--tick-types", "depth")
    assert only_depth.exit_code == 2 and "has nothing IB can backfill" in only_depth.output
    offline = run(config, "backfill", "--contract", "265598", *span, "--tick-types", "last")
    assert offline.exit_code == 1 and "cannot connect to TWS / IB Gateway" in offline.output
