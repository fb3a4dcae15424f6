"""`ib-stream bars` and relative times (`--start -30m`, `--end now`, `--last 2h`) against a real data root.

`bars` is wired to `StorageQuery.bars_sync` (its numbers are tested with the bar engine): the command must give
the library's frame for the same range and options, in every output format. Relative times are checked with the
ticks' own times as the oracle: the data root holds ticks of the last 40 minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from ib_stream.cli import app
from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.contracts import load_contracts
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "config" / "contracts.toml"
MINUTE = 60 * NS_PER_SECOND
START, END = "2025-01-10T14:00:00Z", "2025-01-10T14:30:00Z"


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "ib-stream.toml"
    path.write_text(f'contracts_file = "{CONTRACTS}"\n')
    return path


@pytest.fixture
def january(store: TickStore, config: StorageConfig, clock: ManualClock) -> StorageConfig:
    """2025-01-10 14:00–14:30: a trade and a quote every 3 s, the first 15 minutes archived."""
    for minute in range(30):
        first = T0_NS + minute * MINUTE
        store.append_batch_sync(CONTRACT, "bid_ask", [quote(first + seconds(3 * i), i) for i in range(20)])
        store.append_batch_sync(CONTRACT, "last", [trade(first + seconds(3 * i + 1), minute + i) for i in range(20)])
        clock.advance(60)
        if minute == 15:
            store.run_archival()
    store.close()
    return config


@pytest.fixture
def recent(tmp_path: Path) -> tuple[StorageConfig, list[int]]:
    """Trades of the last 40 minutes, one every 10 s, none within 60 s of now-25m or now-15m (so the few seconds
    between this fixture's now and the command's do not move a trade across a window's edge)."""
    now = time.time_ns()
    edges = (now - 25 * MINUTE, now - 15 * MINUTE)
    stamps = [
        t
        for t in range(now - 40 * MINUTE, now - MINUTE, 10 * NS_PER_SECOND)
        if all(abs(t - edge) > MINUTE for edge in edges)
    ]
    config = StorageConfig(data_root=tmp_path / "recent", fsync_interval_ms=1)
    with TickStore(config, ManualClock(now - 40 * MINUTE)) as store:
        store.append_batch_sync(CONTRACT, "last", [trade(t, i) for i, t in enumerate(stamps)])
    return config, stamps


def run(settings: Path, config: StorageConfig, *args: str) -> Result:
    return CliRunner().invoke(app, ["--config", str(settings), *args, "--data-dir", str(config.data_root)])


def library_bars(config: StorageConfig, resolution: str, kinds: str, **options: object) -> pd.DataFrame:
    query = StorageQuery(config=config, contracts=load_contracts(CONTRACTS))
    try:
        return query.bars_sync(CONTRACT, START, END, resolution, kinds, **options)
    finally:
        query.close()


@pytest.mark.parametrize(
    ("args", "resolution", "kinds", "options"),
    [
        ([], "1m", "ohlc,cvd,obi", {}),
        (["--resolution", "5m", "--kinds", "ohlc,cvd"], "5m", "ohlc,cvd", {}),
        (
            ["--resolution", "1d", "--session", "extended", "--trades", "last", "--obi-source", "quotes"],
            "1d",
            "ohlc,cvd,obi",
            {"session": "extended", "obi_source": "quotes"},
        ),
        (["--resolution", "30s", "--kinds", "obi", "--levels", "3"], "30s", "obi", {"levels": 3}),
    ],
    ids=["default", "5m-ohlc-cvd", "session-bar", "obi-levels"],
)
def test_bars_to_parquet_are_the_librarys_bars(
    january: StorageConfig,
    settings_file: Path,
    tmp_path: Path,
    args: list[str],
    resolution: str,
    kinds: str,
    options: dict[str, object],
) -> None:
    out = tmp_path / "bars.parquet"
    result = run(
        settings_file, january, "bars", str(CONTRACT), "--start", START, "--end", END, *args, "--output", str(out)
    )
    assert result.exit_code == 0, result.output
    expected = library_bars(january, resolution, kinds, **options)
    assert len(expected) > 0
    assert f"wrote {len(expected):,} rows to {out}" in result.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_bars_print_as_csv_json_and_a_table(january: StorageConfig, settings_file: Path, tmp_path: Path) -> None:
    span = ["bars", str(CONTRACT), "--start", START, "--end", END, "--resolution", "5m"]
    expected = library_bars(january, "5m", "ohlc,cvd,obi")
    as_csv = run(settings_file, january, *span, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout == expected.to_csv(index=False)
    as_json = run(settings_file, january, *span, "--format", "json")
    rows = json.loads(as_json.stdout)
    assert [list(r) for r in rows] == [list(expected.columns)] * len(expected)
    assert [r["timestamp"] for r in rows] == [f"{t:%Y-%m-%dT%H:%M:%S}.000000000Z" for t in expected["timestamp"]]
    assert [r["trade_count"] for r in rows] == list(expected["trade_count"])
    out = tmp_path / "bars.json"
    assert run(settings_file, january, *span, "--output", str(out)).exit_code == 0
    assert json.loads(out.read_text()) == rows
    table = run(settings_file, january, *span)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["timestamp", "open", "high", "low"]
    assert lines[-1] == f"{len(expected)} bars"
    assert sum(line.startswith(" 2025-01-10T14:") for line in lines) == len(expected) == 6


def test_relative_times_and_last_select_by_the_ticks_own_times(
    recent: tuple[StorageConfig, list[int]], settings_file: Path, tmp_path: Path
) -> None:
    config, stamps = recent
    now = time.time_ns()
    windows = {
        ("--last", "1h"): stamps,
        ("--start", "-25m", "--end", "-15m"): [t for t in stamps if now - 25 * MINUTE <= t < now - 15 * MINUTE],
        ("--start", "now-15m", "--end", "now"): [t for t in stamps if t >= now - 15 * MINUTE],
        ("--start", "-25m"): [t for t in stamps if t >= now - 25 * MINUTE],
    }
    for window, expected in windows.items():
        out = tmp_path / "ticks.csv"
        result = run(
            settings_file, config, "query", str(CONTRACT), "--tick-types", "last", *window, "--output", str(out)
        )
        assert result.exit_code == 0, result.output
        assert list(pd.read_csv(out)["timestamp"].map(lambda s: pd.Timestamp(s).value)) == expected, window
        assert len(expected) > 0
    bars = run(settings_file, config, "bars", str(CONTRACT), "--last", "1h", "--resolution", "5m", "--format", "json")
    assert bars.exit_code == 0, bars.output
    assert sum(row["trade_count"] for row in json.loads(bars.stdout)) == len(stamps)
